"""The ``classify`` kind: an image classifier trained on a folder of patches (EuroSAT / BigEarthNet style).

```yaml
name: scl-classifier
kind: classify
data: {root: data/patches/t29unu-scl, val_fraction: 0.2, test_fraction: 0.2}   # layout: folders | bigearthnet
model: {backbone: resnet18, weights: null}       # any timm model; weights: null | imagenet | a weights file
train:
  epochs: 12
  head_epochs: 2          # phase 1: backbone frozen, head trained at head_lr
  head_lr: 1.0e-3
  lr: 3.0e-4              # phase 2: the last `unfreeze` blocks (or all) at lr, under `scheduler`
  unfreeze: all
  batchnorm: trainable
  class_weights: auto
  augment: {flips: true, rot90: true, brightness: 0.1, contrast: 0.1}
```
Every nested field can be overridden on its own (``train.lr``, ``model.backbone``), e.g. by a sweep. The run
folder gets ``checkpoints/best.ckpt``, ``checkpoints/last.ckpt`` (and ``epoch-NNN.ckpt`` every
``checkpoint_every`` epochs), TensorBoard and CSV logs under ``logs/``, and, from the best checkpoint on the test
split (the validation split when there is no test split): ``report.json``, ``report.md``,
``confusion_matrix.png`` and ``roc.png`` (``pr.png`` for multi-label). Resumes from ``last.ckpt`` like ``train``.
Heavy imports happen inside :func:`run`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from torchbearer.jobs import JobKind, register
from torchbearer.spec import JobSpec, StrictModel

if TYPE_CHECKING:
    from torchbearer.context import JobContext
    from torchbearer.ml.patches import PatchSet

log = logging.getLogger(__name__)

#: Aggregate ``val/`` metrics logged per epoch, by task (per class too: ``val/{precision,recall,f1}/<class>``).
#: The same names as :data:`torchbearer.ml.classification.MULTICLASS_METRICS` (kept here free of torch).
METRICS = {
    "multiclass": ("val/loss", "val/accuracy", "val/f1_macro"),
    "multilabel": ("val/loss", "val/accuracy", "val/f1_macro", "val/f1_micro", "val/map"),
}
PER_CLASS_METRICS = ("precision", "recall", "f1")


class PatchDataSpec(StrictModel):
    """Where the patches are and how to split them."""

    root: str = Field(description="folder of patches: <class>/<patch>, train|valid|test/<class>/…, or BigEarthNet")
    layout: Literal["folders", "bigearthnet"] = Field(
        "folders", description="folders: single-label; bigearthnet: multi"
    )
    bands: list[str] | None = Field(None, description="band names to use, in this order (default: all)")
    classes: list[str] | None = Field(None, description="class names in label order (default: found, sorted)")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="share for validation, without split folders")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="share for the test, without split folders")

    @model_validator(mode="after")
    def _fractions(self) -> PatchDataSpec:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave patches to train on")
        return self


class ClassifierSpec(StrictModel):
    """Which network."""

    backbone: str = Field("resnet18", description="a timm model: resnet18, resnet50, mobilenetv2_100, "
                          "legacy_xception, efficientnet_b0 …")  # fmt: skip
    weights: str | None = Field(None, description="null (random), imagenet, or a weights file (.pth / .ckpt)")
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier")


class AugmentSpec(StrictModel):
    """Training augmentation (kornia, any band count)."""

    flips: bool = True
    rot90: bool = Field(True, description="random 90° rotations")
    brightness: float = Field(0.0, ge=0, le=1, description="± shift of the standardised values")
    contrast: float = Field(0.0, ge=0, le=1, description="± relative scale")
    resized_crop: tuple[float, float] | None = Field(None, description="crop area range, e.g. [0.6, 1.0]")

    @field_validator("resized_crop")
    @classmethod
    def _crop(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1] <= 1:
            raise ValueError("resized_crop is [smallest, largest] area fraction with 0 < smallest ≤ largest ≤ 1")
        return value


class StoppingSpec(StrictModel):
    """Stop when ``monitor`` has not improved for ``patience`` validation epochs."""

    monitor: str = Field("val/f1_macro", pattern=r"^val/", description="a logged val/ metric")
    patience: int = Field(5, ge=1, le=1000, description="epochs without improvement")
    mode: Literal["max", "min"] | None = Field(None, description="default: min for a loss, max otherwise")

    @property
    def direction(self) -> Literal["max", "min"]:
        return self.mode or ("min" if self.monitor.endswith("loss") else "max")


class ClassifyTrainOptions(StrictModel):
    """How to train: two phases, loss, schedule, checkpoints."""

    epochs: int = Field(20, ge=1, le=100_000, description="both phases together")
    batch_size: int = Field(32, ge=1, le=4096)
    head_epochs: int = Field(0, ge=0, description="phase 1: epochs with the backbone frozen")
    head_lr: float = Field(1e-3, gt=0, le=10, description="phase 1 learning rate")
    lr: float = Field(1e-4, gt=0, le=10, description="phase 2 learning rate")
    unfreeze: int | Literal["all"] = Field("all", description="phase 2: all blocks or the last K")
    batchnorm: Literal["trainable", "frozen"] = Field("trainable", description="batch norm in phase 2")
    weight_decay: float = Field(1e-4, ge=0, le=1)
    loss: Literal["ce", "bce"] | None = Field(None, description="default: ce single-label, bce multi-label")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    class_weights: list[float] | Literal["auto"] | None = Field(None, description="per class, or auto")
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    scheduler: Literal["cosine", "exponential", "step", "plateau", "none"] = "cosine"
    gamma: float = Field(0.5, gt=0, le=1, description="exponential / step / plateau factor")
    step_size: int = Field(5, ge=1, description="step: epochs between reductions")
    plateau_patience: int = Field(2, ge=0, description="plateau: flat epochs before a reduction")
    early_stopping: StoppingSpec | None = Field(default_factory=StoppingSpec)
    checkpoint_every: int | None = Field(None, ge=1, description="also keep epoch-NNN.ckpt every N epochs")
    log_images: int = Field(0, ge=0, le=32, description="validation patches logged to TensorBoard each epoch")
    num_workers: int | Literal["auto"] = Field("auto", description="DataLoader workers; auto: 0 on CPU")
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = Field("auto", description="auto: mixed on GPU")
    seed: int = Field(0, ge=0)

    @field_validator("unfreeze")
    @classmethod
    def _unfreeze(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("unfreeze is all or a number of blocks ≥ 1")
        return value

    @model_validator(mode="after")
    def _phases(self) -> ClassifyTrainOptions:
        if self.head_epochs >= self.epochs:
            raise ValueError(f"head_epochs ({self.head_epochs}) must be fewer than epochs ({self.epochs})")
        return self


class ClassifySpec(JobSpec):
    """A patch classification job."""

    kind: Literal["classify"] = "classify"
    path_fields = ("data.root", "model.weights")
    data: PatchDataSpec
    model: ClassifierSpec = Field(default_factory=ClassifierSpec)
    train: ClassifyTrainOptions = Field(default_factory=ClassifyTrainOptions)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _consistent(self) -> ClassifySpec:
        if self.train.loss is not None and self.train.loss != self.loss_name_default:
            raise ValueError(f"loss {self.train.loss} does not fit a {self.task} task: use {self.loss_name_default}")
        if self.train.label_smoothing and self.train.loss == "bce" and self.task == "multiclass":
            raise ValueError("label smoothing with bce needs a multi-label task")
        if isinstance(self.train.class_weights, list):
            if any(w <= 0 for w in self.train.class_weights):
                raise ValueError("class_weights must be positive")
            if self.data.classes and len(self.train.class_weights) != len(self.data.classes):
                raise ValueError(f"class_weights has {len(self.train.class_weights)} values for "
                                 f"{len(self.data.classes)} classes")  # fmt: skip
        stopping = self.train.early_stopping
        if stopping is not None and stopping.monitor not in self.logged_metrics() and not self._per_class(stopping):
            raise ValueError(f"early_stopping monitor {stopping.monitor}: a {self.task} job logs "
                             f"{', '.join(self.logged_metrics())}")  # fmt: skip
        return self

    def _per_class(self, stopping: StoppingSpec) -> bool:
        parts = stopping.monitor.split("/")
        return len(parts) == 3 and parts[1] in PER_CLASS_METRICS and not self.data.classes

    @property
    def task(self) -> Literal["multiclass", "multilabel"]:
        return "multilabel" if self.data.layout == "bigearthnet" else "multiclass"

    @property
    def loss_name_default(self) -> str:
        return "bce" if self.task == "multilabel" else "ce"

    def logged_metrics(self) -> list[str]:
        """Every ``val/…`` metric this job logs each epoch (what a sweep or early stopping may optimise).

        Per-class names (``val/f1/<class>`` …) are listed when ``data.classes`` names the classes.
        """
        names = list(METRICS[self.task])
        for name in self.data.classes or []:
            names += [f"val/{metric}/{name}" for metric in PER_CLASS_METRICS]
        return names


# -- running ---------------------------------------------------------------------------------------------------


def auto_class_weights(patch_set: PatchSet, train: Any) -> list[float]:
    """``auto`` class weights from the training split's class frequencies: single-label ``N / (C × n_c)``
    (scikit-learn's "balanced"), multi-label the BCE positive weight ``negatives / positives`` per class."""
    import numpy as np

    counts = patch_set.class_counts(train).astype(float)
    if (counts == 0).any():
        empty = [patch_set.classes[i] for i in np.flatnonzero(counts == 0)]
        raise ValueError(f"class_weights auto: classes {empty} have no training patches")
    if patch_set.multilabel:
        return ((len(train) - counts) / counts).clip(min=1e-3).round(6).tolist()
    return (len(train) / (len(counts) * counts)).round(6).tolist()


def patch_resolution(patch_set: PatchSet) -> float:
    """Pixel size of the patches in metres (0 when they carry no georeferencing, e.g. PNG)."""
    import rasterio

    first = patch_set.root / patch_set.paths[0]
    if first.is_dir():  # BigEarthNet: the grid of the finest band
        return 10.0 if any(b in patch_set.bands for b in ("B02", "B03", "B04", "B08")) else 20.0
    with rasterio.open(first) as src:
        return float(abs(src.transform.a)) if src.crs is not None else 0.0


def split_patches(spec: ClassifySpec, ctx: JobContext) -> tuple[PatchSet, dict[str, Any]]:
    """Scan the patches (or reuse their cache) and split them: the patch set and the indexes of its train,
    val and test patches. ``explain`` takes a classify job's validation patches from here too."""
    from torchbearer.ml.patches import PatchDataError, load_patch_set

    data = spec.data
    patch_set = load_patch_set(ctx.resolve(data.root), ctx.settings.data_dir / "cache", layout=data.layout,
                               bands=data.bands, classes=data.classes, report=ctx.progress)  # fmt: skip
    split = patch_set.split(data.val_fraction, data.test_fraction, spec.train.seed)
    if len(split["val"]) == 0:
        raise PatchDataError(f"{patch_set.root}: no validation patches (val_fraction 0 and no valid/ folder)")
    return patch_set, split


def prepare(spec: ClassifySpec, ctx: JobContext) -> tuple[PatchSet, dict[str, Any], list[float] | None]:
    """Scan the patches (or reuse their cache), split them, check the backbone: every bad input fails here,
    before training. Returns the patch set, its split and the class weights."""
    from torchbearer.ml.classifiers import check_backbone

    patch_set, split = split_patches(spec, ctx)
    check_backbone(spec.model.backbone)
    weights = spec.train.class_weights
    if weights == "auto":
        weights = auto_class_weights(patch_set, split["train"])
        log.info("class weights (auto, from the training split): %s",
                 dict(zip(patch_set.classes, weights, strict=True)))  # fmt: skip
    elif weights is not None and len(weights) != len(patch_set.classes):
        raise ValueError(f"class_weights has {len(weights)} values for {len(patch_set.classes)} classes")
    return patch_set, split, weights


def run(spec: ClassifySpec, ctx: JobContext) -> None:
    """Prepare the data, train in two phases (resuming from ``last.ckpt``), report on the held-out split."""
    ctx.progress("preparing data", force=True)
    patch_set, split, class_weights = prepare(spec, ctx)
    ctx.check_stop()

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from torchbearer.jobs.train import _num_workers, _precision, fit_resumable
    from torchbearer.ml.callbacks import AtomicCheckpointIO, LastCheckpoint, ProgressReporter
    from torchbearer.ml.checkpoint import ModelCard
    from torchbearer.ml.classification import ClassificationTask, PatchDataModule, PhaseOptions, TwoPhaseFinetuning
    from torchbearer.ml.classify_report import predict_batches, write_report

    options = spec.train
    cuda = spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available())
    L.seed_everything(options.seed, workers=True, verbose=False)
    mean, std = patch_set.band_stats(split["train"])
    card = ModelCard(
        arch="classifier", backbone=spec.model.backbone, in_channels=len(patch_set.bands),
        num_classes=len(patch_set.classes), classes=patch_set.classes, task=spec.task, bands=patch_set.bands,
        resolution=patch_resolution(patch_set), norm={"mean": mean, "std": std},
        extra={"patch_size": int(patch_set.images.shape[-1]), "units": "as stored in the patches"},
    )  # fmt: skip
    checkpoints = ctx.run_dir / "checkpoints"
    last = checkpoints / "last.ckpt"
    resume = last if last.is_file() else None
    if resume is not None:
        log.info("resuming from %s", resume)
    weights = spec.model.weights
    if weights not in (None, "imagenet"):
        weights = str(ctx.resolve(weights))
    phases = PhaseOptions(options.head_epochs, options.head_lr, options.unfreeze, options.batchnorm)
    augment = options.augment.model_dump()
    task = ClassificationTask(
        card.to_dict(),
        weights=None if resume else weights,  # a resumed run takes every weight from last.ckpt
        class_weights=class_weights, label_smoothing=options.label_smoothing, lr=options.lr,
        weight_decay=options.weight_decay, phases=phases.__dict__, max_epochs=options.epochs,
        schedule={"name": options.scheduler, "gamma": options.gamma, "step_size": options.step_size,
                  "patience": options.plateau_patience},
        augment=augment, drop_rate=spec.model.drop_rate,
    )  # fmt: skip
    datamodule = PatchDataModule(patch_set, split, options.batch_size, _num_workers(spec, cuda), options.seed)

    stopping = options.early_stopping
    monitor, mode = (stopping.monitor, stopping.direction) if stopping else ("val/f1_macro", "max")
    # Saved when validation ends, before the epoch-end hooks where a stop request is honoured; last.ckpt is
    # LastCheckpoint's (as in the train kind), written after it at every epoch's end whatever the metric did.
    best = ModelCheckpoint(dirpath=checkpoints, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                           auto_insert_metric_name=False, save_on_train_epoch_end=False,
                           enable_version_counter=False)  # fmt: skip
    callbacks: list[Any] = [
        best,
        TwoPhaseFinetuning(phases, options.lr, sets_lr=options.scheduler in ("plateau", "none")),
        LearningRateMonitor(logging_interval="epoch"),
        ProgressReporter(ctx.progress, ctx.metrics, resumed=ctx.resumed),
        LastCheckpoint(last, lambda: ctx.should_stop),
    ]
    if options.checkpoint_every:
        callbacks.append(ModelCheckpoint(dirpath=checkpoints, filename="epoch-{epoch:03d}", save_top_k=-1,
                                         every_n_epochs=options.checkpoint_every, auto_insert_metric_name=False,
                                         save_on_train_epoch_end=False))  # fmt: skip
    if stopping is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=stopping.patience))
    if options.log_images:
        from torchbearer.ml.classification import SampleClassifications

        callbacks.append(SampleClassifications(options.log_images))
    logs, version = ctx.run_dir / "logs", f"attempt-{ctx.attempt}"
    trainer = L.Trainer(
        max_epochs=options.epochs, accelerator="gpu" if cuda else "cpu", devices=1,
        precision=_precision(spec, cuda),
        logger=[TensorBoardLogger(logs, name="tensorboard", version=version),
                CSVLogger(logs, name="csv", version=version)],
        callbacks=callbacks, plugins=[AtomicCheckpointIO()], default_root_dir=ctx.run_dir, enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, len(split["train"]) // options.batch_size)),
    )  # fmt: skip
    fit_resumable(trainer, task, datamodule, resume, last, ctx)

    best_path = Path(best.best_model_path) if best.best_model_path else last
    ctx.output(last, "checkpoint")
    for path in sorted(checkpoints.glob("epoch-*.ckpt")):
        ctx.output(path, "checkpoint")
    ctx.output(best_path, "best_checkpoint")
    ctx.output(logs, "log")

    ctx.progress("validating", force=True)
    held_out = "test" if len(split["test"]) else "val"
    task.load_state_dict(torch.load(best_path, map_location=task.device, weights_only=True)["state_dict"])
    loader = datamodule.test_dataloader() if held_out == "test" else datamodule.val_dataloader()
    probabilities, labels = predict_batches(task, loader)
    ctx.progress("writing", force=True)
    extra = {"checkpoint": str(best_path), "class_weights": class_weights, "monitor": monitor,
             "best_score": float(best.best_model_score) if best.best_model_score is not None else None}  # fmt: skip
    paths = write_report(ctx.run_dir, probabilities, labels, patch_set.classes, patch_set.multilabel,
                         split=held_out, extra=extra)  # fmt: skip
    report = json.loads(paths["report"].read_text())
    figures = {f"{held_out}/{k}": report[k] for k in ("accuracy", "f1_macro", "f1_micro", "map")
               if isinstance(report.get(k), float)}  # fmt: skip
    ctx.metrics(figures, step=trainer.global_step)
    ctx.output(paths["report"], "report")
    ctx.output(paths["report_md"], "report")
    ctx.output(paths["confusion"], "plot")
    if "curves" in paths:
        ctx.output(paths["curves"], "plot")
    log.info("best %s = %s at %s; %s", monitor, best.best_model_score, best_path, figures)


#: What a classify job logs, for a sweep's ``metric`` (per task: :meth:`ClassifySpec.logged_metrics`).
CLASSIFY_METRICS = (
    "train/loss_step",
    "train/loss_epoch",
    *dict.fromkeys(METRICS["multiclass"] + METRICS["multilabel"]),
    *(f"val/{metric}/*" for metric in PER_CLASS_METRICS),
)

register(JobKind("classify", ClassifySpec, run, "train a patch classifier (EuroSAT / BigEarthNet style folders)",
                 metrics=CLASSIFY_METRICS))  # fmt: skip
