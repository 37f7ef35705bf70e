"""The classical baseline: a scikit-learn random forest on single pixels, a member like the networks.

It is trained on pixels of the same normalised training patches a network sees (sampled, balanced between
classes), scored on the same validation patches with the same metrics (``ml/tasks.py``), and saved as
``checkpoints/forest.joblib``: the estimator and the model card. :class:`ForestModel` wraps it as a module
that maps a ``B × bands × H × W`` batch of standardised input to logits, so a prediction, an ensemble and the
plots run it exactly as they run a network (on the CPU, pixel by pixel).

A joblib file is a pickle: load only forests you trained (as with any pickled model).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from torchbearer.ml.checkpoint import CARD_KEY, FOREST_SUFFIX, CheckpointError, ModelCard
from torchbearer.ml.labels import IGNORE

if TYPE_CHECKING:
    from torchbearer.context import JobContext
    from torchbearer.jobs.train import TrainSpec
    from torchbearer.ml.datamodules import PatchDataModule

log = logging.getLogger(__name__)

#: Defaults of ``model: {arch: random-forest}``: trees, deepest split, training pixels (all classes together).
TREES, MAX_DEPTH, PIXELS = 100, 16, 200_000
#: Probabilities are clipped this far from 0 and 1 before they become logits.
EPSILON = 1e-6
#: Layout of the joblib file (raise when its keys change meaning).
FOREST_FORMAT = "torchbearer-forest/1"


class ForestModel(nn.Module):
    """A fitted classifier as a segmentation model: standardised ``B × bands × H × W`` → logits.

    Binary task: one channel, the log-odds of class 1; multiclass: the log-probability of each class (its
    softmax gives the probabilities back). Classes absent from the training pixels get probability 0.
    """

    #: A classical member: it runs as it is (no tracing, no channels-last, no half precision).
    is_classical = True

    def __init__(self, estimator: Any, card: ModelCard) -> None:
        super().__init__()
        self.estimator = estimator
        self.card = card

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Per-class probabilities (N × classes) of ``pixels`` (N × bands)."""
        proba = np.zeros((len(pixels), self.card.num_classes), np.float32)
        if len(pixels):
            proba[:, self.estimator.classes_.astype(int)] = self.estimator.predict_proba(pixels)
        return proba

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pixels = x.detach().float().cpu().permute(0, 2, 3, 1).reshape(-1, c).numpy()
        proba = np.clip(self.probabilities(pixels), EPSILON, 1 - EPSILON)
        binary = self.card.task == "binary"
        logits = np.log(proba[:, 1:2]) - np.log1p(-proba[:, 1:2]) if binary else np.log(proba)
        out = torch.from_numpy(logits.astype(np.float32)).reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return out.contiguous().to(x.device)


# -- files -----------------------------------------------------------------------------------------------------


def save_forest(estimator: Any, card: ModelCard, path: Path) -> Path:
    """Write the estimator and its card (what :func:`load_forest` and ``load_member`` read)."""
    import joblib

    path = Path(path)
    if path.suffix != FOREST_SUFFIX:
        raise ValueError(f"{path}: a forest checkpoint ends in {FOREST_SUFFIX}")
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    joblib.dump({"format": FOREST_FORMAT, CARD_KEY: card.to_dict(), "forest": estimator}, part, compress=3)
    part.replace(path)  # never a half-written checkpoint under the real name
    return path


def load_forest(path: Path) -> tuple[ForestModel, ModelCard]:
    """The forest of a ``.joblib`` checkpoint as a module in eval mode, and its card."""
    import joblib

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = joblib.load(path)
    except Exception as exc:  # joblib raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable forest checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FOREST_FORMAT or "forest" not in data:
        raise CheckpointError(f"{path}: not a torchbearer forest checkpoint (format {FOREST_FORMAT})")
    card = ModelCard.from_dict(data.get(CARD_KEY), str(path))
    return ForestModel(data["forest"], card).eval(), card


# -- training --------------------------------------------------------------------------------------------------


