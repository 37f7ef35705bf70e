"""Test-time augmentation: the transforms a window goes through before the forward, and their inverses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

TTA = Literal["none", "flips", "d4"]


def tta_transforms(
    tta: TTA,
) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]]:
    """(transform, inverse) pairs on the last two axes: identity; + flips; or the 8 of the dihedral group."""
    identity = (lambda t: t, lambda t: t)
    if tta == "none":
        return [identity]
    if tta == "flips":
        return [identity, (lambda t: t.flip(-1), lambda t: t.flip(-1)), (lambda t: t.flip(-2), lambda t: t.flip(-2))]
    pairs = []
    for k in range(4):
        pairs.append((lambda t, k=k: t.rot90(k, (-2, -1)), lambda t, k=k: t.rot90(-k, (-2, -1))))
        pairs.append((lambda t, k=k: t.flip(-1).rot90(k, (-2, -1)), lambda t, k=k: t.rot90(-k, (-2, -1)).flip(-1)))
    return pairs
