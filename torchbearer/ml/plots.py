"""``plot_{i}.png``: a validation patch as image / mask / prediction, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchbearer.ml.labels import IGNORE

#: Bands shown as red, green, blue (true colour); the first three bands when a stack lacks them.
RGB = ("B04", "B03", "B02")


def rgb_image(image: np.ndarray, bands: list[str]) -> np.ndarray:
    """H × W × 3 in [0, 1] from a standardised patch (bands × H × W), stretched between its 2nd and 98th
    percentiles per channel."""
    picks = [bands.index(b) for b in RGB] if all(b in bands for b in RGB) else [0, 1, 2][: len(bands)]
    rgb = np.stack([image[i] for i in picks] + [image[picks[-1]]] * (3 - len(picks)), axis=-1)
    low, high = np.percentile(rgb, (2, 98), axis=(0, 1))
    return np.clip((rgb - low) / np.maximum(high - low, 1e-6), 0, 1)


def save_plot(
    path: Path, image: np.ndarray, mask: np.ndarray, prediction: np.ndarray, bands: list[str], classes: list[str]
) -> Path:
    """Write image / mask / prediction of one patch to ``path`` (PNG); ignored mask pixels are left blank."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a GPU server
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = plt.get_cmap("tab10" if len(classes) > 2 else "gray", max(len(classes), 2))
    cmap = ListedColormap(colours(np.arange(len(classes)))) if len(classes) > 2 else "gray"
    shown = np.ma.masked_equal(mask.astype(np.int64), IGNORE)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for ax, (title, data) in zip(
        axes, (("image", rgb_image(image, bands)), ("mask", shown), ("prediction", prediction)), strict=True
    ):
        if title == "image":
            ax.imshow(data)
        else:
            ax.imshow(data, cmap=cmap, vmin=0, vmax=len(classes) - 1, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
