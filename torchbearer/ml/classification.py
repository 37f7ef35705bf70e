"""Patch classification training: the DataModule over a :class:`~torchbearer.ml.patches.PatchSet`, the
LightningModule (timm model, loss, metrics, optimiser and schedule) and two-phase fine-tuning.

Batches are slices of the memory-mapped patch array (one read per batch), standardised on the device with the
training split's statistics, then augmented there: flips and 90° rotations as whole-batch torch ops
(:class:`RandomSymmetry`), brightness / contrast and random resized crop with kornia (every transform works
on any band count).

Two phases (:class:`TwoPhaseFinetuning`): for ``head_epochs`` epochs the backbone is frozen (no gradients,
batch-norm statistics fixed) and only the head learns at ``head_lr``; then all blocks, or the last ``unfreeze``
blocks, learn at ``lr`` under the chosen schedule. The phase follows from the epoch alone, so a resumed run
lands in the right one.

Logged (``val/`` and ``test/``): ``loss``, ``accuracy``, ``f1_macro``, and per class ``precision/<class>``,
``recall/<class>``, ``f1/<class>``; multi-label adds ``f1_micro`` and ``map`` (mean average precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, SubsetRandomSampler
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelAccuracy,
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelPrecision,
    MultilabelRecall,
)

from torchbearer.ml.callbacks import ValidationSamples
from torchbearer.ml.checkpoint import ModelCard
from torchbearer.ml.classifiers import backbone_blocks, build_classifier, head_parameters
from torchbearer.ml.patches import PatchSet
from torchbearer.ml.tasks import CardTask

#: Aggregate metrics a classification job logs per validation epoch (the per-class ones are
#: ``val/precision/<class>``, ``val/recall/<class>``, ``val/f1/<class>``).
MULTICLASS_METRICS = ("val/loss", "val/accuracy", "val/f1_macro")
MULTILABEL_METRICS = ("val/loss", "val/accuracy", "val/f1_macro", "val/f1_micro", "val/map")


def logged_metrics(multilabel: bool, classes: list[str] | None = None) -> list[str]:
    """Every ``val/…`` metric name a classification job logs (per-class names when ``classes`` is given)."""
    names = list(MULTILABEL_METRICS if multilabel else MULTICLASS_METRICS)
    for name in classes or []:
        names += [f"val/precision/{name}", f"val/recall/{name}", f"val/f1/{name}"]
    return names


# -- data -------------------------------------------------------------------------------------------------------


class PatchBatches(Dataset):
    """Whole batches out of the patch array: ``dataset[indexes]`` → ``{"image": float32, "label": …}``.

    The array is memory-mapped lazily in each process (a DataLoader worker opens its own map).
    """

    def __init__(self, patch_set: PatchSet) -> None:
        self.cache = patch_set.cache
        self.labels = patch_set.labels
        self.length = len(patch_set)
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, indexes: list[int]) -> dict[str, torch.Tensor]:
        if self._images is None:
            self._images = np.load(self.cache, mmap_mode="r")
        order = np.sort(np.asarray(indexes))  # ascending reads are sequential on disk
        image = torch.from_numpy(self._images[order].astype(np.float32))
        return {"image": image, "label": torch.from_numpy(self.labels[order])}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None}


class PatchDataModule(L.LightningDataModule):
    """Train / val / test loaders over the split of a patch set (batches drawn as index lists)."""

    def __init__(
        self, patch_set: PatchSet, split: dict[str, np.ndarray], batch_size: int, num_workers: int = 0, seed: int = 0
    ) -> None:
        super().__init__()
        self.patch_set = patch_set
        self.split = split
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.dataset = PatchBatches(patch_set)

    def _loader(self, indexes: np.ndarray, shuffle: bool) -> DataLoader:
        if shuffle:
            sampler: Any = SubsetRandomSampler(indexes.tolist(), generator=torch.Generator().manual_seed(self.seed))
        else:
            sampler = [int(i) for i in indexes]
        # A training batch of one patch breaks batch norm: drop a last batch of one.
        drop_last = shuffle and len(indexes) % self.batch_size == 1
        batches = BatchSampler(sampler if shuffle else SequentialSampler(sampler), self.batch_size, drop_last)
        if not shuffle:  # SequentialSampler yields positions: map them back to patch indexes
            batches = [[sampler[i] for i in batch] for batch in batches]
        return DataLoader(self.dataset, sampler=batches, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split["val"], shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split["test"], shuffle=False)


@dataclass(frozen=True)
class AugmentOptions:
    """Training augmentation; probabilities per patch, factors as kornia takes them."""

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.0  # ± shift of the standardised values
    contrast: float = 0.0  # ± relative scale
    resized_crop: tuple[float, float] | None = None  # area fraction range of the crop

    def build(self, size: int) -> nn.Module | None:
        """The enabled transforms (None when none is): :class:`RandomSymmetry` (flips, 90° rotations) on the
        whole batch, then kornia's brightness, contrast and resized crop."""
        import kornia.augmentation as K

        steps: list[nn.Module] = []
        if self.brightness:
            steps.append(K.RandomBrightness((1 - self.brightness, 1 + self.brightness), clip_output=False, p=0.5))
        if self.contrast:
            steps.append(K.RandomContrast((1 - self.contrast, 1 + self.contrast), clip_output=False, p=0.5))
        if self.resized_crop:
            steps.append(K.RandomResizedCrop((size, size), scale=tuple(self.resized_crop), p=0.5))
        # Flips and 90° rotations: whole-batch torch ops (kornia's RandomRotation90 resamples through an affine
        # warp, and each kornia step costs far more than the flips themselves on small patches).
        symmetries = [RandomSymmetry(self.flips, self.rot90)] if self.flips or self.rot90 else []
        photometric = [K.AugmentationSequential(*steps, data_keys=["input"])] if steps else []
        return nn.Sequential(*symmetries, *photometric) if symmetries or photometric else None