def sample_pixels(
    datamodule: PatchDataModule, num_classes: int, pixels: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labelled pixels (N × bands, float32) and their classes (N) from one epoch of training patches,
    balanced: up to ``pixels / num_classes`` of each class, drawn evenly over the batches."""
    rng = np.random.default_rng(seed)
    per_class = max(1, pixels // num_classes)
    batches = max(1, math.ceil(datamodule.train_samples / datamodule.batch_size))
    quota = 2 * math.ceil(per_class / batches)  # twice the even share: rare classes miss some batches
    xs: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    for batch in datamodule.train_dataloader():
        image = batch["image"].numpy()
        flat = image.transpose(0, 2, 3, 1).reshape(-1, image.shape[1])
        target = batch["mask"].numpy().ravel()
        for k in range(num_classes):
            where = np.flatnonzero(target == k)
            if where.size:
                xs[k].append(flat[rng.choice(where, min(quota, where.size), replace=False)])
    features, labels = [], []
    for k, parts in enumerate(xs):
        if not parts:
            continue
        data = np.concatenate(parts)
        if len(data) > per_class:
            data = data[rng.choice(len(data), per_class, replace=False)]
        features.append(data)
        labels.append(np.full(len(data), k, np.uint8))
    return np.concatenate(features), np.concatenate(labels)


def fit_forest(x: np.ndarray, y: np.ndarray, *, trees: int, max_depth: int, seed: int) -> Any:
    """A ``RandomForestClassifier`` fitted on pixels; class weights even out what sampling could not."""
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(
        n_estimators=trees,
        max_depth=max_depth,
        class_weight="balanced_subsample",
        n_jobs=min(8, os.cpu_count() or 1),
        random_state=seed,
    )
    return forest.fit(x, y)


@torch.inference_mode()
def evaluate(model: ForestModel, loader: Any, stage: str, loss: nn.Module) -> dict[str, float]:
    """The metrics the networks log (``ml/tasks.py``) over a loader's patches, with the same loss."""
    from torchbearer.ml.tasks import make_metrics, metric_values, predicted_classes

    metrics = make_metrics(model.card.num_classes, IGNORE)
    losses, weights = [], []
    for batch in loader:
        logits = model(batch["image"])
        target = batch["mask"].long()
        losses.append(float(loss(logits, target)))
        weights.append(len(logits))
        predicted = predicted_classes(logits, model.card.task)
        for metric in metrics.values():
            metric.update(predicted, target)
    values = {k: float(v) for k, v in metric_values(stage, metrics, model.card).items()}
    values[f"{stage}/loss"] = float(np.average(losses, weights=weights)) if losses else float("nan")
    return values


def train_forest_job(spec: TrainSpec, ctx: JobContext, datamodule: PatchDataModule, card: ModelCard) -> None:
    """The ``train`` kind for ``arch: random-forest``: sample, fit, score, save, plot; products as a network's."""
    from torchbearer.ml.plots import write_plots
    from torchbearer.ml.tasks import make_loss

    options = spec.model
    checkpoint = ctx.run_dir / "checkpoints" / f"forest{FOREST_SUFFIX}"
    ctx.progress("preparing data", force=True, step="sampling pixels")
    x, y = sample_pixels(datamodule, card.num_classes, options.pixels or PIXELS, spec.train.seed)
    counts = np.bincount(y, minlength=card.num_classes).tolist()
    log.info("random forest: %d training pixels, per class %s", len(y), counts)
    ctx.check_stop()
    ctx.progress("training", force=True, pixels=len(y))
    forest = fit_forest(x, y, trees=options.trees or TREES, max_depth=options.max_depth or MAX_DEPTH,
                        seed=spec.train.seed)  # fmt: skip
    model = ForestModel(forest, card)
    save_forest(forest, card, checkpoint)
    ctx.check_stop()

    ctx.progress("validating", force=True)
    loss = make_loss(spec.loss_name, spec.task, spec.ignore_index, spec.class_weights)
    values = evaluate(model, datamodule.val_dataloader(), "val", loss)
    if datamodule.split is not None and len(datamodule.split.test):
        values.update(evaluate(model, datamodule.test_dataloader(), "test", loss))
    values["train/pixels"] = float(len(y))
    ctx.metrics(values, step=0, epoch=0)
    logs = ctx.run_dir / "logs" / "csv" / f"attempt-{ctx.attempt}"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "metrics.csv", "w", newline="") as handle:  # the columns CSVLogger writes for a network
        writer = csv.DictWriter(handle, fieldnames=["epoch", "step", *sorted(values)])
        writer.writeheader()
        writer.writerow({"epoch": 0, "step": 0, **values})
    ctx.output(checkpoint, "checkpoint")
    ctx.output(checkpoint, "best_checkpoint")
    ctx.output(ctx.run_dir / "logs", "log")
    if spec.train.plots:
        ctx.progress("writing", force=True)
        for path in write_plots(model, card, datamodule, spec.train.plots, ctx.run_dir):
            ctx.output(path, "plot")
    log.info("random forest: val/iou %.4f, saved to %s", values.get("val/iou", float("nan")), checkpoint)
