"""Losses and metrics of the segmentation task: every loss for its task, ignored pixels count nowhere."""

from __future__ import annotations

import pytest
import torch

from torchbearer.ml.checkpoint import ModelCard
from torchbearer.ml.names import LOSSES
from torchbearer.ml.tasks import SegmentationTask, make_loss

CASES = [(task, loss) for task, losses in LOSSES.items() for loss in losses]


def _card(task: str) -> ModelCard:
    classes = ["clear", "cloud"] if task == "binary" else ["land", "water", "cloud"]
    return ModelCard("fcn", None, 3, len(classes), classes, task, ["B02", "B03", "B04"], 60.0,
                     {"mean": [0.1] * 3, "std": [0.05] * 3})  # fmt: skip


@pytest.mark.parametrize(("task", "loss"), CASES)
def test_losses_skip_ignored_pixels(task: str, loss: str) -> None:
    torch.manual_seed(0)
    channels = _card(task).out_channels
    fn = make_loss(loss, task, ignore_index=255)
    target = torch.randint(0, 2 if task == "binary" else 3, (2, 8, 8))
    target[:, :4] = 255
    logits = torch.randn(2, channels, 8, 8, requires_grad=True)
    value = fn(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad[:, :, :4].abs().sum() == 0  # no gradient from ignored pixels
    changed = logits.detach().clone()
    changed[:, :, :4] = 50.0
    assert torch.isclose(fn(changed, target), value.detach(), atol=1e-5)


def test_class_weights_and_mismatches() -> None:
    target = torch.tensor([[[0, 1], [1, 255]]])
    logits = torch.zeros(1, 1, 2, 2)
    plain = make_loss("bce", "binary", 255)(logits, target)
    weighted = make_loss("bce", "binary", 255, [1.0, 3.0])(logits, target)
    assert weighted > plain
    with pytest.raises(ValueError, match="does not fit a binary task"):
        make_loss("ce", "binary", 255)
    with pytest.raises(ValueError, match="class_weights work with the ce and bce"):
        make_loss("focal", "multiclass", 255, [1.0, 1.0, 1.0])


def test_validation_metrics_per_class() -> None:
    task = SegmentationTask(_card("multiclass").to_dict(), loss="ce")
    target = torch.tensor([[[0, 1], [2, 255]]])
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [1, 0]]]), 3).permute(0, 3, 1, 2).float() * 10
    metrics = task.metrics["val"]
    predicted = task.predict_classes(logits)
    for metric in metrics.values():
        metric.update(predicted, target)
    iou = metrics["iou"].compute()
    assert iou.tolist() == pytest.approx([1.0, 0.5, 0.0])  # class 2 predicted as 1; the ignored pixel counts nowhere
    assert metrics["accuracy"].compute() == pytest.approx(2 / 3)