class RandomSymmetry(nn.Module):
    """Per sample of a batch (B × C × H × W, any band count), independently: a left-right flip and an
    up-down flip with probability ½ each (``flips``), then a rotation by 0, 90, 180 or 270° drawn uniformly
    (``rot90``; square patches: otherwise 0 or 180°). With both, each of the square's 8 symmetries is as likely.

    Exact (no resampling), and vectorised: every transform is computed once for the batch and taken per sample
    with ``torch.where``, from torch's global generator (seeded like the rest of training)."""

    def __init__(self, flips: bool = True, rot90: bool = True) -> None:
        super().__init__()
        self.flips = flips
        self.rot90 = rot90

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]

        def chosen(p: float | torch.Tensor) -> torch.Tensor:
            mask = p if isinstance(p, torch.Tensor) else torch.rand(batch, device=x.device) < p
            return mask.view(batch, *([1] * (x.dim() - 1)))

        if self.flips:
            x = torch.where(chosen(0.5), x.flip(-1), x)
            x = torch.where(chosen(0.5), x.flip(-2), x)
        if self.rot90:
            quarter = torch.randint(0, 4, (batch,), device=x.device)
            if x.shape[-1] == x.shape[-2]:
                x = torch.where(chosen(quarter % 2 == 1), x.rot90(1, (-2, -1)), x)
            x = torch.where(chosen(quarter >= 2), x.flip(-1).flip(-2), x)  # 180°: after 90°, 270°
        return x


# -- model ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseOptions:
    """Two-phase fine-tuning: ``head_epochs`` at ``head_lr`` with the backbone frozen, then ``unfreeze``
    (``all`` or the last K blocks) at the task's ``lr``; ``batchnorm`` trainable or frozen in phase 2."""

    head_epochs: int = 0
    head_lr: float = 1e-3
    unfreeze: int | Literal["all"] = "all"
    batchnorm: Literal["trainable", "frozen"] = "trainable"


@dataclass(frozen=True)
class ScheduleOptions:
    """The learning-rate schedule of phase 2: ``cosine`` (to 1 % over the phase), ``exponential``
    (× ``gamma`` an epoch), ``step`` (× ``gamma`` every ``step_size`` epochs), ``plateau`` (× ``gamma`` after
    ``patience`` epochs without a better ``val/loss``) or ``none``."""

    name: Literal["cosine", "exponential", "step", "plateau", "none"] = "cosine"
    gamma: float = 0.5
    step_size: int = 5
    patience: int = 2
    extra: dict[str, Any] = field(default_factory=dict)


