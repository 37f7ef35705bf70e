"""The LightningModule of semantic segmentation: model, loss, metrics, optimiser; the card goes into checkpoints.

Binary tasks have one logit channel (sigmoid; class 1 is the target), multiclass tasks one per class
(softmax). Targets equal to ``ignore_index`` (no label, no data) count in neither the loss nor the metrics.
Logged: ``train/loss`` (per step and per epoch: ``train/loss_step``, ``train/loss_epoch``); ``val/loss``,
``val/iou``, ``val/f1``, ``val/accuracy`` and per class
``val/iou/<class>``, ``val/f1/<class>`` (``val/iou`` is the target class's IoU for a binary task, the mean over
classes for a multiclass one); the same under ``test/``.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

from torchbearer.ml.checkpoint import CARD_KEY, ModelCard
from torchbearer.ml.models import build_model
from torchbearer.ml.names import LOSSES


class BinaryBCE(nn.Module):
    """Binary cross-entropy on logits that skips ignored pixels; ``pos_weight`` weighs the target class."""

    def __init__(self, ignore_index: int, pos_weight: float | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("pos_weight", torch.tensor(pos_weight) if pos_weight else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target != self.ignore_index
        if not keep.any():
            return logits.sum() * 0.0
        return nn.functional.binary_cross_entropy_with_logits(
            logits[:, 0][keep], target[keep].float(), pos_weight=self.pos_weight
        )


def make_loss(name: str, task: str, ignore_index: int, class_weights: list[float] | None = None) -> nn.Module:
    """The loss ``name`` for ``task``; class weights apply to ``ce`` and ``bce`` (background, target)."""
    if name not in LOSSES[task]:
        raise ValueError(f"loss {name!r} does not fit a {task} task; choose one of {', '.join(LOSSES[task])}")
    if class_weights is not None and name not in ("ce", "bce"):
        raise ValueError(f"class_weights work with the ce and bce losses, not {name}")
    if name == "ce":
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        return nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
    if name == "bce":
        return BinaryBCE(ignore_index, class_weights[1] / class_weights[0] if class_weights else None)
    from segmentation_models_pytorch import losses

    mode = "binary" if task == "binary" else "multiclass"
    loss = {"dice": losses.DiceLoss, "jaccard": losses.JaccardLoss, "focal": losses.FocalLoss}[name]
    return loss(mode, ignore_index=ignore_index)


def make_metrics(num_classes: int, ignore_index: int) -> nn.ModuleDict:
    """The metrics of one stage: per-class IoU and F1, overall accuracy (ignored pixels skipped)."""
    return nn.ModuleDict(
        {
            "iou": MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore_index),
            "f1": MulticlassF1Score(num_classes, average="none", ignore_index=ignore_index),
            "accuracy": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
        }
    )


def metric_values(stage: str, metrics: nn.ModuleDict, card: ModelCard) -> dict[str, torch.Tensor]:
    """``<stage>/accuracy``, ``<stage>/iou``, ``<stage>/f1`` and per class ``<stage>/iou/<class>`` … from the
    metrics' state (``iou``/``f1``: the target class's for a binary task, the mean over classes otherwise)."""
    iou, f1 = metrics["iou"].compute(), metrics["f1"].compute()
    values = {f"{stage}/accuracy": metrics["accuracy"].compute()}
    for i, name in enumerate(card.classes):
        values[f"{stage}/iou/{name}"] = iou[i]
        values[f"{stage}/f1/{name}"] = f1[i]
    binary = card.task == "binary"
    values[f"{stage}/iou"] = iou[1] if binary else iou.mean()
    values[f"{stage}/f1"] = f1[1] if binary else f1.mean()
    return values


def predicted_classes(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Class index per pixel (B × H × W) from logits: a binary model's one channel > 0, else the argmax."""
    if task == "binary":
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


class CardTask(L.LightningModule):
    """What the project's tasks share: a model card (``self.card``) written into every checkpoint, and the
    validation and test stages, each batch scored by ``_evaluate(batch, stage)`` and each epoch's metrics logged
    and reset by ``_report(stage)`` (``stage``: ``"val"`` or ``"test"``)."""

    card: ModelCard

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        raise NotImplementedError

    def _report(self, stage: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CARD_KEY] = self.card.to_dict()


class SegmentationTask(CardTask):
    """Segmentation training of one model.

    Args:
        card: what the model is and expects (arch, backbone, bands, classes, task, norm); saved in checkpoints.
        weights: initial weights (None, ``"imagenet"`` or a checkpoint path).
        loss: ``ce`` / ``bce`` / ``dice`` / ``jaccard`` / ``focal``.
        class_weights: per class, for ce and bce.
        ignore_index: target value that carries no label.
        lr: AdamW learning rate; weight_decay: AdamW decay.
        scheduler: ``cosine`` (to 1 % of lr over ``max_epochs``), ``plateau`` (halve on a flat val/loss) or none.
    """

    def __init__(
        self,
        card: dict[str, Any],
        weights: str | None = None,
        loss: str = "bce",
        class_weights: list[float] | None = None,
        ignore_index: int = 255,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        scheduler: Literal["cosine", "plateau", "none"] = "cosine",
        max_epochs: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.card = ModelCard(**card)
        self.model = build_model(
            self.card.arch, self.card.backbone, self.card.in_channels, self.card.out_channels, weights
        )
        self.loss = make_loss(loss, self.card.task, ignore_index, class_weights)
        self.metrics = nn.ModuleDict(
            {stage: make_metrics(self.card.num_classes, ignore_index) for stage in ("val", "test")}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def predict_classes(self, logits: torch.Tensor) -> torch.Tensor:
        """Class index per pixel (B × H × W)."""
        return predicted_classes(logits, self.card.task)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["mask"].long())  # masks travel as uint8: 8× fewer bytes to the device
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        logits = self(batch["image"])
        target = batch["mask"].long()
        # sync_dist: under DDP the epoch's value is the mean over every process's share of the split
        self.log(f"{stage}/loss", self.loss(logits, target), on_epoch=True, batch_size=len(logits), sync_dist=True)
        predicted = self.predict_classes(logits)
        for metric in self.metrics[stage].values():
            metric.update(predicted, target)

    def _report(self, stage: str) -> None:
        metrics = self.metrics[stage]
        self.log_dict(metric_values(stage, metrics, self.card), sync_dist=True)  # equal on every process already
        for metric in metrics.values():
            metric.reset()

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, hp.max_epochs), eta_min=hp.lr * 0.01
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        if hp.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
        return optimizer
