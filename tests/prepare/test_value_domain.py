"""The value domain ``prepare`` records (the scaling guard's half on this side): DN, reflectance or 8-bit, read
from the data when a raster carries no tag, and passed on to every chip, mosaic and table unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

from torchbearer.prepare.chip import chip_scene
from torchbearer.prepare.flatten import flatten_scene
from torchbearer.prepare.mosaic import mosaic
from torchbearer.prepare.rasters import value_domain


def rewrite(scene: Path, path: Path, convert, dtype: str, nodata) -> Path:
    """The scene's values converted (reflectance, 8-bit stretch) without the domain tag, as other tools write."""
    with rasterio.open(scene) as src:
        profile = {**src.profile, "dtype": dtype, "nodata": nodata, "predictor": 1}
        data = src.read()
        offset = float(src.tags()["BOA_ADD_OFFSET"])
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(convert(data, offset).astype(dtype))
    return path


def to_reflectance(dn: np.ndarray, offset: float) -> np.ndarray:
    return np.where(dn == 0, -1, (dn + offset) / 10000)


def to_uint8(dn: np.ndarray, _offset: float) -> np.ndarray:
    return np.where(dn == 0, 0, np.clip(dn / 40, 1, 255))


@pytest.mark.parametrize(
    ("convert", "dtype", "nodata", "domain"),
    [(to_reflectance, "float32", -1, "reflectance"), (to_uint8, "uint8", 0, "uint8"), (None, "uint16", 0, "dn")],
)
def test_the_domain_is_recorded_on_chips_manifest_mosaic_and_table(scene, tmp_path, convert, dtype, nodata, domain):
    source = rewrite(scene, tmp_path / "scene.tif", convert, dtype, nodata) if convert else scene
    with rasterio.open(source) as src:
        assert value_domain(src) == domain
    manifest = chip_scene(source, tmp_path / "chips", size=128)
    assert manifest.value_domain == domain and manifest.dtype == dtype and manifest.nodata == nodata
    assert json.loads((tmp_path / "chips" / "prepare.json").read_text())["value_domain"] == domain
    with rasterio.open(tmp_path / "chips" / "train_frames" / "train_0.tif") as chip, rasterio.open(source) as src:
        assert chip.tags()["VALUE_DOMAIN"] == domain and chip.dtypes[0] == dtype
        np.testing.assert_array_equal(chip.read(), src.read(window=((0, 128), (0, 128))))  # never rescaled
    with rasterio.open(mosaic([source], tmp_path / "m.vrt", format="vrt")) as vrt:
        assert vrt.tags()["VALUE_DOMAIN"] == domain
    flatten_scene(source, tmp_path / "t.parquet")
    meta = json.loads(pq.read_schema(tmp_path / "t.parquet").metadata[b"torchbearer"])
    assert meta["VALUE_DOMAIN"] == domain


def test_a_declared_domain_wins_over_the_guess(scene, tmp_path):
    """A raster that says what it holds is taken at its word (the train side compares domains, not ranges)."""
    declared = rewrite(scene, tmp_path / "r.tif", to_reflectance, "float32", -1)
    with rasterio.open(declared, "r+") as ds:
        ds.update_tags(VALUE_DOMAIN="dn")
    assert chip_scene(declared, tmp_path / "chips", size=128).value_domain == "dn"
