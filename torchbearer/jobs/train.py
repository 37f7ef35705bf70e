"""The ``train`` kind: a segmentation model trained on Sentinel-2 scenes and georeferenced masks.

```yaml
name: fcn
kind: train
scenes: [data/S2A_MSIL2A_…_T29UNU_….SAFE]   # SAFE folders or GeoTIFFs (globs allowed); or an imagery: block
resolution: 60                              # with scenes: 20 (10 bands) or 60 (11 bands)
masks: masks/t29unu_cloud.tif               # GeoTIFF (any CRS), vector labels, or a folder of them
classes: [clear, cloud]
model: {arch: fcn}                          # fcn | farseg (backbone resnet18…101) | unet (any smp encoder)
                                            # | random-forest (scikit-learn, on sampled pixels)
train: {epochs: 20, batch_size: 16, patch_size: 64, lr: 1.0e-3, early_stopping: {monitor: val/iou, patience: 5}}
```
Instead of ``scenes`` + ``masks``, ``dataset:`` names a chip folder (``train_frames/ train_masks/ val_frames/
val_masks/``, see ``ml/chips.py``): chips of any band count and size, random-cropped (``train.chip_fit: crop``)
or resized (``resize``) to the patch size. A ``random-forest`` model is trained on pixels of the same training
patches (``ml/forest.py``) and saved as ``checkpoints/forest.joblib`` with the same model card.
The run folder gets ``checkpoints/best.ckpt`` and ``checkpoints/last.ckpt`` (each with the model card),
TensorBoard and CSV logs under ``logs/``, and ``plot_{i}.png``. ``last.ckpt`` is rewritten atomically at the end
of every epoch; a job stopped by SIGTERM saves it after its current step; its next attempt (or one after a
``kill -9``) resumes from ``last.ckpt``. Heavy imports happen inside :func:`run`: reading job files stays light.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from torchbearer.imagery.spec import ImagerySpec
from torchbearer.jobs import JobKind, register
from torchbearer.ml.names import ARCHITECTURES, FARSEG_BACKBONES, LOSSES, VAL_METRICS
from torchbearer.spec import JobSpec, StrictModel

if TYPE_CHECKING:
    from torchbearer.context import JobContext
    from torchbearer.ml.checkpoint import ModelCard
    from torchbearer.ml.chips import ChipSet
    from torchbearer.ml.datamodules import PatchDataModule, SegmentationDataModule
    from torchbearer.ml.scenes import TrainingScene

log = logging.getLogger(__name__)


class ModelSpec(StrictModel):
    """Which model: ``arch``, its ``backbone`` (default per arch), initial ``weights``; a random forest's options."""

    arch: Literal["fcn", "farseg", "unet", "random-forest"] = "fcn"
    backbone: str | None = Field(None, description="farseg: resnet18/34/50/101; unet: an smp encoder; fcn: none")
    weights: str | None = Field(None, description="null (random), imagenet, or a checkpoint path")
    trees: int | None = Field(None, ge=1, le=5000, description="random-forest: trees (default 100)")
    max_depth: int | None = Field(None, ge=1, le=200, description="random-forest: deepest split (default 16)")
    pixels: int | None = Field(
        None, ge=100, le=50_000_000, description="random-forest: training pixels sampled, balanced (default 200 000)"
    )

    @model_validator(mode="after")
    def _backbone(self) -> ModelSpec:
        forest_options = [k for k in ("trees", "max_depth", "pixels") if getattr(self, k) is not None]
        if self.arch != "random-forest" and forest_options:
            raise ValueError(f"{', '.join(forest_options)}: options of arch random-forest, not {self.arch}")
        if self.arch == "random-forest" and (self.backbone is not None or self.weights is not None):
            raise ValueError("random-forest has no backbone or weights: leave them out")
        if self.arch == "fcn" and self.backbone is not None:
            raise ValueError("fcn has no backbone: leave backbone out")
        if self.arch == "farseg" and self.backbone not in (None, *FARSEG_BACKBONES):
            raise ValueError(f"farseg backbone must be one of {', '.join(FARSEG_BACKBONES)}")
        if self.arch == "fcn" and self.weights == "imagenet":
            raise ValueError("fcn has no ImageNet weights: use null or a checkpoint path")
        return self


