"""Predicting with patch classifiers (checkpoints whose card has ``arch: classifier``).

- Over a folder of patches → a CSV: ``path, predicted, <one probability column per class>``.
- Over a scene → a georeferenced class-probability GeoTIFF at patch resolution: patches of the training size
  slide over the scene with a stride (pixels); output pixel ``(i, j)`` is the patch whose upper-left corner is
  scene pixel ``(i × stride, j × stride)``, placed so its centre is the patch's centre (transform = the scene's,
  shifted by ``(patch - stride) / 2`` pixels and scaled by the stride), in the scene's CRS. One float32 band
  per class (probability) plus a last band ``class`` (the arg-max class index); NaN where a patch holds no-data.

Several checkpoints are averaged (with their weights); they must share classes and bands.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchbearer.ml.checkpoint import CheckpointError, ModelCard, read_checkpoint, state_dict_of

log = logging.getLogger(__name__)

#: The ``arch`` of a classification model card.
CLASSIFIER_ARCH = "classifier"


@dataclass
class Classifier:
    """A loaded classifier: network (eval mode), card, and its weight in the average."""

    model: nn.Module
    card: ModelCard
    source: str
    weight: float = 1.0


def load_classifier(path: Path, device: str | torch.device = "cpu", weight: float = 1.0) -> Classifier:
    """The network of a classification checkpoint, on ``device`` in eval mode, with its card."""
    from torchbearer.ml.classifiers import build_classifier

    checkpoint = read_checkpoint(Path(path))
    card = ModelCard.from_dict(checkpoint.get("torchbearer"), str(path))
    if card.arch != CLASSIFIER_ARCH:
        raise CheckpointError(f"{path}: a {card.arch} segmentation checkpoint, not a classifier")
    model = build_classifier(str(card.backbone), card.in_channels, card.num_classes)
    try:
        model.load_state_dict(state_dict_of(checkpoint, Path(path)))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {card.backbone}: {exc}"[:2000]) from exc
    return Classifier(model.to(device).eval(), card, str(path), weight)


def check_compatible(classifiers: list[Classifier]) -> None:
    """Classifiers averaged together must name the same classes, bands, task and patch size."""
    first = classifiers[0].card
    for other in classifiers[1:]:
        card = other.card
        for what in ("classes", "bands", "task"):
            if getattr(card, what) != getattr(first, what):
                raise CheckpointError(f"{other.source}: {what} {getattr(card, what)} differ from "
                                      f"{classifiers[0].source}'s {getattr(first, what)}")  # fmt: skip
        if card.extra.get("patch_size") != first.extra.get("patch_size"):
            raise CheckpointError(f"{other.source}: trained on another patch size than {classifiers[0].source}")


@torch.inference_mode()
def class_probabilities(classifiers: list[Classifier], values: np.ndarray) -> np.ndarray:
    """Weighted mean class probabilities (N × classes, float32) of patches (N × bands × H × W, patch units)."""
    card = classifiers[0].card
    total = sum(c.weight for c in classifiers)
    device = next(classifiers[0].model.parameters()).device
    mean = torch.tensor(card.norm["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(card.norm["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    x = (torch.from_numpy(values.astype(np.float32)).to(device) - mean) / std
    out = torch.zeros(len(values), card.num_classes, device=device)
    for c in classifiers:
        logits = c.model(x).float()
        probs = torch.sigmoid(logits) if card.task == "multilabel" else torch.softmax(logits, dim=1)
        out += probs * (c.weight / total)
    return out.cpu().numpy()


def predict_patch_folder(
    classifiers: list[Classifier], folder: Path, output: Path, *, batch_size: int = 64,
    report: Callable[..., Any] | None = None,
) -> int:  # fmt: skip
    """Classify every patch file under ``folder`` (recursively) into the CSV ``output``; returns the count."""
    from torchbearer.ml.patches import IMAGE_SUFFIXES, PatchDataError, read_patch

    card = classifiers[0].card
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PatchDataError(f"patch folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    output.parent.mkdir(parents=True, exist_ok=True)
    part = output.with_name(output.name + ".part")
    with part.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "predicted", *card.classes])
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            values = np.stack([_patch_bands(path, read_patch(path), card) for path in chunk])
            probs = class_probabilities(classifiers, values)
            for path, row in zip(chunk, probs, strict=True):
                predicted = ";".join(card.classes[i] for i in np.flatnonzero(row >= 0.5)) if card.task == "multilabel" \
                    else card.classes[int(row.argmax())]  # fmt: skip
                writer.writerow([str(path.relative_to(folder)), predicted, *(f"{p:.6f}" for p in row)])
            if report is not None:
                report("predicting", done=min(start + batch_size, len(files)), total=len(files), unit="patches")
    part.replace(output)
    return len(files)


def _patch_bands(path: Path, read: tuple[np.ndarray, list[str]], card: ModelCard) -> np.ndarray:
    from torchbearer.ml.patches import PatchDataError

    data, names = read
    missing = [b for b in card.bands if b not in names]
    if missing:
        raise PatchDataError(f"patch {path} lacks bands {missing} the classifier was trained on ({names})")
    size = card.extra.get("patch_size")
    if size is not None and data.shape[1:] != (size, size):
        raise PatchDataError(f"patch {path} is {data.shape[1]}×{data.shape[2]}; the classifier takes {size}×{size}")
    return data[[names.index(b) for b in card.bands]]


def scene_grid(transform: Any, height: int, width: int, patch: int, stride: int) -> tuple[Any, int, int]:
    """The output grid of a scene swept by ``patch``-pixel patches every ``stride`` pixels: its transform
    (the scene's, shifted to the first patch's centre cell and scaled by ``stride``), rows and columns."""
    from rasterio.transform import Affine

    if height < patch or width < patch:
        raise ValueError(f"scene of {width}×{height} pixels is smaller than one {patch}-pixel patch")
    shift = (patch - stride) / 2
    grid = transform @ Affine.translation(shift, shift) @ Affine.scale(stride)
    return grid, (height - patch) // stride + 1, (width - patch) // stride + 1


def predict_scene_patches(
    classifiers: list[Classifier], stack: Path, output: Path, *, stride: int | None = None, batch_size: int = 256,
    report: Callable[..., Any] | None = None, should_stop: Callable[[], bool] = lambda: False,
) -> Path:  # fmt: skip
    """Write the class-probability GeoTIFF of a stacked scene (see the module docstring); returns ``output``."""
    import rasterio
    from rasterio.windows import Window

    from torchbearer.context import JobInterrupted
    from torchbearer.imagery.cache import band_indexes, stack_info

    card = classifiers[0].card
    patch = int(card.extra.get("patch_size") or 0)
    if patch <= 0:
        raise CheckpointError(f"{classifiers[0].source}: the card does not say the patch size")
    stride = stride or patch
    info = stack_info(stack)
    if card.resolution and abs(info.resolution - card.resolution) > 1e-6:
        raise ValueError(f"scene {stack} is at {info.resolution:g} m; the classifier was trained at "
                         f"{card.resolution:g} m")  # fmt: skip
    indexes = band_indexes(info, card.bands)
    transform, rows, cols = scene_grid(info.transform, info.height, info.width, patch, stride)
    out = np.full((card.num_classes + 1, rows, cols), np.nan, dtype=np.float32)
    with rasterio.open(stack) as src:
        for row in range(rows):
            if should_stop():
                raise JobInterrupted(f"prediction stopped at row {row} of {rows}; it starts over")
            strip = src.read(indexes, window=Window(0, row * stride, info.width, patch))
            starts = np.arange(cols) * stride
            patches = np.stack([strip[:, :, c : c + patch] for c in starts])
            valid = (patches != 0).all(axis=(1, 2, 3))  # DN 0 in any band is no data
            chosen = np.flatnonzero(valid)
            for start in range(0, len(chosen), batch_size):
                picked = chosen[start : start + batch_size]
                probs = class_probabilities(classifiers, patches[picked])
                out[:-1, row, picked] = probs.T
                out[-1, row, picked] = probs.argmax(axis=1)
            if report is not None:
                report("predicting", done=row + 1, total=rows, unit="rows")
    output.parent.mkdir(parents=True, exist_ok=True)
    part = output.with_name(output.name + ".part.tif")
    profile = {"driver": "GTiff", "width": cols, "height": rows, "count": len(out), "dtype": "float32",
               "crs": info.crs, "transform": transform, "nodata": np.nan, "compress": "deflate"}  # fmt: skip
    with rasterio.open(part, "w", **profile) as dst:
        dst.write(out)
        dst.descriptions = (*card.classes, "class")
        dst.update_tags(CLASSES=",".join(card.classes), PATCH_SIZE=patch, STRIDE=stride,
                        CHECKPOINTS=",".join(c.source for c in classifiers), SCENE=str(stack))  # fmt: skip
    part.replace(output)
    return output
