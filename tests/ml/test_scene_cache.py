"""SAFE metadata and the scene cache: bands and offsets by baseline, stacks built once, reflectance reads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from tests.reflectance import read_reflectance
from torchbearer.imagery.cache import StackError, build_stack, stack_info, stack_path
from torchbearer.imagery.safe import SafeError, read_safe

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
METADATA = REPO / "tests" / "data" / "sentinel2-metadata"
BASELINE_0214 = METADATA / "esa_S2B_MSIL2A_20210122T133229_N0214_R081_T22HBD_20210122T155500.SAFE"
BASELINE_0400 = METADATA / "S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126.SAFE"
BANDS_20M = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12"]


def fake_pixels(metadata: Path, tmp_path: Path, resolution: int) -> Path:
    """A SAFE folder with real metadata whose band files at ``resolution`` hold DN 1000 + 100 × band number."""
    safe = tmp_path / metadata.name
    safe.mkdir()
    shutil.copy(metadata / "MTD_MSIL2A.xml", safe)
    product = read_safe(safe)
    for band in product.bands(resolution):
        path = product.band_file(band, resolution)
        path.parent.mkdir(parents=True, exist_ok=True)
        value = 1000 + 100 * (int(band[1:]) if band[1:].isdigit() else 85)  # B8A → 85
        profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint16",
                   "crs": "EPSG:32633", "transform": from_origin(500000, 8000000, resolution, resolution)}  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:  # a GeoTIFF named .jp2: GDAL reads it by content
            dst.write(np.full((1, 8, 8), value, dtype="uint16"))
    return safe


def test_band_lists_and_offsets_follow_the_baseline() -> None:
    old, new = read_safe(BASELINE_0214), read_safe(BASELINE_0400)
    assert (old.baseline, new.baseline) == ("02.14", "04.00")
    assert old.bands(20) == tuple(BANDS_20M[1:])  # no B01 in R20m before 04.00
    assert new.bands(20) == tuple(BANDS_20M)
    assert len(new.bands(60)) == 11 and new.bands(60)[8] == "B09"
    assert old.offset("B04") == 0 and new.offset("B04") == -1000
    assert new.offset("B8A") == -1000 and new.quantification == 10000
    assert new.band_file("B8A", 20).name.endswith("_B8A_20m.jp2")


@pytest.mark.parametrize(("metadata", "offset", "bands"), [(BASELINE_0214, 0, BANDS_20M[1:]),
                                                           (BASELINE_0400, -1000, BANDS_20M)])  # fmt: skip
def test_stack_band_order_and_reflectance(metadata: Path, offset: int, bands: list[str], tmp_path: Path) -> None:
    stack = build_stack(fake_pixels(metadata, tmp_path, 20), 20, tmp_path / "cache")
    info = stack_info(stack)
    assert list(info.bands) == bands and info.offset == offset and info.resolution == 20
    reflectance, valid = read_reflectance(info)
    for i, band in enumerate(bands):
        number = int(band[1:]) if band[1:].isdigit() else 85
        assert reflectance[i, 0, 0] == pytest.approx((1000 + 100 * number + offset) / 10000)
    assert valid.all()


def test_sample_stack_is_the_cache_format(tmp_path: Path) -> None:
    reports: list[dict] = []
    path = build_stack(SAMPLE, 60, tmp_path, report=lambda **kw: reports.append(kw))
    assert path == stack_path(tmp_path, SAMPLE.name, 60)
    with rasterio.open(path) as ds, rasterio.open(next(SAMPLE.rglob("*_B8A_60m.jp2"))) as jp2:
        assert ds.dtypes[0] == "uint16" and ds.nodata == 0 and ds.block_shapes[0] == (256, 256)
        assert ds.compression is not None and ds.transform == jp2.transform and ds.crs == jp2.crs
        assert ds.descriptions[7] == "B8A" and np.array_equal(ds.read(8), jp2.read(1))
        assert ds.tags()["BOA_ADD_OFFSET"] == "-1000" and ds.tags()["PROCESSING_BASELINE"] == "04.00"
        assert ds.tags()["PRODUCT"] == SAMPLE.name.removesuffix(".SAFE") and ds.tags()["RESOLUTION"] == "60"
    assert reports[-1]["done"] == reports[-1]["total"] == 11
    # The east of the sample is the no-data wedge: DN 0 → not valid, reflectance 0.
    reflectance, valid = read_reflectance(stack_info(path), Window(448, 0, 64, 64))
    assert not valid[:, -1].any() and (reflectance[:, ~valid] == 0).all()
    assert build_stack(SAMPLE, 60, tmp_path) == path  # built once


def test_two_processes_build_one_stack(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from torchbearer.imagery.cache import build_stack; "
        f"print(build_stack(Path({str(SAMPLE)!r}), 60, Path({str(tmp_path)!r})))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outputs) == 1 and Path(outputs.pop()).is_file()
    assert not list(tmp_path.glob("*.part"))


def test_bad_products_and_stacks_are_named(tmp_path: Path) -> None:
    with pytest.raises(SafeError, match=r"no MTD_MSIL2A\.xml"):
        read_safe(tmp_path)
    with pytest.raises(StackError, match="band files missing for the 20 m stack"):
        build_stack(SAMPLE, 20, tmp_path)
    with pytest.raises(StackError, match="not found"):
        stack_info(tmp_path / "nothing.tif")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(StackError, match="not a readable GeoTIFF"):
        stack_info(tmp_path / "broken.tif")
    profile = {"driver": "GTiff", "width": 4, "height": 4, "crs": "EPSG:32629",
               "transform": from_origin(0, 0, 60, 60)}  # fmt: skip
    with rasterio.open(tmp_path / "four.tif", "w", count=4, dtype="uint16", **profile) as dst:
        dst.write(np.ones((4, 4, 4), dtype="uint16"))
    with pytest.raises(StackError, match="has 4 bands; a 60 m stack has 11"):
        stack_info(tmp_path / "four.tif")
    with rasterio.open(tmp_path / "float.tif", "w", count=11, dtype="float32", **profile) as dst:
        dst.write(np.ones((11, 4, 4), dtype="float32"))
    with pytest.raises(StackError, match="double-scaled"):
        stack_info(tmp_path / "float.tif")