class EarlyStoppingSpec(StrictModel):
    """Stop when ``monitor`` has not improved for ``patience`` validation epochs."""

    monitor: str = "val/iou"
    patience: int = Field(5, ge=1, le=1000, description="epochs without improvement")
    mode: Literal["max", "min"] | None = Field(None, description="default: min for a loss, max otherwise")

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, value: str) -> str:
        if value not in VAL_METRICS and not value.startswith(("val/iou/", "val/f1/")):
            raise ValueError(f"monitor {value!r}: use one of {', '.join(VAL_METRICS)} or val/iou/<class>")
        return value

    @property
    def direction(self) -> Literal["max", "min"]:
        return self.mode or ("min" if self.monitor.endswith("loss") else "max")


class SplitSpec(StrictModel):
    """Spatial split: square blocks of the labelled area dealt to train / validation / test, or validation
    (and test) regions given as vector files, training outside them."""

    block_size: int | None = Field(None, ge=32, description="pixels; default twice the patch size")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of labelled blocks for validation")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="share of labelled blocks for the test")
    val_regions: str | None = Field(None, description="vector file (any CRS): validation inside its polygons")
    test_regions: str | None = Field(None, description="vector file: test inside its polygons (with val_regions)")

    @model_validator(mode="after")
    def _regions(self) -> SplitSpec:
        if self.test_regions is not None and self.val_regions is None:
            raise ValueError("test_regions needs val_regions")
        if self.val_regions is not None and (self.block_size is not None or self.test_fraction > 0):
            raise ValueError("give either regions or blocks (block_size, test_fraction), not both")
        return self


