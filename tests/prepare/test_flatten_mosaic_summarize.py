"""Flatten (rows = valid pixels, coordinates from the transform), mosaic (halves give back the scene; CRS and band
mismatches refused naming the files) and summarize (statistics equal numpy's) on the real scene."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
import rasterio
from pyproj import Transformer
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from tests.prepare.conftest import CLOUD_TIF
from torchbearer.prepare import PrepareError
from torchbearer.prepare.flatten import flatten_scene
from torchbearer.prepare.mosaic import mosaic
from torchbearer.prepare.rasters import IGNORE
from torchbearer.prepare.summarize import summarize


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    with rasterio.open(CLOUD_TIF) as src:
        return src.read(1)


def test_flatten_writes_one_row_per_valid_pixel_at_its_coordinates(scene, scene_array, truth, tmp_path):
    out = tmp_path / "pixels.parquet"
    rows = flatten_scene(scene, out, mask=CLOUD_TIF, block=100)  # blocks that do not divide the scene
    valid = (scene_array != 0).all(0) & (truth != IGNORE)
    table = pq.read_table(out)
    assert rows == table.num_rows == valid.sum()
    assert table.column_names[:6] == ["x", "y", "lon", "lat", "row", "col"] and table.column_names[-1] == "label"
    r, c = table["row"].to_numpy(), table["col"].to_numpy()
    assert len(set(zip(r.tolist(), c.tolist(), strict=True))) == rows and valid[r, c].all()
    with rasterio.open(scene) as src:
        transform, crs = src.transform, src.crs
    x, y = transform @ (c + 0.5, r + 0.5)
    np.testing.assert_allclose(table["x"].to_numpy(), x, atol=1e-6)
    np.testing.assert_allclose(table["y"].to_numpy(), y, atol=1e-6)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
    np.testing.assert_allclose(table["lon"].to_numpy(), lon, atol=1e-9)
    np.testing.assert_allclose(table["lat"].to_numpy(), lat, atol=1e-9)
    np.testing.assert_array_equal(table["B04"].to_numpy(), scene_array[3][r, c])
    np.testing.assert_array_equal(table["label"].to_numpy(), truth[r, c])
    meta = json.loads(table.schema.metadata[b"torchbearer"])
    assert meta["VALUE_DOMAIN"] == "dn" and meta["crs"] == "EPSG:32629" and meta["BOA_ADD_OFFSET"] == "-1000"


def test_flatten_to_csv_without_a_mask(scene, scene_array, tmp_path):
    out = tmp_path / "pixels.csv"
    rows = flatten_scene(scene, out, format="csv")
    assert rows == (scene_array != 0).all(0).sum()
    table = pyarrow.csv.read_csv(out)
    assert table.num_rows == rows and "label" not in table.column_names and table.column_names[6] == "B01"


def write_window(scene: Path, path: Path, window: Window, **changes) -> Path:
    with rasterio.open(scene) as src:
        profile = {**src.profile, "width": window.width, "height": window.height,
                   "transform": src.window_transform(window), **changes}  # fmt: skip
        data = src.read(window=window)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data[: profile.get("count", src.count)])
            dst.update_tags(**src.tags())
            dst.descriptions = src.descriptions[: profile.get("count", src.count)]
    return path


@pytest.mark.parametrize("suffix", [".tif", ".vrt"])
def test_mosaic_of_two_halves_gives_back_the_scene(scene, scene_array, tmp_path, suffix):
    left = write_window(scene, tmp_path / "left.tif", Window(0, 0, 300, 320))
    right = write_window(scene, tmp_path / "right.tif", Window(256, 0, 256, 320))  # they overlap
    out = mosaic([left, right], tmp_path / f"mosaic{suffix}", format="vrt" if suffix == ".vrt" else "cog")
    with rasterio.open(out) as src, rasterio.open(scene) as whole:
        assert src.crs == whole.crs and src.transform == whole.transform and src.nodata == 0
        assert src.tags()["VALUE_DOMAIN"] == "dn" and src.descriptions == whole.descriptions
        np.testing.assert_array_equal(src.read(), scene_array)
        if suffix == ".tif":
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and src.profile["compress"] == "zstd"


def to_utm30(source: Path, path: Path) -> Path:
    with rasterio.open(source) as src:
        transform, width, height = calculate_default_transform(src.crs, "EPSG:32630", src.width, src.height,
                                                               *src.bounds)  # fmt: skip
        profile = {**src.profile, "crs": "EPSG:32630", "transform": transform, "width": width, "height": height}
        with rasterio.open(path, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(rasterio.band(src, band), rasterio.band(dst, band), resampling=Resampling.nearest)
            dst.update_tags(**src.tags())
            dst.descriptions = src.descriptions
    return path


def test_mosaic_refuses_other_crs_naming_the_file_unless_asked_to_reproject(scene, tmp_path):
    left = write_window(scene, tmp_path / "left.tif", Window(0, 0, 256, 320))
    other = to_utm30(write_window(scene, tmp_path / "right.tif", Window(256, 0, 256, 320)), tmp_path / "utm30.tif")
    with pytest.raises(PrepareError, match=r"different CRS: left.tif is EPSG:32629 but utm30.tif is EPSG:32630"):
        mosaic([left, other], tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()
    out = mosaic([left, other], tmp_path / "m.vrt", format="vrt", reproject=True)
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32629 and src.width >= 500 and src.res == (60.0, 60.0)


def test_mosaic_refuses_different_band_sets_naming_the_file(scene, tmp_path):
    full = write_window(scene, tmp_path / "full.tif", Window(0, 0, 256, 320))
    four = write_window(scene, tmp_path / "four.tif", Window(256, 0, 256, 320), count=4)
    with pytest.raises(PrepareError, match=r"different band sets: full.tif \(11 bands .* but four.tif \(4 bands"):
        mosaic([full, four], tmp_path / "m.tif")


def test_summarize_matches_numpy_and_writes_csv_png_markdown(scene, scene_array, truth, tmp_path):
    summary = summarize(scene, tmp_path / "s", mask=CLOUD_TIF)
    with (tmp_path / "s" / "band_stats.csv").open() as handle:
        rows = {row["band"]: row for row in csv.DictReader(handle)}
    for i, band in enumerate(["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12"]):
        values = scene_array[i][scene_array[i] != 0]
        row = rows[band]
        assert int(row["valid_pixels"]) == values.size
        assert float(row["nodata_share"]) == pytest.approx(1 - values.size / scene_array[i].size)
        assert float(row["min"]) == values.min() and float(row["max"]) == values.max()
        assert float(row["mean"]) == pytest.approx(values.mean()) and float(row["std"]) == pytest.approx(values.std())
        assert float(row["p50"]) == np.percentile(values, 50, method="inverted_cdf")
        assert (tmp_path / "s" / f"hist_{band}.png").read_bytes()[:4] == b"\x89PNG"
    counts = np.bincount(truth.ravel(), minlength=256)
    assert summary.classes["all"] == {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    text = (tmp_path / "s" / "summary.md").read_text()
    assert "value domain: **dn** (uint16)" in text and "| B04 |" in text
