"""Combining the members: logits to probabilities, the rules that merge members' probabilities, class maps."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Combine = Literal["mean", "weighted", "vote", "max"]


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Sigmoid of a binary model's one channel, softmax over a multiclass model's channels."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == "binary" else torch.softmax(logits, dim=1)


def combine(probs: np.ndarray, weights: np.ndarray, rule: Combine, task: str) -> np.ndarray:
    """Combine member probabilities (members × classes × …) into one (classes × …).

    ``mean``: plain mean; ``weighted``: mean with the members' weights; ``vote``: the (weighted) share of members
    deciding for each class (binary: p ≥ 0.5; multiclass: argmax); ``max``: per class, the largest probability.
    """
    if rule == "mean":
        return probs.mean(axis=0)
    if rule == "max":
        return probs.max(axis=0)
    share = (weights / weights.sum()).astype(np.float32)
    if rule == "weighted":
        return np.tensordot(share, probs, axes=1)
    if task == "binary":
        votes = (probs >= 0.5).astype(np.float32)
    else:
        votes = (probs.argmax(axis=1)[:, None] == np.arange(probs.shape[1])[None, :, None, None]).astype(np.float32)
    return np.tensordot(share, votes, axes=1)


def class_map(combined: np.ndarray, task: str, threshold: float = 0.5) -> np.ndarray:
    """Class index (uint8) per pixel from combined probabilities (classes × …); a binary task's target where
    its probability reaches ``threshold``."""
    if task == "binary":
        return (combined[0] >= threshold).astype(np.uint8)
    return combined.argmax(axis=0).astype(np.uint8)
