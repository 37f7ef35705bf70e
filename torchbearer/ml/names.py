"""Names a job file may use for models and losses, kept free of heavy imports so specs can check them."""

from __future__ import annotations

#: Architectures and their default backbone (None: the architecture has none to choose).
ARCHITECTURES: dict[str, str | None] = {"fcn": None, "farseg": "resnet50", "unet": "resnet34"}
#: Backbones TorchGeo's FarSeg accepts.
FARSEG_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
#: Losses each task accepts; the first is the default.
LOSSES: dict[str, tuple[str, ...]] = {
    "binary": ("bce", "dice", "jaccard", "focal"),
    "multiclass": ("ce", "dice", "jaccard", "focal"),
}
#: Metrics logged per validation epoch (also per class as ``val/<metric>/<class>`` for iou and f1).
VAL_METRICS = ("val/loss", "val/iou", "val/f1", "val/accuracy")
