"""Chip folders, the scaling guard, the random forest as an ensemble member: in process, on chips cut from the
real sample scene (``tests/ml/make_chips.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.ml.conftest import MASKS, SAMPLE
from tests.ml.make_chips import make_chip_folder
from torchbearer.ml.chips import ChipDataModule, ChipError, open_chips
from torchbearer.ml.scenes import InputCheckError
from torchbearer.spec import JobFileError, parse_job_text

CLASSES = ["clear", "cloud"]


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chip_folder(tmp_path_factory.mktemp("chips") / "chips")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torchbearer.imagery.cache import build_stack

    return build_stack(SAMPLE, 60, tmp_path_factory.mktemp("cache"))


def _copy(chips: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(chips, tmp_path / "chips"))


def test_chip_folder_is_indexed_with_its_domain_and_bands(chips: Path) -> None:
    chipset = open_chips(chips)
    assert chipset.bands == ["B02", "B03", "B04", "B8A"] and chipset.domain == "dn" and chipset.resolution == 60
    assert {k: len(v) for k, v in chipset.splits.items()} == {"train": 28, "val": 10}
    assert [c.frame.name for c in chipset.splits["train"][:3]] == ["train_0.tif", "train_1.tif", "train_2.tif"]
    assert chipset.splits["train"][0].terms == pytest.approx((1e-4, -0.1))  # (DN - 1000) / 10 000


def test_bad_chip_folders_say_what_is_wrong(chips: Path, tmp_path: Path) -> None:
    folder = _copy(chips, tmp_path)
    (folder / "val_masks" / "val_3.tif").unlink()
    with pytest.raises(ChipError, match=r"1 frames without a mask in val_masks/: val_3\.tif"):
        open_chips(folder)
    shutil.rmtree(folder / "val_frames")
    with pytest.raises(ChipError, match=r"no val_frames/ folder"):
        open_chips(folder)
    with pytest.raises(ChipError, match="not a folder of chips"):
        open_chips(tmp_path / "nowhere")


def test_patches_are_cropped_or_resized_to_the_patch_size(chips: Path) -> None:
    crop = ChipDataModule(open_chips(chips), CLASSES, patch_size=32, batch_size=4, samples_per_epoch=8)
    crop.setup()
    assert len(crop.split.val) == 10 * 4  # each 64 px validation chip tiled by four 32 px patches
    batch = next(iter(crop.train_dataloader()))
    assert batch["image"].shape == (4, 4, 32, 32) and batch["mask"].shape == (4, 32, 32)
    assert abs(float(batch["image"].mean())) < 3  # standardised, not DN

    resized = ChipDataModule(open_chips(chips), CLASSES, patch_size=32, batch_size=10, fit="resize")
    resized.setup()
    batch = next(iter(resized.val_dataloader()))
    assert batch["image"].shape == (10, 4, 32, 32)
    with rasterio.open(chips / "val_masks" / "val_0.tif") as ds:
        full = ds.read(1)
    half = batch["mask"][0].numpy()
    assert set(np.unique(half)) <= set(np.unique(full))  # nearest: no blend of class values
    assert abs((half == 1).mean() - (full == 1).mean()) < 0.05

    padded = ChipDataModule(open_chips(chips), CLASSES, patch_size=96, batch_size=2)
    padded.setup()
    batch = next(iter(padded.val_dataloader()))
    assert batch["image"].shape == (2, 4, 96, 96)
    assert (batch["mask"][:, 64:, :] == 255).all() and (batch["image"][:, :, 64:, :] == 0).all()  # no data


def test_chips_scaled_twice_are_refused(tmp_path: Path) -> None:
    """Reflectance divided by 10 000 twice: mean and spread of every band are far below any real scene's."""
    dm = ChipDataModule(open_chips(make_chip_folder(tmp_path / "t", domain="reflectance", rescale=1e-4)), CLASSES)
    with pytest.raises(InputCheckError, match="double-scaled") as error:
        dm.setup()
    assert all(band in str(error.value) for band in ("B02", "B03", "B04", "B8A"))


