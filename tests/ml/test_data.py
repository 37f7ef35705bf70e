"""Targets on the scene grid (masks in another CRS, vector labels), the spatial split, normalisation and the
input check, on the real sample scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import shapely.geometry
import torch
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from tests.ml.conftest import MASKS, SAMPLE
from tests.reflectance import read_reflectance
from torchbearer.imagery.cache import build_stack, stack_info
from torchbearer.ml.datamodules import Collate, SegmentationDataModule
from torchbearer.ml.labels import IGNORE, LabelError, scene_target
from torchbearer.ml.scenes import InputCheckError, SplitOptions, check_inputs, load_scenes

CLASSES = ["clear", "cloud"]
MASK = MASKS / "t29unu_cloud.tif"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_stack(SAMPLE, 60, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    with rasterio.open(MASK) as src:
        return src.read(1)


def _interior(truth: np.ndarray, value: int) -> tuple[int, int]:
    """A pixel of ``value`` whose 5 × 5 neighbourhood is all ``value`` (safe from resampling at edges)."""
    same = truth == value
    for r in range(2, truth.shape[0] - 2):
        for c in range(2, truth.shape[1] - 2):
            if same[r - 2 : r + 3, c - 2 : c + 3].all():
                return r, c
    raise AssertionError(f"no interior pixel of {value}")


def test_mask_in_another_crs_lines_up(stack: Path, truth: np.ndarray, tmp_path: Path) -> None:
    # The mask warped to Web Mercator at 30 m: another CRS, another grid.
    with rasterio.open(MASK) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds, resolution=30
        )
        warped = np.full((height, width), IGNORE, np.uint8)
        reproject(src.read(1), warped, src_transform=src.transform, src_crs=src.crs, src_nodata=IGNORE,
                  dst_transform=transform, dst_crs="EPSG:3857", dst_nodata=IGNORE,
                  resampling=Resampling.nearest)  # fmt: skip
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
               "crs": "EPSG:3857", "transform": transform, "nodata": IGNORE}  # fmt: skip
    with rasterio.open(tmp_path / "mercator.tif", "w", **profile) as dst:
        dst.write(warped, 1)
    target = scene_target(stack_info(stack), [tmp_path / "mercator.tif"], CLASSES)
    for value in (0, 1):
        r, c = _interior(truth, value)
        assert target[r, c] == value, (value, r, c)
    labelled = (truth != IGNORE) & (target != IGNORE)
    assert (target[labelled] == truth[labelled]).mean() > 0.97


def test_vector_labels_rasterize_onto_the_scene_grid(stack: Path, truth: np.ndarray) -> None:
    target = scene_target(stack_info(stack), [MASKS / "t29unu_cloud.geojson"], CLASSES)
    assert target.shape == truth.shape and set(np.unique(target)) <= {0, 1}
    labelled = truth != IGNORE
    assert (target[labelled] == truth[labelled]).mean() > 0.99
    r, c = _interior(truth, 1)
    assert target[r, c] == 1


def test_vector_class_field_names_classes(stack: Path, tmp_path: Path) -> None:
    info = stack_info(stack)
    x0, y0 = info.transform.c + 60 * 10, info.transform.f - 60 * 10  # 10 pixels in from the corner
    square = [[x0, y0], [x0 + 600, y0], [x0 + 600, y0 - 600], [x0, y0 - 600], [x0, y0]]
    collection = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:32629"}},
                  "features": [{"type": "Feature", "properties": {"label": "water"},
                                "geometry": {"type": "Polygon", "coordinates": [square]}}]}  # fmt: skip
    (tmp_path / "water.geojson").write_text(json.dumps(collection))
    target = scene_target(info, [tmp_path / "water.geojson"], ["land", "cloud", "water"], class_field="label")
    assert target[10, 10] == 2 and target[19, 19] == 2 and target[20, 20] == 0 and target[9, 9] == 0
    with pytest.raises(LabelError, match="class 'water' is not one of"):
        scene_target(info, [tmp_path / "water.geojson"], CLASSES, class_field="label")
    with pytest.raises(LabelError, match="no attribute 'kind'"):
        scene_target(info, [tmp_path / "water.geojson"], CLASSES, class_field="kind")


def test_bad_masks_are_named(stack: Path, tmp_path: Path) -> None:
    info = stack_info(stack)
    with rasterio.open(MASK) as src:
        profile, data = src.profile, src.read(1)
    far = {**profile, "transform": Affine.translation(100_000, 0) @ profile["transform"]}  # 100 km east
    with rasterio.open(tmp_path / "far.tif", "w", **far) as dst:
        dst.write(data, 1)
    with pytest.raises(LabelError, match="no mask overlaps scene"):
        scene_target(info, [tmp_path / "far.tif"], CLASSES)
    with rasterio.open(tmp_path / "seven.tif", "w", **profile) as dst:
        dst.write(np.where(data == 1, 7, data).astype(np.uint8), 1)
    with pytest.raises(LabelError, match=r"values \[7\] that are not classes 0 … 1"):
        scene_target(info, [tmp_path / "seven.tif"], CLASSES)
    (tmp_path / "cut.tif").write_bytes(MASK.read_bytes()[:400])
    with pytest.raises(LabelError, match="not a readable GeoTIFF"):
        scene_target(info, [tmp_path / "cut.tif"], CLASSES)


def test_split_is_spatial_and_skips_unlabelled_patches(stack: Path) -> None:
    dm = SegmentationDataModule(load_scenes([stack], [MASK], CLASSES), patch_size=32, split=SplitOptions(64), seed=3)
    dm.setup()
    split, size = dm.split, 32
    assert len(split.train) and len(split.val) and not len(split.test)
    val = np.zeros(dm.scenes[0].target.shape, bool)
    for _, r, c in split.val:
        assert not val[r : r + size, c : c + size].any()  # the grid does not overlap itself
        val[r : r + size, c : c + size] = True
    target = dm.scenes[0].target
    for _, r, c in split.train:
        assert not val[r : r + size, c : c + size].any()  # no training patch touches a validation pixel
        assert (target[r : r + size, c : c + size] != IGNORE).any()
    # The east of the sample is the no-data wedge: no patch there is all no data.
    assert not any(c >= 480 and (target[r : r + size, c : c + size] == IGNORE).all() for _, r, c in split.train)


def test_split_by_given_regions(stack: Path, tmp_path: Path) -> None:
    from torchbearer.imagery.aoi import to_crs

    info = stack_info(stack)
    t = info.transform
    # Columns 256-448 of the sample as a polygon in longitude/latitude.
    region = shapely.box(t.c + 256 * 60, t.f - 320 * 60, t.c + 448 * 60, t.f)
    geometry = shapely.geometry.mapping(to_crs(region, info.crs, "EPSG:4326"))
    (tmp_path / "val.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": geometry}]}))  # fmt: skip
    options = SplitOptions(64, val_regions=tmp_path / "val.geojson")
    dm = SegmentationDataModule(load_scenes([stack], [MASK], CLASSES), patch_size=32, split=options)
    dm.setup()
    assert len(dm.split.val) and all(c >= 254 and c + 32 <= 450 for _, _, c in dm.split.val)
    assert all(c + 32 <= 258 or c >= 446 for _, _, c in dm.split.train)  # training stays outside the region


def standardised(reflectance: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """The reference: ``(reflectance - mean) / std`` per band (bands first)."""
    return (reflectance - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]


def test_batches_are_normalised_like_a_prediction(stack: Path) -> None:
    dm = SegmentationDataModule(load_scenes([stack], [MASK], CLASSES), patch_size=32, batch_size=4, augment=False,
                                split=SplitOptions(64))  # fmt: skip
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    _, r, c = dm.split.val[0]
    reflectance, valid = read_reflectance(stack_info(stack), Window(c, r, 32, 32))
    expected = standardised(reflectance, dm.mean, dm.std) * valid
    assert np.allclose(batch["image"][0].numpy(), expected, atol=1e-4)
    assert batch["image"].dtype.is_floating_point and batch["mask"].dtype.is_floating_point is False
    assert all(0.0 < m < 1.5 for m in dm.mean)  # reflectance of the training blocks (cloudy: B09 above 1)


def test_each_augmentation_code_is_its_symmetry_of_the_patch(stack: Path, tmp_path: Path) -> None:
    """The collate's 8 symmetries (transposes staged through a buffer) are the flips/transpose of the
    unaugmented patch, image and mask alike, read from the memory-mapped scene."""
    scenes = load_scenes([stack], [MASK], CLASSES, cache_dir=tmp_path / "mapped", work_dir=tmp_path / "work")
    dm = SegmentationDataModule(scenes, patch_size=32, batch_size=8, split=SplitOptions(64))
    dm.setup()
    _, r, c = dm.split.train[len(dm.split.train) // 2]
    items = [dm.dataset(dm.split.train)[(0, int(r), int(c), code)] for code in range(8)]
    batch = Collate(dm.reflectance_terms, dm.mean, dm.std)(items)
    image, mask = batch["image"].numpy(), batch["mask"].numpy()
    for code in range(8):
        flip = {0: lambda x: x, 1: lambda x: x[..., ::-1], 2: lambda x: x[..., ::-1, :],
                3: lambda x: x[..., ::-1, ::-1]}[code & 3]  # fmt: skip
        expected_image, expected_mask = flip(image[0]), flip(mask[0])
        if code & 4:
            expected_image, expected_mask = expected_image.swapaxes(-1, -2), expected_mask.T
        assert np.array_equal(image[code], expected_image) and np.array_equal(mask[code], expected_mask), code
    assert len({image[code].tobytes() for code in range(8)}) == 8  # the patch has no symmetry of its own


def test_no_data_pixels_follow_each_symmetry(stack: Path, tmp_path: Path) -> None:
    """A patch with no-data pixels (an asymmetric L, made here): every augmentation code zeroes exactly the
    pixels its symmetry moves them to, in every band."""
    scenes = load_scenes([stack], [MASK], CLASSES, cache_dir=tmp_path / "mapped", work_dir=tmp_path / "work")
    dm = SegmentationDataModule(scenes, patch_size=32, batch_size=8, split=SplitOptions(64))
    dm.setup()
    _, r, c = dm.split.train[len(dm.split.train) // 2]
    nodata = np.zeros((32, 32), bool)
    nodata[:5, :20] = True
    nodata[5:12, :3] = True
    items = []
    for code in range(8):
        scene, dn, target, _, aug = dm.dataset(dm.split.train)[(0, int(r), int(c), code)]
        items.append((scene, dn, target, nodata, aug))
    batch = Collate(dm.reflectance_terms, dm.mean, dm.std)(items)
    image = batch["image"].numpy()
    assert (image[0][:, nodata] == 0).all() and (image[0][:, ~nodata] != 0).mean() > 0.99
    for code in range(8):
        flip = {0: lambda x: x, 1: lambda x: x[..., ::-1], 2: lambda x: x[..., ::-1, :],
                3: lambda x: x[..., ::-1, ::-1]}[code & 3]  # fmt: skip
        expected_image, expected_nodata = flip(image[0]), flip(nodata)
        if code & 4:
            expected_image, expected_nodata = expected_image.swapaxes(-1, -2), expected_nodata.T
        assert np.array_equal(image[code], expected_image), code
        assert (image[code][:, expected_nodata] == 0).all(), code


def test_input_check_fails_loudly() -> None:
    bands = ["B02", "B03", "B04"]
    with pytest.raises(InputCheckError, match="double-scaled or empty"):
        check_inputs(bands, [3e-6, 4e-6, 3e-6], [1e-6, 1e-6, 1e-6])
    with pytest.raises(InputCheckError, match="DN not scaled"):
        check_inputs(bands, [1200.0, 1300.0, 1100.0], [300.0, 310.0, 290.0])
    with pytest.raises(InputCheckError, match="constant"):
        check_inputs(bands, [0.1, 0.1, 0.1], [0.02, 0.0, 0.02])
    check_inputs(bands, [0.08, 0.1, 0.12], [0.03, 0.04, 0.05])


def test_double_scaled_scene_is_refused(stack: Path, tmp_path: Path) -> None:
    # A uint16 GeoTIFF whose DN were divided by 10 000 once too often: all 0 or 1.
    with rasterio.open(stack) as src:
        profile, data, tags, names = src.profile, src.read(), src.tags(), src.descriptions
    with rasterio.open(tmp_path / "scaled.tif", "w", **profile) as dst:
        dst.write((data > 0).astype("uint16"))
        dst.update_tags(**{**tags, "BOA_ADD_OFFSET": "0"})
        dst.descriptions = names
    scenes = load_scenes([tmp_path / "scaled.tif"], [MASK], CLASSES)
    dm = SegmentationDataModule(scenes, patch_size=32, split=SplitOptions(64))
    with pytest.raises(InputCheckError, match="double-scaled"):
        dm.setup()


def test_worker_processes_deliver_the_same_batches(stack: Path) -> None:
    scenes = load_scenes([stack], [MASK], CLASSES)
    batches = []
    for workers in (0, 2):
        dm = SegmentationDataModule(scenes, patch_size=32, batch_size=4, split=SplitOptions(64),
                                    samples_per_epoch=8, num_workers=workers, seed=5)  # fmt: skip
        dm.setup()
        batches.append([b["image"] for b in dm.train_dataloader()])
    assert len(batches[1]) == 2 and all(torch.equal(a, b) for a, b in zip(*batches, strict=True))


def test_standardising_terms_fold_reflectance_and_statistics_into_one_multiply_add():
    """The one multiply-add the training collate and the inference forward use equals the reference path:
    (DN + offset) / quantification, minus the mean, over the std; DN 0 stays no data (the callers zero it)."""
    from torchbearer.ml.checkpoint import standardising_terms

    rng = np.random.default_rng(0)
    dn = rng.integers(1, 12000, size=(3, 8, 8)).astype(np.uint16)
    mean, std = [0.1, 0.2, 0.3], [0.05, 0.1, 0.2]
    a, b = standardising_terms((1 / 10000, -1000 / 10000), mean, std)
    reference = standardised((dn.astype(np.float32) - 1000) / 10000, mean, std)  # (DN + offset) / quantification
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(dn * a[:, None, None] + b[:, None, None], reference, rtol=1e-5, atol=1e-5)
