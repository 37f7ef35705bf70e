"""Plots: ``plot_{i}.png`` (a patch as image / mask / prediction, side by side) of validation patches, of a
scene's windows or of a chip folder's chips; learning curves from a job's metrics (PNG, loss on a log axis).
matplotlib and torch are imported where needed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from torchbearer.ml.labels import IGNORE

if TYPE_CHECKING:
    from torchbearer.ml.checkpoint import ModelCard
    from torchbearer.ml.datamodules import PatchDataModule

#: Bands shown as red, green, blue (true colour); the first three bands when a stack lacks them.
RGB = ("B04", "B03", "B02")


def rgb_image(image: np.ndarray, bands: list[str]) -> np.ndarray:
    """H × W × 3 in [0, 1] from a standardised patch (bands × H × W), stretched between its 2nd and 98th
    percentiles per channel."""
    picks = [bands.index(b) for b in RGB] if all(b in bands for b in RGB) else [0, 1, 2][: len(bands)]
    rgb = np.stack([image[i] for i in picks] + [image[picks[-1]]] * (3 - len(picks)), axis=-1)
    low, high = np.percentile(rgb, (2, 98), axis=(0, 1))
    return np.clip((rgb - low) / np.maximum(high - low, 1e-6), 0, 1)


def save_figure(fig: Any, path: Path, dpi: int = 80) -> Path:
    """Lay ``fig`` out tightly, write it to ``path`` (PNG at ``dpi`` dots per inch) and close it, so a long run
    that draws many figures does not keep them all in memory."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


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
    return save_figure(fig, path)


# -- plots of a trained model on a scene or a chip folder (the ``plot`` kind) -----------------------------------


def _predict_classes(model: Any, card: Any, image: np.ndarray) -> np.ndarray:
    """Class per pixel of one standardised patch (bands × H × W), padded to a multiple of 32 for the network."""
    import torch

    from torchbearer.ml.tasks import predicted_classes

    h, w = image.shape[-2:]
    pad = ((0, 0), (0, -h % 32), (0, -w % 32))
    x = torch.from_numpy(np.pad(image, pad).astype(np.float32))[None]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        return predicted_classes(model(x.to(device)), card.task)[0, :h, :w].cpu().numpy()


def _standardised(values: np.ndarray, nodata: np.ndarray, terms: tuple[float, float], card: Any) -> np.ndarray:
    from torchbearer.ml.checkpoint import standardising_terms

    a, b = standardising_terms(terms, card.norm["mean"], card.norm["std"])
    image = values.astype(np.float32) * a[:, None, None] + b[:, None, None]
    image[:, nodata] = 0.0  # no data reads as the training mean, as in training
    return image


def plot_chips(model: Any, card: Any, folder: Path, count: int, out_dir: Path, report: Any = None) -> list[Path]:
    """``plot_{i}.png`` for the first ``count`` chips of a chip folder (validation chips first, then test,
    then training), each whole: image, its mask, the model's prediction.

    Raises:
        DomainError: the chips hold values of another domain than the model was trained on.
        ChipError: the folder is not a chip folder, or lacks the model's bands.
    """
    from torchbearer.ml.chips import ChipError, open_chips, read_chip
    from torchbearer.ml.domains import DomainError

    chips = open_chips(folder)
    if chips.domain != card.value_domain:
        raise DomainError(f"model trained on {card.value_domain} input; the chips of {folder} hold {chips.domain}")
    missing = [b for b in card.bands if b not in chips.bands]
    if missing:
        raise ChipError(f"chips of {folder} lack the model's bands {', '.join(missing)} (they have {chips.bands})")
    picks = [chips.bands.index(b) for b in card.bands]
    ordered = [c for name in ("val", "test", "train") for c in chips.splits.get(name, [])][:count]
    paths = []
    for i, chip in enumerate(ordered):
        values, mask, nodata = read_chip(chip)
        image = _standardised(values[picks], nodata, chip.terms, card)
        prediction = _predict_classes(model, card, image)
        paths.append(save_plot(Path(out_dir) / f"plot_{i}.png", image, mask, prediction, card.bands, card.classes))
        if report is not None:
            report("writing", done=i + 1, total=len(ordered), unit="plots")
    return paths


def scene_windows(valid: np.ndarray, size: int, count: int) -> list[tuple[int, int]]:
    """Up to ``count`` non-overlapping ``size`` px windows (row, column) spread over the scene, each at least
    half valid: the fullest of a grid, taken evenly in raster order."""
    rows, cols = valid.shape
    grid = [(r, c) for r in range(0, max(1, rows - size + 1), size) for c in range(0, max(1, cols - size + 1), size)]
    full = [(r, c) for r, c in grid if valid[r : r + size, c : c + size].mean() >= 0.5]
    if len(full) <= count:
        return full
    return [full[int(i)] for i in np.linspace(0, len(full) - 1, count).round()]


