"""Inputs that describe themselves wrongly are refused or corrected with a message, never silently mislabelled.

Built from the real 60 m crop of T29UNU in ``data/`` (stacked by the scene cache): a 60 m GeoTIFF with a wrong or
missing ``resolution:``, the same scene reprojected to a geographic CRS, the product level and reflectance offset
a model card records, and the tags of the class map.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from tests.conftest import wait_state, write_job
from tests.daemon.conftest import job_named
from tests.inference.conftest import crop_stack
from tests.ml.conftest import MASKS, SAMPLE
from torchbearer.imagery.cache import StackError, build_stack, stack_info
from torchbearer.inference.ensemble import PredictOptions, predict_scene
from torchbearer.inference.members import Member
from torchbearer.jobs.train import TrainSpec, build_task, stacks_resolution
from torchbearer.ml.checkpoint import ModelCard, input_description
from torchbearer.ml.datamodules import SegmentationDataModule
from torchbearer.ml.members import load_member
from torchbearer.ml.models import build_model
from torchbearer.ml.scenes import SplitOptions, load_scenes

CLASSES = ["clear", "cloud"]


@pytest.fixture(scope="module")
def stack60(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_stack(SAMPLE, 60, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def small60(stack60: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 × 64 pixels of the 60 m stack, for quick predictions."""
    return crop_stack(stack60, tmp_path_factory.mktemp("small") / "small_60m.tif", Window(320, 0, 64, 64))


def user_geotiff(stack: Path, path: Path, *, drop: str | None = None, crs: str | None = None) -> Path:
    """A user's GeoTIFF of ``stack``: no band descriptions, no tags; without band ``drop``; in ``crs``."""
    with rasterio.open(stack) as src:
        keep = [i + 1 for i, name in enumerate(src.descriptions) if name != drop]
        data, profile = src.read(keep), {**src.profile, "count": len(keep)}
        if crs is not None:
            transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
            warped = np.zeros((len(keep), height, width), "uint16")
            reproject(data, warped, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                      dst_crs=crs, resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)  # fmt: skip
            data, profile = warped, {**profile, "crs": crs, "transform": transform, "width": width, "height": height}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_60_m_stack_read_as_20_m_is_refused(stack60: Path, tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"has 60 m pixels, but the job asks for resolution: 20: set resolution: 60"):
        stack_info(stack60, 20)
    # Without B01 and band names, its 10 bands would pass for the 10 bands of a 20 m stack, all shifted by one.
    shifted = user_geotiff(stack60, tmp_path / "no_b01.tif", drop="B01")
    with pytest.raises(StackError, match="has 60 m pixels, but the job asks for resolution: 20"):
        load_scenes([shifted], [MASKS / "t29unu_cloud.tif"], CLASSES, resolution=20)
    with pytest.raises(StackError, match=r"has 10 bands; a 60 m stack has 11"):  # and never named as 20 m bands
        stack_info(shifted)
    assert stack_info(user_geotiff(stack60, tmp_path / "plain.tif")).bands == stack_info(stack60).bands


def test_resolution_left_out_is_taken_from_the_stack(stack60: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="torchbearer.jobs.train"):
        assert stacks_resolution([stack60], 20) == 60
    assert "resolution: not given; the scenes are 60 m stacks" in caplog.text
    (scene,) = load_scenes([stack60], [MASKS / "t29unu_cloud.tif"], CLASSES, resolution=60)
    assert scene.info.bands[8] == "B09" and scene.info.resolution == 60


def test_geographic_crs_is_refused_by_training_and_prediction(stack60: Path, small60: Path, tmp_path: Path) -> None:
    geographic = user_geotiff(small60, tmp_path / "wgs84.tif", crs="EPSG:4326")
    with pytest.raises(StackError, match=r"wgs84\.tif is in EPSG:4326, a geographic CRS"):
        load_scenes([geographic], [MASKS / "t29unu_cloud.tif"], CLASSES)
    card = ModelCard(arch="fcn", backbone=None, in_channels=11, num_classes=2, classes=CLASSES, task="binary",
                     bands=list(stack_info(stack60).bands), resolution=60.0,
                     norm={"mean": [0.1] * 11, "std": [0.05] * 11})  # fmt: skip
    member = Member(name="fcn", model=build_model("fcn", None, 11, 1), card=card)
    with pytest.raises(StackError, match=r"wgs84\.tif is in EPSG:4326, a geographic CRS"):
        predict_scene([member], [geographic], tmp_path / "map.tif", PredictOptions(window=64, optimize=False))


