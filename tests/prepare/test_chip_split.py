"""Chips of the real scene: they tile it exactly (reassembled, they give back the scene; padding is the no-data
value), carry their georeferencing and value domain, and after the split no two chips of different splits
overlap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely

from tests.prepare.conftest import CLOUD_TIF
from torchbearer.prepare import PrepareError
from torchbearer.prepare.chip import chip_scene, read_index
from torchbearer.prepare.rasters import IGNORE
from torchbearer.prepare.split import split_chips

SIZE, OVERLAP = 64, 16


@pytest.fixture(scope="module")
def chips(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chips") / "chips"
    chip_scene(scene, folder, size=SIZE, overlap=OVERLAP, mask=CLOUD_TIF)
    return folder


def reassemble(folder: Path, scene: Path, what: str, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """Every chip written back at its place (from its own georeferencing); the count of chips over each pixel."""
    with rasterio.open(scene) as whole:
        scene_transform, shape = whole.transform, whole.shape
    bands = whole.count if what == "frames" else 1
    out = np.full((bands, shape[0] + SIZE, shape[1] + SIZE), fill, dtype=np.uint16)
    cover = np.zeros(out.shape[1:], dtype=np.int32)
    for path in sorted(folder.glob(f"*_{what}/*.tif")):
        with rasterio.open(path) as src:
            col, row = (~scene_transform) @ (src.transform.c, src.transform.f)
            row, col = round(row), round(col)
            data = src.read()
            if what == "frames":
                assert src.nodata == 0 and src.tags()["VALUE_DOMAIN"] == "dn" and src.descriptions[0] == "B01"
            placed = out[:, row : row + SIZE, col : col + SIZE]
            seen = cover[row : row + SIZE, col : col + SIZE] > 0
            assert (placed[:, seen] == data[:, seen]).all(), f"{path.name} disagrees with an overlapping chip"
            placed[...] = data
            cover[row : row + SIZE, col : col + SIZE] += 1
    return out, cover


def test_chips_tile_the_scene_exactly(scene, scene_array, chips):
    _, height, width = scene_array.shape
    frames, cover = reassemble(chips, scene, "frames", 0)
    np.testing.assert_array_equal(frames[:, :height, :width], scene_array)  # where no chip went, all was no data
    assert (cover[:height, :width][(scene_array != 0).all(0)] >= 1).all()
    assert (frames[:, height:, :] == 0).all() and (frames[:, :, width:] == 0).all()  # padding: no data, not white
    with rasterio.open(CLOUD_TIF) as src:
        truth = src.read(1)
    masks, _ = reassemble(chips, scene, "masks", IGNORE)
    covered = cover[:height, :width] > 0
    np.testing.assert_array_equal(masks[0, :height, :width][covered], truth[covered])
    assert (masks[0, height:, :][cover[height:, :] > 0] == IGNORE).all()


def test_the_manifest_and_index_record_domain_nodata_and_each_chip(chips, scene_array):
    manifest = json.loads((chips / "prepare.json").read_text())
    assert manifest["value_domain"] == "dn" and manifest["nodata"] == 0 and manifest["mask_nodata"] == 255
    assert manifest["tags"]["BOA_ADD_OFFSET"] == "-1000" and manifest["bands"][8] == "B09"
    index = read_index(chips)
    assert len(index) == manifest["splits"]["train"] == len(list(chips.glob("train_frames/*.tif")))
    assert [c.name for c in index][:3] == ["train_0", "train_1", "train_2"]
    # the wedge of no data in the east: some chip positions held nothing and were skipped
    assert len(index) < 7 * 11
    assert all(c.valid_share > 0 for c in index)


def test_positive_only_keeps_chips_with_a_positive_pixel(scene, tmp_path):
    manifest = chip_scene(scene, tmp_path / "c", size=SIZE, mask=CLOUD_TIF, positive_only=True)
    for path in (tmp_path / "c").glob("train_masks/*.tif"):
        with rasterio.open(path) as src:
            labels = src.read(1)
        assert ((labels > 0) & (labels != IGNORE)).any(), path.name
    assert 0 < manifest.splits["train"] < 5 * 8


def test_a_chip_larger_than_the_scene_is_refused(scene, tmp_path):
    with pytest.raises(PrepareError, match=r"chip size 400 is larger than scene .* \(512 × 320 pixels\)"):
        chip_scene(scene, tmp_path / "c", size=400)


def test_a_mask_on_another_grid_is_refused(scene, tmp_path):
    with rasterio.open(CLOUD_TIF) as src:
        profile, data = src.profile, src.read()
    profile.update(transform=src.transform @ src.transform.translation(3, 0))
    with rasterio.open(tmp_path / "shifted.tif", "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(PrepareError, match=r"shifted.tif .* is not on the grid of scene"):
        chip_scene(scene, tmp_path / "c", size=SIZE, mask=tmp_path / "shifted.tif")
    profile.update(transform=src.transform, dtype="uint16")
    with rasterio.open(tmp_path / "wide.tif", "w", **profile) as dst:
        dst.write(data.astype("uint16"))
    with pytest.raises(PrepareError, match=r"wide.tif has 1 band\(s\) of uint16; a mask is one uint8 band"):
        chip_scene(scene, tmp_path / "c", size=SIZE, mask=tmp_path / "wide.tif")


def test_split_by_blocks_no_chip_overlaps_a_chip_of_another_split(scene, tmp_path):
    folder = tmp_path / "chips"
    chip_scene(scene, folder, size=SIZE, overlap=OVERLAP, mask=CLOUD_TIF)
    before = {(c.row, c.col) for c in read_index(folder)}
    report = split_chips(folder, fractions={"val": 0.25, "test": 0.15}, block=96, seed=3)
    assert report.overlapping_pairs == 0 and set(report.chips) == {"train", "val", "test"}
    # an independent check on the written footprints (scene CRS, from the GeoPackage)
    meta, _, geometry, fields = pyogrio.raw.read(folder / "chips.gpkg")
    split = dict(zip(meta["fields"], fields, strict=True))["split"]
    boxes = shapely.from_wkb(geometry)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if split[i] != split[j]:
                assert boxes[i].intersection(boxes[j]).area == 0, (i, j)
    index = read_index(folder)
    assert {(c.row, c.col) for c in index} <= before and len(index) + report.dropped == len(before)
    for name in ("train", "val", "test"):
        files = sorted((folder / f"{name}_frames").glob("*.tif"))
        assert len(files) == report.chips[name] == len(list((folder / f"{name}_masks").glob("*.tif")))
        assert {p.stem for p in files} == {f"{name}_{i}" for i in range(len(files))}
    manifest = json.loads((folder / "prepare.json").read_text())
    assert manifest["splits"] == report.chips and manifest["split"]["overlapping_pairs"] == 0
    # a chip keeps its pixels through the renaming
    first = next(c for c in index if c.split == "val")
    with rasterio.open(folder / "val_frames" / f"{first.name}.tif") as src, rasterio.open(scene) as whole:
        assert (src.transform.c, src.transform.f) == whole.transform @ (first.col, first.row)
    # the same seed deals the same blocks
    again = tmp_path / "again"
    chip_scene(scene, again, size=SIZE, overlap=OVERLAP, mask=CLOUD_TIF)
    assert split_chips(again, fractions={"val": 0.25, "test": 0.15}, block=96, seed=3) == report


def test_a_split_that_leaves_a_split_empty_is_refused(scene, tmp_path):
    folder = tmp_path / "chips"
    chip_scene(scene, folder, size=SIZE)
    with pytest.raises(PrepareError, match="cannot make train"):
        split_chips(folder, fractions={"val": 0.2}, block=1024)
