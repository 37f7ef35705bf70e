"""Explanation-test helpers: the real 60 m crop's stacks (from ``tests/inference``), hand-made models, and
``classify``-style checkpoints of untrained timm classifiers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from torch import nn

from tests.classify.conftest import patch_project  # noqa: F401 - the classify tests' project with the SCL patches
from tests.inference.conftest import part60, small60, stack20, stack60  # noqa: F401 - fixtures shared with inference
from tests.ml.conftest import sample_project  # noqa: F401 - the train tests' project with the crop and masks
from torchbearer.explain.patches import Patch, scene_window_patches
from torchbearer.imagery.cache import stack_info
from torchbearer.ml.checkpoint import ModelCard, save_checkpoint
from torchbearer.ml.classifiers import build_classifier
from torchbearer.ml.patches import load_patch_set


class RegionModel(nn.Module):
    """A segmentation model whose output depends only on the input inside ``region`` (rows, cols slices).

    ``features`` (a convolution and ReLU) is gated to zero outside the region by ``gate`` before a 1 × 1 head:
    whatever the input outside, the logits stay the head's bias there.
    """

    def __init__(self, bands: int, region: tuple[slice, slice], size: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(bands, 8, 3, padding=1), nn.ReLU())
        mask = torch.zeros(1, 1, size, size)
        mask[..., region[0], region[1]] = 1
        self.gate = Gate(mask)
        self.head = nn.Conv2d(8, 1, 1)
        with torch.no_grad():
            self.head.weight.abs_()  # every feature raises the score: CAM weights are positive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(self.features(x)))


class Gate(nn.Module):
    """Multiplies its input by a fixed mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class OneBandModel(nn.Module):
    """A segmentation model that reads band ``band`` only: logit = tanh(a · x[band] + b), per pixel."""

    def __init__(self, bands: int, band: int) -> None:
        super().__init__()
        self.head = nn.Conv2d(bands, 1, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[0, band] = 1.5
            self.head.bias.fill_(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(x))


def real_card(stack: Path, arch: str = "fcn", classes: tuple[str, ...] = ("clear", "cloud")) -> ModelCard:
    """A card for ``stack`` with the real per-band reflectance statistics of its valid pixels."""
    info = stack_info(stack)
    with rasterio.open(stack) as ds:
        dn = ds.read()
    valid = (dn != 0).all(axis=0)
    scale, shift = info.reflectance_terms
    reflectance = dn[:, valid].astype(np.float64) * scale + shift
    return ModelCard(
        arch=arch, backbone=None, in_channels=len(info.bands), num_classes=len(classes), classes=list(classes),
        task="binary" if len(classes) == 2 else "multiclass", bands=list(info.bands), resolution=info.resolution,
        norm={"mean": reflectance.mean(axis=1).tolist(), "std": reflectance.std(axis=1).tolist()},
    )  # fmt: skip


def windows(stack: Path, card: ModelCard, size: int) -> list[Patch]:
    return list(scene_window_patches(stack, card, size))


def classifier_checkpoint(root: Path, backbone: str, path: Path, layout: str = "auto") -> Path:
    """A ``classify``-style checkpoint (card ``arch: classifier``, the patches' per-band statistics in their own
    units) of an untrained timm classifier for the patch set under ``root``."""
    patch_set = load_patch_set(root, path.parent / "cache", layout=layout)
    mean, std = patch_set.band_stats(np.arange(len(patch_set)))
    card = ModelCard(
        arch="classifier", backbone=backbone, in_channels=len(patch_set.bands), num_classes=len(patch_set.classes),
        classes=patch_set.classes, task="multilabel" if patch_set.multilabel else "multiclass",
        bands=patch_set.bands, resolution=60.0 if layout == "auto" else 10.0, norm={"mean": mean, "std": std},
        extra={"patch_size": int(patch_set.images.shape[-1])},
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_classifier(backbone, card.in_channels, card.num_classes, weights=None)
    return save_checkpoint(model, card, path)
