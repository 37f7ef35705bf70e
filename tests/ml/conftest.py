"""Helpers for training tests: the sample product and its masks copied into a test project."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from torchbearer.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SAMPLE_NAME = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
SAMPLE = REPO / "data" / SAMPLE_NAME
MASKS = REPO / "masks"


@pytest.fixture
def sample_project(project: Settings) -> Settings:
    """The temp project with ``data/<sample>.SAFE`` and ``masks/t29unu_cloud.{tif,geojson}``."""
    shutil.copytree(SAMPLE, project.project_dir / "data" / SAMPLE_NAME)
    shutil.copytree(MASKS, project.project_dir / "masks")
    return project


def train_yaml(
    name: str,
    *,
    model: str = "{arch: fcn}",
    epochs: int = 2,
    samples: int = 32,
    patch: int = 32,
    extra: str = "",
    train: str = "",
    lr: float = 0.003,
) -> str:
    """A train job on the sample: 60 m, cloud vs clear, ``samples`` patches of ``patch`` pixels an epoch."""
    return (
        f"name: {name}\nkind: train\nscenes: [data/{SAMPLE_NAME}]\nresolution: 60\n"
        f"masks: masks/t29unu_cloud.tif\nclasses: [clear, cloud]\nmodel: {model}\n"
        f"train: {{epochs: {epochs}, batch_size: 8, patch_size: {patch}, lr: {lr:.3e}, samples_per_epoch: {samples},"
        f" plots: 2, early_stopping: null, split: {{block_size: {patch}}}{', ' + train if train else ''}}}\n{extra}"
    )


def constant_iou(settings: Settings, patch_size: int = 32, seed: int = 0) -> float:
    """Validation IoU of cloud for the best constant prediction (cloud everywhere) on the job's split."""
    import numpy as np

    from torchbearer.ml.datamodules import SegmentationDataModule
    from torchbearer.ml.labels import IGNORE
    from torchbearer.ml.scenes import SplitOptions, load_scenes

    stack = settings.data_dir / "cache" / f"{SAMPLE_NAME.removesuffix('.SAFE')}_60m.tif"
    scenes = load_scenes([stack], [MASKS / "t29unu_cloud.tif"], ["clear", "cloud"])
    dm = SegmentationDataModule(scenes, patch_size=patch_size, split=SplitOptions(patch_size), seed=seed)
    dm.setup()
    labels = np.concatenate([dm.scenes[s].target[r : r + patch_size, c : c + patch_size].ravel()
                             for s, r, c in dm.split.val])  # fmt: skip
    labels = labels[labels != IGNORE]
    return float((labels == 1).mean())  # intersection = cloud pixels, union = every labelled pixel
