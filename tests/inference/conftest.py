"""Inference-test helpers: stacks of the real crop in ``data/``, checkpoints of untrained models, toy members.

The crop is real (60 m bands of T29UNU with its no-data wedge). There are no real 20 m bands in it, so the 20 m
stack here is the 60 m crop resampled 3× (nearest), without B09: the same scene on a finer grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from torch import nn

from torchbearer.imagery.cache import build_stack, stack_info
from torchbearer.imagery.spec import BANDS_BY_RESOLUTION
from torchbearer.inference.members import Member
from torchbearer.ml import checkpoint
from torchbearer.ml.checkpoint import ModelCard
from torchbearer.ml.models import build_model

REPO = Path(__file__).resolve().parents[2]
CROP = REPO / "data" / "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"


@pytest.fixture(scope="session")
def stack60(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The crop's 60 m stack (320 × 512 pixels, 11 bands), built by the scene cache."""
    return build_stack(CROP, 60, tmp_path_factory.mktemp("cache"))


def crop_stack(source: Path, path: Path, window: Window) -> Path:
    """A stack holding ``window`` of ``source`` (same bands, tags and resolution)."""
    with rasterio.open(source) as src:
        profile = {**src.profile, "width": int(window.width), "height": int(window.height),
                   "transform": src.window_transform(window)}  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.descriptions = src.descriptions
            dst.update_tags(**src.tags())
    return path


@pytest.fixture(scope="session")
def part60(stack60: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The north-east 128 × 192 pixels of the 60 m crop (15 % of it in the no-data wedge)."""
    return crop_stack(stack60, tmp_path_factory.mktemp("part60") / "part_60m.tif", Window(320, 0, 192, 128))


@pytest.fixture(scope="session")
def small60(part60: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The east 96 × 144 pixels of ``part60`` (the wedge included)."""
    return crop_stack(part60, tmp_path_factory.mktemp("small60") / "small_60m.tif", Window(48, 0, 144, 96))


@pytest.fixture(scope="session")
def stack20(small60: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``small60`` at 20 m: resampled 3× (nearest), the 10 bands of a 20 m stack (288 × 432 pixels)."""
    path = tmp_path_factory.mktemp("stack20") / "small_20m.tif"
    bands = BANDS_BY_RESOLUTION[20]
    with rasterio.open(small60) as src:
        indexes = [src.descriptions.index(b) + 1 for b in bands]
        data = src.read(indexes).repeat(3, axis=1).repeat(3, axis=2)
        profile = {**src.profile, "count": len(bands), "width": src.width * 3, "height": src.height * 3,
                   "transform": src.transform @ src.transform.scale(1 / 3, 1 / 3)}  # fmt: skip
        tags = {**src.tags(), "RESOLUTION": "20"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = bands
        dst.update_tags(**tags)
    return path


def card_for(
    stack: Path, arch: str = "fcn", backbone: str | None = None, classes: tuple[str, ...] = ("background", "cloud")
) -> ModelCard:
    """A model card for ``stack``'s bands and resolution, with plausible reflectance statistics."""
    info = stack_info(stack)
    return ModelCard(
        arch=arch,
        backbone=backbone,
        in_channels=len(info.bands),
        num_classes=len(classes),
        classes=list(classes),
        task="binary" if len(classes) == 2 else "multiclass",
        bands=list(info.bands),
        resolution=info.resolution,
        norm={"mean": [0.1] * len(info.bands), "std": [0.05] * len(info.bands)},
    )


def save_checkpoint(path: Path, card: ModelCard, seed: int = 0) -> Path:
    """An untrained model of ``card`` saved as a Lightning-style checkpoint with its card (ml/checkpoint.py)."""
    torch.manual_seed(seed)
    model = build_model(card.arch, card.backbone, card.in_channels, card.out_channels)
    return checkpoint.save_checkpoint(model, card, path)


class Constant(nn.Module):
    """A model whose logit is ``value`` everywhere."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1, *x.shape[-2:]), self.value, dtype=x.dtype)


def constant_member(stack: Path, logit: float, name: str = "constant") -> Member:
    return Member(name=name, model=Constant(logit), card=card_for(stack))


def expected_constant(logit: float) -> int:
    """The stored value of a probability sigmoid(logit)."""
    return int(np.rint(torch.sigmoid(torch.tensor(logit)).item() * 254))


def nodata_of(stack: Path) -> np.ndarray:
    """Pixels of ``stack`` where a band has DN 0 (the wedge)."""
    with rasterio.open(stack) as ds:
        return (ds.read() == 0).any(axis=0)