class ClassificationTask(CardTask):
    """Training of one patch classifier.

    Args:
        card: the model card (arch ``classifier``, backbone, bands, classes, task ``multiclass`` or
            ``multilabel``, norm in the patches' units); saved in every checkpoint.
        weights: None, ``"imagenet"`` or a weights file (see :func:`build_classifier`).
        class_weights: per class, for the loss (cross-entropy weights; BCE positive weights).
        label_smoothing: for cross-entropy; multi-label targets become ``y (1 - s) + s / 2``.
        lr: phase-2 AdamW learning rate; weight_decay: AdamW decay.
        phases, schedule, augment: as their option classes (plain dicts, so they go into ``hparams``).
        max_epochs: epochs of the whole run (both phases).
    """

    def __init__(
        self,
        card: dict[str, Any],
        weights: str | None = None,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        phases: dict[str, Any] | None = None,
        schedule: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
        max_epochs: int = 10,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.card = ModelCard(**card)
        self.multilabel = self.card.task == "multilabel"
        self.phases = PhaseOptions(**(phases or {}))
        self.schedule = ScheduleOptions(**(schedule or {}))
        self.model = build_classifier(self.card.backbone, self.card.in_channels, self.card.num_classes, weights,
                                      drop_rate)  # fmt: skip
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        if self.multilabel:
            self.loss: nn.Module = nn.BCEWithLogitsLoss(pos_weight=weight)
        else:
            self.loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.register_buffer("mean", torch.tensor(self.card.norm["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(self.card.norm["std"], dtype=torch.float32).view(1, -1, 1, 1))
        size = int(self.card.extra.get("patch_size", 64))
        options = AugmentOptions(**(augment or {})) if augment is not None else None
        self.augment = options.build(size) if options is not None else None
        self.metrics = nn.ModuleDict({stage: self._metrics(stage) for stage in ("val", "test")})

    def _metrics(self, stage: str) -> MetricCollection:
        n = self.card.num_classes
        if self.multilabel:
            return MetricCollection({
                "accuracy": MultilabelAccuracy(n, average="micro"),
                "f1_macro": MultilabelF1Score(n, average="macro"),
                "f1_micro": MultilabelF1Score(n, average="micro"),
                "map": MultilabelAveragePrecision(n, average="macro"),
                "precision": MultilabelPrecision(n, average="none"),
                "recall": MultilabelRecall(n, average="none"),
                "f1": MultilabelF1Score(n, average="none"),
            })  # fmt: skip
        return MetricCollection({
            "accuracy": MulticlassAccuracy(n, average="micro"),
            "f1_macro": MulticlassF1Score(n, average="macro"),
            "precision": MulticlassPrecision(n, average="none"),
            "recall": MulticlassRecall(n, average="none"),
            "f1": MulticlassF1Score(n, average="none"),
        })  # fmt: skip

    # -- forward ------------------------------------------------------------------------------------------------

    def standardise(self, image: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per band with the card's statistics (the patches' units)."""
        return (image - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over classes (single-label) or a sigmoid per class (multi-label)."""
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The augmentation's kornia parameter buffers are settings, not learnt: take the current ones (a
        # checkpoint written before flips and rotations left kornia holds those of other steps).
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("augment.")]:
            del state[key]
        if self.augment is not None:
            state.update({f"augment.{k}": v for k, v in self.augment.state_dict().items()})

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        image = self.standardise(batch["image"])
        if self.training and self.augment is not None and not self.trainer.sanity_checking:
            image = self.augment(image)
        return {**batch, "image": image}

    def _target(self, label: torch.Tensor) -> torch.Tensor:
        if not self.multilabel:
            return label.long()
        target = label.float()
        smoothing = self.hparams.label_smoothing
        return target * (1 - smoothing) + smoothing / 2 if smoothing else target

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss(logits, self._target(batch["label"]))
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(logits))
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        logits = self(batch["image"])
        label = batch["label"]
        self.log(f"{stage}/loss", self.loss(logits, self._target(label)), on_epoch=True, batch_size=len(logits))
        self.metrics[stage].update(self.probabilities(logits), label.long() if not self.multilabel else label.int())

    def _report(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        logged = {}
        for key, value in values.items():
            if value.ndim == 0:
                logged[f"{stage}/{key}"] = value
            else:
                for i, name in enumerate(self.card.classes):
                    logged[f"{stage}/{key}/{name}"] = value[i]
        self.log_dict(logged)
        self.metrics[stage].reset()

    # -- optimisation -------------------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        """AdamW over the head and the backbone (two groups, at ``lr``); in phase 1 the backbone has no
        gradients, and the schedule holds the head at ``head_lr`` before phase 2's schedule starts."""
        hp, phases, schedule = self.hparams, self.phases, self.schedule
        head = head_parameters(self.model)
        params = dict(self.model.named_parameters())
        groups = [
            {"params": [params[n] for n in sorted(head)], "name": "head"},
            {"params": [p for n, p in params.items() if n not in head], "name": "backbone"},
        ]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        lr_scheduler = torch.optim.lr_scheduler
        phase2 = max(1, hp.max_epochs - phases.head_epochs)
        if schedule.name == "plateau":
            plateau = lr_scheduler.ReduceLROnPlateau(optimizer, factor=schedule.gamma, patience=schedule.patience)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "val/loss"}}
        if schedule.name == "none":
            return optimizer
        main = {
            "cosine": lambda: lr_scheduler.CosineAnnealingLR(optimizer, T_max=phase2, eta_min=hp.lr * 0.01),
            "exponential": lambda: lr_scheduler.ExponentialLR(optimizer, gamma=schedule.gamma),
            "step": lambda: lr_scheduler.StepLR(optimizer, step_size=schedule.step_size, gamma=schedule.gamma),
        }[schedule.name]()
        if phases.head_epochs > 0:
            ratio = phases.head_lr / hp.lr
            head = lr_scheduler.LambdaLR(optimizer, lambda epoch: ratio)
            main = lr_scheduler.SequentialLR(optimizer, [head, main], milestones=[phases.head_epochs])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": main, "interval": "epoch"}}


class TwoPhaseFinetuning(L.Callback):
    """Freeze and unfreeze at the start of each training epoch (Lightning puts every module back in train
    mode before it, so frozen batch-norm layers are put back in eval mode here).

    Phase 1 (epochs before ``head_epochs``): only the head has gradients; every backbone layer, batch norm
    included, is frozen. Phase 2: the head and the last ``unfreeze`` blocks (or all) learn; batch-norm layers
    of the trained blocks keep learning unless ``batchnorm`` is ``frozen``. Without a scheduler that sets the
    learning rate (plateau, none), the rate is set here: ``head_lr`` in phase 1, ``lr`` when phase 2 starts.
    """

    def __init__(self, phases: PhaseOptions, lr: float, sets_lr: bool) -> None:
        self.phases = phases
        self.lr = lr
        self.sets_lr = sets_lr

    def phase(self, epoch: int) -> int:
        return 1 if epoch < self.phases.head_epochs else 2

    def trainable(self, model: nn.Module, epoch: int) -> set[str]:
        """Names of the parameters that learn in ``epoch``."""
        names = set(head_parameters(model))
        if self.phase(epoch) == 2:
            blocks = backbone_blocks(model)
            chosen = blocks if self.phases.unfreeze == "all" else blocks[len(blocks) - int(self.phases.unfreeze) :]
            names |= {n for block in chosen for n in block}
        return names

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        epoch = trainer.current_epoch
        trainable = self.trainable(model, epoch)
        frozen_bn = self.phase(epoch) == 1 or self.phases.batchnorm == "frozen"
        for module_name, module in model.named_modules():
            own = [f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters(recurse=False)]
            is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
            learns = bool(own) and all(n in trainable for n in own) and not (is_bn and frozen_bn)
            for _, param in module.named_parameters(recurse=False):
                param.requires_grad_(learns)
            if is_bn and not learns:
                module.eval()  # fixed running statistics: a frozen layer changes nothing
        if self.sets_lr and epoch <= self.phases.head_epochs:
            lr = self.phases.head_lr if self.phase(epoch) == 1 else self.lr
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = lr
        pl_module.log("phase", float(self.phase(epoch)), on_epoch=True, on_step=False)


class SampleClassifications(ValidationSamples):
    """Log the first ``count`` validation patches to TensorBoard after each validation epoch (``val/sample_<i>``):
    the patch's RGB composite titled with its true and predicted classes (multi-label: every class at ≥ 50 %),
    so the Images tab shows the predictions change epoch by epoch. Does nothing without a TensorBoard logger."""

    def log_samples(self, board: Any, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from torchbearer.explain.model import predicted
        from torchbearer.ml.plots import rgb_image

        card = pl_module.card
        images, labels = batch["image"][: self.count], batch["label"][: self.count].cpu()
        with torch.no_grad():
            titles = predicted(pl_module(images), card.classes, card.task)
        for i, (image, label) in enumerate(zip(images.float().cpu().numpy(), labels, strict=True)):
            truth = ";".join(c for c, on in zip(card.classes, label, strict=True) if on) if label.ndim else \
                card.classes[int(label)]  # fmt: skip
            fig, ax = plt.subplots(figsize=(2.6, 2.9))
            ax.imshow(rgb_image(image, list(card.bands)))
            ax.set_title(f"true {truth}\npredicted {titles[i]}", fontsize=7)
            ax.axis("off")
            board.experiment.add_figure(f"val/sample_{i}", fig, trainer.global_step, close=True)
