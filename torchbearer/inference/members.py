"""The members of an ensemble: one model each, with its card, source and weight; and the checks that they can be
combined (same task and classes, distinct names) before any window is read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from torchbearer.ml.checkpoint import ModelCard


class EnsembleError(ValueError):
    """The members or inputs cannot make an ensemble prediction; the message says which and why."""


@dataclass
class Member:
    """One model of the ensemble.

    Args:
        name: short name used in tags and per-member map names.
        model: the network (eval mode), outputs logits of shape B × channels × H × W.
        card: its model card (``ml.checkpoint.ModelCard``: task, classes, bands, resolution, norm).
        source: where it came from (a checkpoint path), for tags and to recognise a resumable run.
        weight: its weight for ``combine: weighted`` (and weighted votes).
    """

    name: str
    model: nn.Module
    card: ModelCard
    source: str = ""
    weight: float = 1.0


def check_compatible(members: Sequence[Member]) -> None:
    """Refuse members that do not predict the same classes the same way (before any window is read)."""
    if not members:
        raise EnsembleError("an ensemble needs at least one model")
    first = members[0]
    for other in members[1:]:
        a, b = first.card, other.card
        if (a.task, list(a.classes), a.num_classes) != (b.task, list(b.classes), b.num_classes):
            raise EnsembleError(
                f"models {first.name!r} and {other.name!r} are incompatible: {first.name} predicts "
                f"{a.task} {list(a.classes)} ({first.source or 'in memory'}), {other.name} predicts "
                f"{b.task} {list(b.classes)} ({other.source or 'in memory'}); an ensemble needs the same classes"
            )
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise EnsembleError(f"model names must differ, got {names}")


def model_threshold(members: list[Any]) -> float:
    """A binary class map's threshold: the F1-optimal one of the training report, recorded in each member's
    card (``extra.threshold``); the mean over members, 0.5 for a member without one."""
    return float(np.mean([float(m.card.extra.get("threshold", 0.5)) for m in members]))