def test_dn_rescaled_and_rounded_has_almost_no_variance_and_is_refused(tmp_path: Path) -> None:
    """DN divided by 10 000 and stored again as integers: the values collapse onto two levels."""
    folder = make_chip_folder(tmp_path / "r")
    for frame in (folder / "train_frames").iterdir():
        with rasterio.open(frame, "r+") as ds:
            ds.write(np.maximum(1, np.round(ds.read() / 10000)).astype("uint16"))
    with pytest.raises(InputCheckError, match="almost no variance"):
        ChipDataModule(open_chips(folder), CLASSES).setup()


def test_masks_of_a_single_class_are_refused(chips: Path, tmp_path: Path) -> None:
    folder = _copy(chips, tmp_path)
    for mask in (folder / "train_masks").iterdir():
        with rasterio.open(mask, "r+") as ds:
            ds.write(np.zeros((1, ds.height, ds.width), np.uint8))
    with pytest.raises(InputCheckError, match=r"single class: 'clear' \(0\)"):
        ChipDataModule(open_chips(folder), CLASSES).setup()


def test_scene_masks_of_a_single_class_are_refused(stack: Path, tmp_path: Path) -> None:
    from torchbearer.ml.datamodules import SegmentationDataModule
    from torchbearer.ml.scenes import SplitOptions, load_scenes

    with rasterio.open(MASKS / "t29unu_cloud.tif") as ds:
        profile, data = ds.profile, ds.read(1)
    with rasterio.open(tmp_path / "blank.tif", "w", **profile) as ds:
        ds.write(np.where(data == 255, 255, 0).astype(np.uint8), 1)
    scenes = load_scenes([stack], [tmp_path / "blank.tif"], CLASSES)
    with pytest.raises(InputCheckError, match="single class"):
        SegmentationDataModule(scenes, classes=CLASSES, patch_size=32, split=SplitOptions(64)).setup()


def test_prediction_refuses_a_scene_of_another_domain(stack: Path, tmp_path: Path) -> None:
    from torchbearer.inference.ensemble import predict_scene
    from torchbearer.inference.members import EnsembleError, Member
    from torchbearer.ml.checkpoint import ModelCard, save_checkpoint
    from torchbearer.ml.members import load_member
    from torchbearer.ml.models import build_model

    card = ModelCard("fcn", None, 4, 2, CLASSES, "binary", ["B02", "B03", "B04", "B8A"], 60.0,
                     {"mean": [0.1] * 4, "std": [0.1] * 4}, extra={"value_domain": "reflectance"})  # fmt: skip
    model, card = load_member(save_checkpoint(build_model("fcn", None, 4, 1), card, tmp_path / "refl.ckpt"))
    assert card.value_domain == "reflectance"
    with pytest.raises(EnsembleError, match=r"trained on reflectance input, but .*_60m\.tif holds dn values"):
        predict_scene([Member("refl", model, card)], [stack], tmp_path / "map.tif")
    assert not (tmp_path / "map.tif").exists()


def test_forest_on_chips_predicts_the_scene_as_an_ensemble_member(chips: Path, stack: Path, tmp_path: Path) -> None:
    """Sampled balanced pixels → forest → joblib checkpoint → ``load_member`` → a map like a network's."""
    from torchbearer.inference.ensemble import PredictOptions, predict_scene
    from torchbearer.inference.members import Member
    from torchbearer.inference.onnx import choose_runtimes
    from torchbearer.ml.checkpoint import ModelCard
    from torchbearer.ml.forest import ForestModel, evaluate, fit_forest, sample_pixels, save_forest
    from torchbearer.ml.members import load_member, read_card
    from torchbearer.ml.tasks import make_loss

    dm = ChipDataModule(open_chips(chips), CLASSES, patch_size=32, batch_size=8, samples_per_epoch=64)
    dm.setup()
    x, y = sample_pixels(dm, 2, 4000, seed=0)
    assert x.shape == (4000, 4) and np.bincount(y).tolist() == [2000, 2000]  # balanced
    card = ModelCard("random-forest", None, 4, 2, CLASSES, "binary", dm.bands, 60.0,
                     {"mean": dm.mean, "std": dm.std}, extra={"value_domain": "dn"})  # fmt: skip
    forest = fit_forest(x, y, trees=10, max_depth=8, seed=0)
    scores = evaluate(ForestModel(forest, card), dm.val_dataloader(), "val", make_loss("bce", "binary", 255))
    assert scores["val/iou"] > 0.7 and {"val/loss", "val/f1/cloud", "val/accuracy"} <= set(scores)

    model, loaded = load_member(save_forest(forest, card, tmp_path / "forest.joblib"))
    assert loaded == card and isinstance(model, ForestModel)
    member = Member("rf", model, loaded, str(tmp_path / "forest.joblib"))
    for runtime in ("auto", "onnx"):  # nothing to export: a forest runs as it is, whatever the setting
        assert choose_runtimes([member], runtime, "cpu", window=128, optimize=True) == ["sklearn"]
    assert member.model is model
    assert read_card(tmp_path / "forest.joblib") == card  # what predict and the pre-flight read of a member
    result = predict_scene([member], [stack],
                           tmp_path / "map.tif", PredictOptions(window=128, class_map=True))  # fmt: skip
    with rasterio.open(MASKS / "t29unu_cloud.tif") as ds:
        truth = ds.read(1)
    with rasterio.open(result.class_map) as ds:
        classes = ds.read(1)
    labelled = truth != 255
    cloud, found = (truth == 1) & labelled, (classes == 1) & labelled
    assert (cloud & found).sum() / (cloud | found).sum() > 0.7