class TrainOptions(StrictModel):
    """How to train."""

    epochs: int = Field(20, ge=1, le=100_000)
    batch_size: int = Field(16, ge=1, le=4096)
    patch_size: int = Field(256, ge=32, le=4096, description="pixels, a multiple of 32")
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    early_stopping: EarlyStoppingSpec | None = Field(default_factory=EarlyStoppingSpec)
    samples_per_epoch: int | None = Field(None, ge=1, description="training patches an epoch (default: area)")
    split: SplitSpec = Field(default_factory=SplitSpec)
    augment: bool = Field(True, description="random flips and 90° rotations")
    num_workers: int | Literal["auto"] = Field("auto", description="DataLoader workers; auto: 0 on CPU")
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = Field("auto", description="auto: mixed on GPU")
    seed: int = Field(0, ge=0)
    plots: int = Field(4, ge=0, le=100, description="validation patches drawn as plot_{i}.png")
    log_images: int = Field(0, ge=0, le=32, description="validation patches logged to TensorBoard each epoch")
    chip_fit: Literal["crop", "resize"] = Field(
        "crop", description="dataset chips: random crops of patch_size, or each chip resized to it"
    )
    rare_share: float = Field(0.0, ge=0, le=1, description="share of training patches holding a rare class")
    rare_classes: list[str] | None = Field(None, description="the rare classes (default: the rarest one)")

    @field_validator("patch_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"patch_size {value} must be a multiple of 32 (U-Net and FarSeg downsample by 32)")
        return value

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 64:
            raise ValueError("num_workers must be between 0 and 64, or auto")
        return value


class TrainSpec(JobSpec):
    """A training job. ``scenes`` is shorthand for ``imagery: {source: local, paths: …, resolution: …}``."""

    kind: Literal["train"] = "train"
    path_fields = ("scenes", "masks", "dataset", "imagery.paths", "imagery.aoi", "model.weights",
                   "train.split.val_regions", "train.split.test_regions")  # fmt: skip
    dataset: str | None = Field(None, description="a chip folder (train_frames/ train_masks/ val_…) instead of scenes")
    imagery: ImagerySpec | None = Field(None, description="where the scenes come from")
    scenes: list[str] = Field(default_factory=list, description="SAFE folders or GeoTIFFs, globs allowed")
    resolution: Literal[10, 20, 60] | None = Field(None, description="metres, with scenes (default 20)")
    bands: list[str] | None = Field(None, description="a subset of the stack's bands (default: all)")
    masks: str | list[str] | None = Field(None, description="mask GeoTIFFs / vector labels, or folders of them")
    class_field: str | None = Field(None, description="vector attribute holding the class (name or index)")
    task: Literal["binary", "multiclass"] = "binary"
    classes: list[str] | None = Field(None, description="class names; binary default [background, target]")
    loss: Literal["ce", "bce", "dice", "jaccard", "focal"] | None = Field(None, description="default bce / ce")
    class_weights: list[float] | Literal["auto"] | None = Field(
        None, description="per class, for ce and bce; auto: inverse frequencies of the training pixels"
    )
    ignore_index: int = Field(255, ge=0, le=255, description="mask value that carries no label")
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainOptions = Field(default_factory=TrainOptions)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_nodes: int = Field(
        1, ge=1, le=1024, description="Slurm nodes; with the Slurm executor, devices × num_nodes DDP processes"
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        if self.dataset is not None:
            scene_fields = [k for k in ("scenes", "imagery", "masks", "resolution", "class_field", "bands")
                            if getattr(self, k)]  # fmt: skip
            if scene_fields:
                raise ValueError(
                    f"a dataset (chip folder) has its own frames and masks: drop {', '.join(scene_fields)}"
                )
        elif bool(self.scenes) == (self.imagery is not None):
            raise ValueError(
                "give either scenes (paths) or an imagery block, not both and not neither; or a dataset (chip folder)"
            )
        elif self.masks is None:
            raise ValueError("masks: the labels of the scenes are missing")
        if self.imagery is not None and self.resolution is not None:
            raise ValueError("resolution goes inside the imagery block")
        classes = self.class_names
        if self.task == "binary" and len(classes) != 2:
            raise ValueError(f"a binary task has 2 classes (background, target), got {len(classes)}")
        if self.task == "multiclass" and len(classes) < 2:
            raise ValueError("a multiclass task needs at least 2 classes")
        if len(set(classes)) != len(classes):
            raise ValueError("class names must differ")
        if self.ignore_index < len(classes):
            raise ValueError(f"ignore_index {self.ignore_index} is a class index (0 … {len(classes) - 1})")
        if self.loss is not None and self.loss not in LOSSES[self.task]:
            raise ValueError(f"loss {self.loss} does not fit a {self.task} task: use {', '.join(LOSSES[self.task])}")
        rare = self.train.rare_classes or []
        if any(name not in classes for name in rare):
            raise ValueError(f"rare_classes {rare}: not all in {classes}")
        if self.class_weights == "auto" and self.loss_name not in ("ce", "bce"):
            raise ValueError(f"class_weights work with the ce and bce losses, not {self.loss_name}")
        if isinstance(self.class_weights, list):
            if len(self.class_weights) != len(classes):
                raise ValueError(f"class_weights has {len(self.class_weights)} values for {len(classes)} classes")
            if any(w <= 0 for w in self.class_weights):
                raise ValueError("class_weights must be positive")
            if self.loss_name not in ("ce", "bce"):
                raise ValueError(f"class_weights work with the ce and bce losses, not {self.loss_name}")
        stopping = self.train.early_stopping
        if (
            stopping is not None
            and stopping.monitor.count("/") == 2
            and stopping.monitor.rsplit("/", 1)[1] not in classes
        ):
            raise ValueError(f"early_stopping monitor {stopping.monitor}: no such class in {classes}")
        return self

    @property
    def class_names(self) -> list[str]:
        return self.classes or (["background", "target"] if self.task == "binary" else [])

    @property
    def loss_name(self) -> str:
        return self.loss or LOSSES[self.task][0]

    @property
    def backbone(self) -> str | None:
        return self.model.backbone or ARCHITECTURES.get(self.model.arch)


# -- running ---------------------------------------------------------------------------------------------------


def scene_stacks(spec: TrainSpec, ctx: JobContext) -> tuple[list[Path], int]:
    """The stacked scenes (fetched / stacked where needed: :mod:`torchbearer.imagery.acquire`) and their
    resolution in metres."""
    from torchbearer.imagery.acquire import job_scenes

    if spec.imagery is not None:
        resolution = spec.imagery.resolution
        return [s[0] for s in job_scenes(ctx, [resolution], imagery=spec.imagery)], resolution
    resolution = spec.resolution or 20
    stacks = [s[0] for s in job_scenes(ctx, [resolution], scenes=spec.scenes)]
    if spec.resolution is None:
        return stacks, stacks_resolution(stacks, resolution)
    return stacks, resolution


def stacks_resolution(stacks: list[Path], default: int) -> int:
    """The resolution of scenes given without ``resolution:``: SAFE folders were stacked at ``default``;
    GeoTIFFs are at their own pixel size, which must be one for all (a 60 m file is never read as 20 m)."""
    from torchbearer.imagery.cache import stack_info

    sizes = {path: round(stack_info(path).resolution) for path in stacks}
    found = sorted(set(sizes.values()))
    if len(found) > 1:
        listed = ", ".join(f"{path.name}: {size} m" for path, size in sizes.items())
        raise ValueError(f"scenes at different resolutions ({listed}): train on one, set resolution:")
    if found and found[0] != default:
        log.warning("resolution: not given; the scenes are %d m stacks, so the model is trained at %d m",
                    found[0], found[0])  # fmt: skip
        return found[0]
    return default


def training_data(spec: TrainSpec, ctx: JobContext) -> tuple[list[TrainingScene] | ChipSet, float, list[str]]:
    """The scenes with their (memory-mapped) targets, or the indexed chip folder; the pixel size in metres;
    and why scenes were skipped (no label overlaps them), each also reported as progress."""
    if spec.dataset is not None:
        from torchbearer.ml.chips import open_chips

        chips = open_chips(ctx.resolve(spec.dataset))
        return chips, chips.resolution, []
    from torchbearer.ml.scenes import load_scenes

    stacks, resolution = scene_stacks(spec, ctx)
    assert spec.masks is not None  # checked by the spec
    masks = [ctx.resolve(m) for m in ([spec.masks] if isinstance(spec.masks, str) else spec.masks)]
    skipped: list[str] = []
    targets = targets_dir(ctx)
    shutil.rmtree(targets, ignore_errors=True)  # an earlier attempt's (memory-mapped targets)
    scenes = load_scenes(stacks, masks, spec.class_names, bands=spec.bands, class_field=spec.class_field,
                         resolution=resolution, cache_dir=ctx.settings.data_dir / "cache" / "mapped",
                         work_dir=targets, skipped=skipped)  # fmt: skip
    for reason in skipped:  # in the job's log and on the dashboard
        ctx.progress("preparing data", force=True, skipped=reason)
    return scenes, resolution, skipped


def targets_dir(ctx: JobContext) -> Path:
    """The folder of the memory-mapped targets: one per process of a parallel job (each builds its own)."""
    return ctx.run_dir / ("targets" if not ctx.rank else f"targets-rank{ctx.rank}")


def check_alone(spec: TrainSpec) -> None:
    """Refuse ``num_nodes`` > 1 in a worker that runs alone (not one of the Slurm executor's srun tasks)."""
    from torchbearer.context import JobInputError

    if spec.num_nodes > 1 and int(os.environ.get("TORCHBEARER_TASKS") or 0) <= 1:
        raise JobInputError(f"num_nodes: {spec.num_nodes} needs the Slurm executor, which starts a process per "
                            "device on each node; this worker runs alone")  # fmt: skip


def processes(spec: TrainSpec, cuda: bool) -> dict[str, Any]:
    """The Trainer's ``devices``, ``num_nodes`` and ``strategy``: DDP over the ``srun`` tasks Slurm started for
    the job (``devices`` a node, on ``num_nodes`` nodes; gloo on the CPU, NCCL on GPUs), which Lightning's
    ``SLURMEnvironment`` finds in the ``SLURM_*`` variables; one device otherwise (the local executor runs one
    process whatever ``devices`` says)."""
    tasks = int(os.environ.get("TORCHBEARER_TASKS") or 0)
    if tasks <= 1:
        return {"devices": 1}
    from lightning.pytorch.plugins.environments import SLURMEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    per_node = int(os.environ["SLURM_NTASKS_PER_NODE"].split("(")[0])  # "2", or "2(x3)" on three nodes
    nodes = int(os.environ.get("SLURM_NNODES") or 1)
    log.info("distributed data parallel: %d processes (%d a node on %d nodes), rank %s", tasks, per_node, nodes,
             os.environ.get("SLURM_PROCID"))  # fmt: skip
    # auto_requeue off: the daemon decides what runs again (its jobs are --no-requeue), not Lightning's handlers
    strategy = DDPStrategy(cluster_environment=SLURMEnvironment(auto_requeue=False),
                           process_group_backend=None if cuda else "gloo")  # fmt: skip
    return {"devices": per_node, "num_nodes": nodes, "strategy": strategy}


def _num_workers(spec: TrainSpec, cuda: bool) -> int:
    if spec.train.num_workers != "auto":
        return int(spec.train.num_workers)
    # Patches are cut from scenes in memory: the main process keeps a CPU run fed; a GPU wants a few helpers.
    return min(4, (os.cpu_count() or 2) // 2) if cuda else 0


def _precision(spec: TrainSpec, cuda: bool) -> str:
    if spec.train.precision != "auto":
        return "32-true" if spec.train.precision == "32" else spec.train.precision
    if not cuda:
        return "32-true"
    import torch

    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def build_datamodule(
    spec: TrainSpec, ctx: JobContext, data: list[TrainingScene] | ChipSet, cuda: bool
) -> PatchDataModule:
    """The DataModule of ``spec`` over scenes or a chip folder, set up (split made, statistics computed and
    the inputs checked: the scaling guard)."""
    from torchbearer.ml.chips import ChipDataModule, ChipSet
    from torchbearer.ml.datamodules import SegmentationDataModule
    from torchbearer.ml.scenes import SplitOptions

    common = {"patch_size": spec.train.patch_size, "batch_size": spec.train.batch_size,
              "samples_per_epoch": spec.train.samples_per_epoch, "num_workers": _num_workers(spec, cuda),
              "seed": spec.train.seed, "augment": spec.train.augment}  # fmt: skip
    datamodule: PatchDataModule
    if isinstance(data, ChipSet):
        datamodule = ChipDataModule(data, spec.class_names, fit=spec.train.chip_fit, **common)
    else:
        split = spec.train.split
        options = SplitOptions(
            split.block_size or 2 * spec.train.patch_size,
            split.val_fraction,
            split.test_fraction,
            val_regions=ctx.resolve(split.val_regions) if split.val_regions else None,
            test_regions=ctx.resolve(split.test_regions) if split.test_regions else None,
        )
        datamodule = SegmentationDataModule(
            data, classes=spec.class_names, split=options, num_classes=len(spec.class_names),
            rare_classes=[spec.class_names.index(c) for c in spec.train.rare_classes or []] or None,
            rare_share=spec.train.rare_share, **common,
        )  # fmt: skip
    datamodule.setup()
    if isinstance(datamodule, SegmentationDataModule):
        log_sampling(spec, datamodule)
    return datamodule


def log_sampling(spec: TrainSpec, datamodule: SegmentationDataModule) -> None:
    """Log how the first epoch's training patches spread over the scenes (and the rare classes asked for)."""
    assert datamodule.split is not None
    drawn = [0] * len(datamodule.scenes)
    for scene, *_ in datamodule.train_sampler():  # the first epoch's draw, seeded: as training will see it
        drawn[scene] += 1
    log.info("sampling per scene: %s", json.dumps({s.info.path.name: [n, area] for s, n, area in
             zip(datamodule.scenes, drawn, datamodule.split.train_area, strict=True)}))  # fmt: skip
    if spec.train.rare_share:
        log.info("rare classes %s: at least %.0f %% of the training patches hold one",
                 [spec.class_names[i] for i in datamodule.rare], 100 * spec.train.rare_share)  # fmt: skip


def class_weights(spec: TrainSpec, datamodule: PatchDataModule) -> list[float] | None:
    """The loss's class weights: as given, or (``auto``) inverse frequencies of the training pixels, logged."""
    from torchbearer.ml.scenes import inverse_frequencies

    if spec.class_weights != "auto":
        return spec.class_weights
    assert datamodule.split is not None
    counts = getattr(datamodule.split, "class_counts", None)
    if not counts:
        raise ValueError("class_weights: auto is computed from the scenes' training pixels; give the weights "
                         "for a chip folder (dataset:)")  # fmt: skip
    weights = inverse_frequencies(counts, spec.class_names)
    log.info("class_weights: auto: %s (training pixels %s)",
             dict(zip(spec.class_names, [round(w, 4) for w in weights], strict=True)),
             dict(zip(spec.class_names, counts, strict=True)))  # fmt: skip
    return weights


def model_card(spec: TrainSpec, datamodule: PatchDataModule, resolution: float) -> ModelCard:
    """The card of the model ``spec`` trains on ``datamodule``: bands, classes, the training data's
    normalisation, the value domain of its input (``extra.value_domain``) and, for scenes, their product
    level and reflectance offset (``extra.product_level``, ``extra.reflectance_offset``)."""
    from torchbearer.ml.checkpoint import ModelCard, input_description

    scenes = getattr(datamodule, "scenes", [])  # a chip folder has no scenes: level and offset unknown
    described = input_description([s.info.product_level for s in scenes], [s.info.offset for s in scenes])

    return ModelCard(
        arch=spec.model.arch,
        backbone=spec.backbone,
        in_channels=datamodule.in_channels,
        num_classes=len(spec.class_names),
        classes=spec.class_names,
        task=spec.task,
        bands=datamodule.bands,
        resolution=float(resolution),
        norm={"mean": datamodule.mean, "std": datamodule.std},
        extra={**described, "value_domain": datamodule.value_domain},
    )


def build_task(spec: TrainSpec, ctx: JobContext, datamodule: PatchDataModule, resolution: float, resuming: bool):
    """The LightningModule with its model card (bands, classes, normalisation of this training data)."""
    from torchbearer.ml.tasks import SegmentationTask

    weights = spec.model.weights
    if weights not in (None, "imagenet"):
        weights = str(ctx.resolve(weights))
    return SegmentationTask(
        model_card(spec, datamodule, resolution).to_dict(),
        weights=None if resuming else weights,  # a resumed run takes every weight from last.ckpt
        loss=spec.loss_name,
        class_weights=class_weights(spec, datamodule),
        ignore_index=spec.ignore_index,
        lr=spec.train.lr,
        weight_decay=spec.train.weight_decay,
        scheduler=spec.train.scheduler,
        max_epochs=spec.train.epochs,
    )


def run(spec: TrainSpec, ctx: JobContext) -> None:
    """Prepare the data, train (resuming from ``last.ckpt`` when there is one), record the products."""
    # Scenes and masks first, without torch: a bad input fails the job in a second, not after the imports.
    check_alone(spec)
    ctx.progress("preparing data", force=True)
    data, resolution, skipped = training_data(spec, ctx)
    ctx.check_stop()

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from torchbearer.ml.callbacks import AtomicCheckpointIO, LastCheckpoint, ProgressReporter

    cuda = spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available())
    L.seed_everything(spec.train.seed, workers=True, verbose=False)
    datamodule = build_datamodule(spec, ctx, data, cuda)
    if spec.model.arch == "random-forest":
        if ctx.rank:  # a forest trains in one process: rank 0's
            return
        from torchbearer.ml.forest import train_forest_job

        train_forest_job(spec, ctx, datamodule, model_card(spec, datamodule, resolution))
        return

    checkpoints = ctx.run_dir / "checkpoints"
    last = checkpoints / "last.ckpt"
    resume = last if last.is_file() else None
    if resume is not None:
        held = torch.load(resume, map_location="cpu", weights_only=True, mmap=True)
        log.info("resuming from %s (epoch %s, step %s)", resume, held.get("epoch"), held.get("global_step"))
        del held
    task = build_task(spec, ctx, datamodule, resolution, resuming=resume is not None)
    stopping = spec.train.early_stopping
    monitor, mode = (stopping.monitor, stopping.direction) if stopping else ("val/iou", "max")
    # Saved when validation ends, before the epoch-end hooks where a stop request is honoured; last.ckpt is
    # LastCheckpoint's, written after it at every epoch's end whether or not the metric improved.
    best = ModelCheckpoint(dirpath=checkpoints, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                           auto_insert_metric_name=False, save_on_train_epoch_end=False)  # fmt: skip
    callbacks: list[Any] = [
        best,
        LearningRateMonitor(logging_interval="epoch"),
        ProgressReporter(ctx.progress, ctx.metrics, resumed=ctx.resumed),
        LastCheckpoint(last, lambda: ctx.should_stop),
    ]
    if stopping is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=stopping.patience))
    if spec.train.log_images:
        from torchbearer.ml.callbacks import SamplePredictions

        callbacks.append(SamplePredictions(spec.train.log_images))
    logs, version = ctx.run_dir / "logs", f"attempt-{ctx.attempt}"  # a resumed attempt logs next to the earlier
    trainer = L.Trainer(
        max_epochs=spec.train.epochs,
        accelerator="gpu" if cuda else "cpu",
        **processes(spec, cuda),
        precision=_precision(spec, cuda),
        logger=[
            TensorBoardLogger(logs, name="tensorboard", version=version),
            CSVLogger(logs, name="csv", version=version),
        ],
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=ctx.run_dir,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, datamodule.train_samples // spec.train.batch_size)),
    )
    fit_resumable(trainer, task, datamodule, resume, last, ctx)

    best_path = Path(best.best_model_path) if best.best_model_path else last
    ctx.output(last, "checkpoint")
    ctx.output(best_path, "best_checkpoint")
    ctx.output(logs, "log")
    if datamodule.split is not None and len(datamodule.split.test):
        ctx.progress("validating", force=True)
        results = trainer.test(task, datamodule=datamodule, ckpt_path=str(best_path), verbose=False)
        ctx.metrics({k: float(v) for k, v in results[0].items()}, step=trainer.global_step)
    if ctx.rank:  # another process of a parallel run: rank 0 evaluates, plots and reports
        shutil.rmtree(targets_dir(ctx), ignore_errors=True)
        return
    task.load_state_dict(torch.load(best_path, map_location=task.device, weights_only=True)["state_dict"])
    ctx.progress("evaluating", force=True)
    from torchbearer.ml.report import report_training

    for path in report_training(task, datamodule, best_path, ctx.run_dir, skipped):
        ctx.output(path, "report")
    if spec.train.plots:
        ctx.progress("writing", force=True)
        from torchbearer.ml.plots import write_plots

        for path in write_plots(task, task.card, datamodule, spec.train.plots, ctx.run_dir):
            ctx.output(path, "plot")
    score = float(best.best_model_score) if best.best_model_score is not None else float("nan")
    log.info("best %s = %.4g at %s", monitor, score, best_path)
    del datamodule, data
    shutil.rmtree(targets_dir(ctx), ignore_errors=True)


def fit_resumable(trainer: Any, task: Any, datamodule: Any, resume: Path | None, last: Path, ctx: JobContext) -> None:
    """``trainer.fit`` from ``resume`` (a ``last.ckpt``, or None); a stop request ends it at a safe point with
    :class:`~torchbearer.context.JobInterrupted`, so the job resumes from ``last`` (shared by train and classify)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from torchbearer.context import JobInterrupted
    from torchbearer.ml.callbacks import TrainingStopped

    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume)
    except (TrainingStopped, SIGTERMException) as exc:
        raise JobInterrupted(f"training {str(exc) or 'stopped on SIGTERM'}; resumes from {last.name}") from None
    ctx.check_stop()


#: What a train job logs (``ml/tasks.py``): per epoch under ``val/``, once on the test split under ``test/``.
TRAIN_METRICS = ("train/loss_step", "train/loss_epoch", *VAL_METRICS, "val/iou/*", "val/f1/*",
                 *(m.replace("val/", "test/") for m in VAL_METRICS), "test/iou/*", "test/f1/*")  # fmt: skip

register(JobKind("train", TrainSpec, run, "train a segmentation model on Sentinel-2 scenes and masks",
                 metrics=TRAIN_METRICS))  # fmt: skip