def test_card_records_product_level_and_offset_and_predict_warns(
    stack60: Path, small60: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scenes = load_scenes([stack60], [MASKS / "t29unu_cloud.tif"], CLASSES, resolution=60)
    datamodule = SegmentationDataModule(scenes, patch_size=32, split=SplitOptions(64))
    datamodule.setup()
    spec = TrainSpec(name="t", scenes=["x.tif"], masks="m.tif", classes=CLASSES, model={"arch": "fcn"})
    card = build_task(spec, None, datamodule, 60, resuming=False).card
    assert (card.product_level, card.reflectance_offset) == ("L2A", -1000.0)
    assert ModelCard.from_dict(card.to_dict()).product_level == "L2A"  # kept in the checkpoint's card

    l1c = ModelCard(**{**card.to_dict(), "extra": input_description(["L1C"], [0.0])})
    member = Member(name="toa", model=build_model("fcn", None, 11, 1), card=l1c)
    with caplog.at_level(logging.WARNING, logger="torchbearer.inference.groups"):
        predict_scene([member], [small60], tmp_path / "map.tif", PredictOptions(window=64, optimize=False))
    assert "the model was trained on L1C scenes, this one is L2A" in caplog.text
    assert "reflectance offset (BOA_ADD_OFFSET) is -1000, the training scenes' was 0" in caplog.text


def test_class_map_tags_describe_class_indexes(small60: Path, tmp_path: Path) -> None:
    card = ModelCard(arch="fcn", backbone=None, in_channels=11, num_classes=2, classes=CLASSES, task="binary",
                     bands=list(stack_info(small60).bands), resolution=60.0,
                     norm={"mean": [0.1] * 11, "std": [0.05] * 11})  # fmt: skip
    member = Member(name="fcn", model=build_model("fcn", None, 11, 1), card=card)
    result = predict_scene([member], [small60], tmp_path / "map.tif",
                           PredictOptions(window=64, class_map=True, optimize=False))  # fmt: skip
    with rasterio.open(result.class_map) as ds:
        values = ds.tags()["TORCHBEARER_VALUES"]
        assert json.loads(ds.tags()["TORCHBEARER_CLASSES"]) == CLASSES
    assert values == "class index (0 = clear, 1 = cloud), 255 = no data" and "probability" not in values
    with rasterio.open(result.output) as ds:
        assert ds.tags()["TORCHBEARER_VALUES"].startswith("probability")


@pytest.mark.slow  # a train job and a predict job through the daemon
def test_train_without_resolution_on_a_60_m_geotiff_then_predict(sample_project, store, daemon, stack60) -> None:
    """The 60 m GeoTIFF trained with ``resolution`` left out: trained at 60 m (said in the log), its bands
    named right in the card, and a prediction on the same file works."""
    root = sample_project.project_dir
    (root / "data" / "scene_60m.tif").write_bytes(stack60.read_bytes())
    write_job(sample_project.queue_dir, "geotiff.yaml", (
        "jobs:\n"
        "  - {name: tif, kind: train, scenes: [data/scene_60m.tif], masks: masks/t29unu_cloud.tif,"
        " classes: [clear, cloud], model: {arch: fcn}, train: {epochs: 1, batch_size: 8, patch_size: 32,"
        " samples_per_epoch: 8, plots: 0, early_stopping: null, split: {block_size: 32}}}\n"
        "  - {name: map, kind: predict, models: [{job: tif}], scenes: [data/scene_60m.tif],"
        " output: outputs/map.tif, window: 64, optimize: false}\n"
    ))  # fmt: skip
    for name in ("tif", "map"):
        job = wait_state(store, job_named(store, name).id, {"succeeded", "failed"}, timeout=300)
        assert job.state == "succeeded", (name, job.reason)
    train = job_named(store, "tif")
    assert (
        "the scenes are 60 m stacks, so the model is trained at 60 m" in (Path(train.run_dir) / "log.txt").read_text()
    )
    _, card = load_member(Path(train.run_dir) / "checkpoints" / "best.ckpt")
    assert card.resolution == 60 and card.bands == list(stack_info(stack60).bands)
    assert (card.product_level, card.reflectance_offset) == ("L2A", -1000.0)
    assert (root / "outputs" / "map.tif").is_file()
