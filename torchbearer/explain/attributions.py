"""Per-band importance through Captum: Integrated Gradients or GradientShap against a baseline.

Each patch's class score (``model.ClassScore``) is attributed to every input value; a band's importance is the
mean absolute attribution over the patches' valid pixels, also given as a share of all bands' total. The
baseline is ``mean``: every band at its training mean, which is also the value no-data pixels are fed as
(standardised 0), so it is the no-data baseline; or ``zero``: zero reflectance (a black input).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from torchbearer.explain.model import ClassScore, scores

Method = Literal["integrated_gradients", "gradient_shap"]
Baseline = Literal["mean", "zero"]


@dataclass
class BandImportance:
    """One band's importance: mean |attribution| over valid pixels, its share of the total, the signed mean."""

    band: str
    mean_abs: float
    share: float
    mean_signed: float


def baseline_of(x: torch.Tensor, kind: Baseline, zero_reflectance: torch.Tensor) -> torch.Tensor:
    """The baseline input for a batch ``x``: standardised 0 (the mean) or zero reflectance (per band, B × bands)."""
    if kind == "mean":
        return torch.zeros_like(x)
    return zero_reflectance.to(x).view(1, -1, 1, 1).expand_as(x).contiguous()


def band_attributions(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    bands: list[str],
    class_index: int,
    binary: bool,
    *,
    method: Method = "integrated_gradients",
    baseline: Baseline = "mean",
    zero_reflectance: torch.Tensor | None = None,
    steps: int = 32,
    seed: int = 0,
) -> list[BandImportance]:
    """Importance of each band for the score of class ``class_index``, most important first.

    Args:
        batches: standardised inputs (B × bands × H × W) and where they have data (B × H × W, bool).
        binary: the model has one logit (see :class:`~torchbearer.explain.model.ClassScore`).
        zero_reflectance: per band, the standardised value of reflectance 0 (for ``baseline: zero``).
        steps: Integrated Gradients' integration steps, or GradientShap's samples per example.
    """
    from captum.attr import GradientShap, IntegratedGradients

    def forward(inputs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # ``valid`` travels as an additional forward argument: Captum repeats it the way it repeats the inputs.
        return scores(model, inputs, [ClassScore(class_index, binary, v) for v in valid])

    total_abs = torch.zeros(len(bands), dtype=torch.float64)
    total_signed = torch.zeros(len(bands), dtype=torch.float64)
    pixels = 0
    torch.manual_seed(seed)
    zero = zero_reflectance if zero_reflectance is not None else torch.zeros(len(bands))
    for x, valid in batches:
        base = baseline_of(x, baseline, zero)
        if method == "integrated_gradients":
            attr = IntegratedGradients(forward).attribute(
                x, baselines=base, additional_forward_args=(valid,), n_steps=steps, internal_batch_size=len(x)
            )
        else:  # baselines drawn around the baseline (GradientShap wants a distribution)
            attr = GradientShap(forward).attribute(
                x, baselines=base, additional_forward_args=(valid,), n_samples=steps, stdevs=0.1
            )
        attr = attr.detach().double() * valid.unsqueeze(1)
        total_abs += attr.abs().sum(dim=(0, 2, 3))
        total_signed += attr.sum(dim=(0, 2, 3))
        pixels += int(valid.sum())
    mean_abs = (total_abs / max(pixels, 1)).tolist()
    signed = (total_signed / max(pixels, 1)).tolist()
    whole = sum(mean_abs) or 1.0
    ranked = [BandImportance(b, a, a / whole, s) for b, a, s in zip(bands, mean_abs, signed, strict=True)]
    return sorted(ranked, key=lambda r: r.mean_abs, reverse=True)


def write_csv(path: Path, ranked: list[BandImportance]) -> Path:
    """``rank,band,share,mean_abs,mean_signed`` per band, most important first."""
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["rank", "band", "share", "mean_abs", "mean_signed"])
        for rank, r in enumerate(ranked, start=1):
            out.writerow([rank, r.band, f"{r.share:.6f}", f"{r.mean_abs:.6g}", f"{r.mean_signed:.6g}"])
    return Path(path)


def write_bar_chart(path: Path, ranked: list[BandImportance], title: str) -> Path:
    """A horizontal bar chart of the bands' shares of importance (most important on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from torchbearer.ml.plots import save_figure

    fig, ax = plt.subplots(figsize=(6, 0.35 * len(ranked) + 1.2))
    names = [r.band for r in ranked][::-1]
    shares = np.array([r.share for r in ranked][::-1]) * 100
    ax.barh(names, shares, color="tab:orange")
    ax.set_xlabel("share of attribution (%)")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