def test_forest_file_that_is_not_one_is_refused(tmp_path: Path) -> None:
    from torchbearer.ml.checkpoint import CheckpointError
    from torchbearer.ml.members import load_member

    (tmp_path / "x.joblib").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"x\.joblib: not a readable forest checkpoint"):
        load_member(tmp_path / "x.joblib")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataset: data/chips\nmasks: masks/m.tif\n", "drop masks"),
        ("classes: [a, b]\n", "give either scenes"),
        ("dataset: data/chips\nmodel: {arch: fcn, trees: 10}\n", "trees: options of arch random-forest"),
        ("dataset: data/chips\nmodel: {arch: random-forest, backbone: resnet18}\n", "no backbone or weights"),
        ("dataset: data/chips\ntrain: {chip_fit: stretch}\n", "chip_fit"),
    ],
)
def test_train_spec_checks_dataset_and_forest_fields(text: str, message: str) -> None:
    with pytest.raises(JobFileError, match=message):
        parse_job_text(f"name: t\nkind: train\n{text}", "t.yaml")


def test_plot_spec_needs_something_to_draw() -> None:
    with pytest.raises(JobFileError, match="nothing to plot"):
        parse_job_text("name: p\nkind: plot\n", "p.yaml")
    [job] = parse_job_text("name: p\nkind: plot\nmodel: {job: unet}\ninput: data/chips\ncurves: fcn\n", "p.yaml")
    assert job.spec.after == ["fcn", "unet"]


def test_plots_of_a_scene_show_its_windows_masks_and_predictions(stack: Path, tmp_path: Path) -> None:
    from torchbearer.ml.checkpoint import ModelCard
    from torchbearer.ml.models import build_model
    from torchbearer.ml.plots import plot_scene

    card = ModelCard("fcn", None, 4, 2, CLASSES, "binary", ["B02", "B03", "B04", "B8A"], 60.0,
                     {"mean": [0.1] * 4, "std": [0.1] * 4})  # fmt: skip
    model = build_model("fcn", None, 4, 1).eval()
    paths = plot_scene(model, card, stack, 3, tmp_path, masks=[MASKS / "t29unu_cloud.tif"], patch_size=96)
    assert [p.name for p in paths] == ["plot_0.png", "plot_1.png", "plot_2.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_nan_pixels_of_float_chips_are_no_data(tmp_path: Path) -> None:
    """Reflectance chips whose no data is NaN: those pixels are ignored, never NaN in a batch."""
    folder = make_chip_folder(tmp_path / "f", domain="reflectance")
    for frame in (folder / "train_frames").iterdir():
        with rasterio.open(frame, "r+") as ds:
            values = ds.read()
            values[:, :8, :] = np.nan
            ds.nodata = None
            ds.write(values)
    dm = ChipDataModule(open_chips(folder), CLASSES, patch_size=64, batch_size=4, samples_per_epoch=4)
    dm.setup()
    assert all(np.isfinite(dm.mean)) and all(np.isfinite(dm.std))
    batch = next(iter(dm.train_dataloader()))
    assert np.isfinite(batch["image"].numpy()).all()
    assert (batch["mask"].numpy() == 255).sum(axis=(1, 2)).min() >= 8 * 64  # the NaN rows carry no label
