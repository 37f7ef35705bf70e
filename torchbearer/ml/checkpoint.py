"""Checkpoints and the model card they carry.

A torchbearer checkpoint is a Lightning ``.ckpt`` whose extra key ``"torchbearer"`` holds the :class:`ModelCard`:
what the model is (arch, backbone, channels, classes, task) and what it expects as input (bands, resolution in
metres, per-band normalisation statistics in reflectance units). With the card, a prediction builds the same
network and feeds it the same numbers as the training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

#: The key of the model card in a checkpoint.
CARD_KEY = "torchbearer"
#: Version of the card's layout; raise it when a field changes meaning.
CARD_VERSION = 1
#: Prefix of the network's tensors in a Lightning checkpoint (the task keeps the network as ``self.model``).
MODEL_PREFIX = "model."
#: Suffix of a random-forest checkpoint (``ml/forest.py``): the estimator and its card, saved with joblib.
FOREST_SUFFIX = ".joblib"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, unreadable, or its card is absent or wrong (message says which)."""


@dataclass(frozen=True)
class ModelCard:
    """What a trained model is and what input it expects.

    ``num_classes`` counts classes (2 for a binary task: ``classes`` = [background, target]); the network has
    :attr:`out_channels` logit channels. ``norm`` holds ``mean`` and ``std`` per band in reflectance units.
    """

    arch: str
    backbone: str | None
    in_channels: int
    num_classes: int
    classes: list[str]
    task: Literal["binary", "multiclass", "multilabel"]  # multilabel: patch classifiers (one sigmoid a class)
    bands: list[str]
    resolution: float
    norm: dict[str, list[float]]
    card_version: int = CARD_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def value_domain(self) -> str:
        """What the model's raw input was (``dn``, ``reflectance``, ``uint8``: ``ml/domains.py``)."""
        from torchbearer.ml.domains import card_domain

        return card_domain(self.extra)

    @property
    def out_channels(self) -> int:
        """Logit channels of the network: 1 for a binary task (sigmoid), the class count otherwise."""
        return 1 if self.task == "binary" else self.num_classes

    def to_dict(self) -> dict[str, Any]:
        """The card as plain Python values (what goes into the checkpoint)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "checkpoint") -> ModelCard:
        """Read and check a card; ``where`` names its source in errors."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: no torchbearer model card (key {CARD_KEY!r})")
        version = data.get("card_version")
        if version != CARD_VERSION:
            raise CheckpointError(f"{where}: model card version {version!r}, this torchbearer reads {CARD_VERSION}")
        names = {f for f in cls.__dataclass_fields__}
        missing = sorted(names - set(data) - {"extra"})
        if missing:
            raise CheckpointError(f"{where}: model card lacks {', '.join(missing)}")
        card = cls(**{k: v for k, v in data.items() if k in names})
        problems = []
        if card.task not in ("binary", "multiclass", "multilabel"):
            problems.append(f"task {card.task!r} is not binary, multiclass or multilabel")
        if len(card.bands) != card.in_channels:
            problems.append(f"{len(card.bands)} bands for {card.in_channels} input channels")
        if len(card.classes) != card.num_classes:
            problems.append(f"{len(card.classes)} class names for {card.num_classes} classes")
        for key in ("mean", "std"):
            if len(card.norm.get(key, [])) != card.in_channels:
                problems.append(f"norm {key} has {len(card.norm.get(key, []))} values, not {card.in_channels}")
        if any(s <= 0 for s in card.norm.get("std", [])):
            problems.append("norm std has a value ≤ 0")
        if problems:
            raise CheckpointError(f"{where}: bad model card: {'; '.join(problems)}")
        return card

    # What the training input was, kept in ``extra`` (cards written before these read on, as unknown).

    @property
    def product_level(self) -> str | None:
        """``L1C`` / ``L2A``: the processing level of the training scenes (None: unknown, or they differed)."""
        return self.extra.get("product_level")

    @property
    def reflectance_offset(self) -> float | None:
        """The training scenes' ``BOA_ADD_OFFSET`` (DN; None: unknown, or they differed)."""
        return self.extra.get("reflectance_offset")

    def input_differences(self, level: str | None, offset: float | None) -> list[str]:
        """How a scene (its product level and ``BOA_ADD_OFFSET``) differs from the training scenes, in words."""
        found = []
        if self.product_level and level and level != self.product_level:
            found.append(
                f"the model was trained on {self.product_level} scenes, this one is {level} "
                f"({'top' if level == 'L1C' else 'bottom'} of atmosphere): expect worse predictions"
            )
        if self.reflectance_offset is not None and offset is not None and offset != self.reflectance_offset:
            found.append(
                f"its reflectance offset (BOA_ADD_OFFSET) is {offset:g}, the training scenes' was "
                f"{self.reflectance_offset:g}: right for a product of another processing baseline; a GeoTIFF "
                "without the tag reads as 0, so add the tag if the scene is from baseline 04.00 or later"
            )
        return found


def input_description(levels: list[str | None], offsets: list[float]) -> dict[str, Any]:
    """``extra`` entries of a card for training scenes of these product levels and reflectance offsets (each
    recorded when the scenes agree on it)."""
    return {
        "product_level": levels[0] if levels and len(set(levels)) == 1 else None,
        "reflectance_offset": float(offsets[0]) if offsets and len(set(offsets)) == 1 else None,
    }


def standardising_terms(
    reflectance_terms: tuple[float, float], mean: list[float], std: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(a, b)`` (float32) with standardised input = DN × a + b: reflectance (DN × scale + shift) minus
    the mean, over the std, folded into one multiply-add for the training and inference hot paths."""
    scale, shift = reflectance_terms
    mean_a, std_a = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (np.float32(scale) / std_a).astype(np.float32), ((np.float32(shift) - mean_a) / std_a).astype(np.float32)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU (tensors only, no arbitrary pickled objects)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a checkpoint dictionary")
    return data


def state_dict_of(checkpoint: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The network's tensors: from a Lightning checkpoint (``model.`` prefix dropped) or a plain state dict."""
    import torch

    state = checkpoint.get("state_dict", checkpoint)
    if any(k.startswith(MODEL_PREFIX) for k in state):
        state = {k[len(MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no model tensors")
    return tensors


def save_checkpoint(model: nn.Module, card: ModelCard, path: Path) -> Path:
    """Write a network and its card in the format :func:`torchbearer.ml.members.load_member` reads (what
    training's ``.ckpt`` holds, without the optimizer and loop state): for checkpoints made outside training,
    e.g. converted weights."""
    import torch

    state = {f"{MODEL_PREFIX}{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, CARD_KEY: card.to_dict()}, path)
    return Path(path)