def plot_scene(
    model: Any,
    card: Any,
    stack: Path,
    count: int,
    out_dir: Path,
    *,
    masks: list[Path] | None = None,
    patch_size: int = 256,
    report: Any = None,
) -> list[Path]:
    """``plot_{i}.png`` for ``count`` windows of ``patch_size`` px of a stacked scene (``imagery/cache.py``):
    image, the masks burnt onto the window (blank without masks), the model's prediction.

    Raises:
        DomainError: the scene holds values of another domain than the model was trained on.
        StackError / LabelError: the scene lacks the model's bands, or the masks do not fit it.
    """
    import rasterio

    from torchbearer.imagery.cache import band_indexes, stack_info
    from torchbearer.ml.domains import check_domain
    from torchbearer.ml.labels import mask_files, scene_target

    info = stack_info(stack, int(card.resolution) or None)
    check_domain(card.value_domain, info.path, card.arch)
    with rasterio.open(info.path) as ds:
        dn = ds.read(band_indexes(info, card.bands))
    nodata = (dn == 0).any(axis=0)
    target = np.full(nodata.shape, IGNORE, np.uint8)
    if masks:
        target = scene_target(info, [m for path in masks for m in mask_files(path)], list(card.classes))
    target[nodata] = IGNORE
    size = min(patch_size, *nodata.shape)
    windows = scene_windows(~nodata, size, count)
    paths = []
    for i, (r, c) in enumerate(windows):
        window = (slice(None), slice(r, r + size), slice(c, c + size))
        image = _standardised(dn[window], nodata[window[1:]], info.reflectance_terms, card)
        prediction = _predict_classes(model, card, image)
        path = Path(out_dir) / f"plot_{i}.png"
        paths.append(save_plot(path, image, target[window[1:]], prediction, card.bands, card.classes))
        if report is not None:
            report("writing", done=i + 1, total=len(windows), unit="plots")
    return paths


# -- learning curves -------------------------------------------------------------------------------------------

#: Curves drawn from a job's metrics: file stem, metric names (prefix match), log scale.
CURVES = (
    ("curves_loss", ("train/loss_epoch", "val/loss"), True),
    ("curves_metrics", ("val/iou", "val/f1", "val/accuracy"), False),
    ("curves_lr", ("lr",), True),
)


def plot_curves(metrics: list[dict[str, Any]], out_dir: Path, title: str = "") -> list[Path]:
    """Learning curves from a job's stored metrics (rows with ``name``, ``value``, ``step``): the losses on a
    log axis (``curves_loss.png``), the validation scores (``curves_metrics.png``), the learning rate
    (``curves_lr.png``); each against the optimizer step. A figure whose metrics the job never logged is not
    drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[float, float]] = {}
    for row in metrics:  # in the order stored: at a step logged twice (a step's loss, then the epoch's), the last
        if row.get("value") is not None and row.get("step") is not None:
            series.setdefault(row["name"], {})[row["step"]] = row["value"]
    paths = []
    for stem, names, log_scale in CURVES:
        drawn = [n for n in names if n in series]
        if not drawn:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name in drawn:
            steps, values = zip(*sorted(series[name].items()), strict=True)
            positive = log_scale and min(values) > 0
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
            if positive:
                ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{title} {stem.removeprefix('curves_')}".strip())
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = Path(out_dir) / f"{stem}.png"
        save_figure(fig, path)
        paths.append(path)
    return paths


def write_plots(model: Any, card: ModelCard, datamodule: PatchDataModule, count: int, run_dir: Path) -> list[Path]:
    """``plot_{i}.png`` for the first ``count`` validation patches, predicted by ``model`` (a network or a
    forest: standardised batch → logits, as ``card`` describes)."""
    import torch

    from torchbearer.ml.tasks import predicted_classes

    paths: list[Path] = []
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        for batch in datamodule.val_dataloader():
            predicted = predicted_classes(model(batch["image"].to(device)), card.task).cpu().numpy()
            for image, mask, prediction in zip(batch["image"].numpy(), batch["mask"].numpy(), predicted, strict=True):
                if len(paths) == count:
                    return paths
                path = run_dir / f"plot_{len(paths)}.png"
                paths.append(save_plot(path, image, mask, prediction, card.bands, card.classes))
    return paths
