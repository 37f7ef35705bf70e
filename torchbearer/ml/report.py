"""The evaluation report at the end of training: the held-out split scored pixel by pixel.

On the test split (``test_regions`` / ``test_fraction``), or on the validation split when there is none (the
report says so): the confusion matrix (rows: true class, columns: predicted; valid labelled pixels only), per
class IoU, F1, precision and recall, overall accuracy, IoU per scene, and for a binary task the threshold on
the target's probability that maximises its F1 (from a 100-bin histogram of the probabilities of target and
background pixels). Written into the run folder as ``report.json``, ``report.md``, ``confusion.csv`` and
``confusion.png``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchbearer.ml.labels import IGNORE

log = logging.getLogger(__name__)

#: Bins of the probability histograms of a binary task (threshold resolution 0.01).
BINS = 100


def confusion(predicted: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix (true × predicted, int64) over the pixels whose target is a class (not IGNORE)."""
    keep = target != IGNORE
    pairs = target[keep].astype(np.int64) * num_classes + predicted[keep].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(matrix: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Per-class IoU, F1, precision, recall and overall accuracy of a confusion matrix (0 where undefined)."""
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp

    def ratio(a: np.ndarray, b: np.ndarray) -> list[float]:
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0).tolist()

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    iou, f1, pixels = ratio(tp, tp + fp + fn), ratio(2 * tp, 2 * tp + fp + fn), matrix.sum(axis=1)
    per_class = {
        name: {"iou": iou[i], "f1": f1[i], "precision": precision[i], "recall": recall[i], "pixels": int(pixels[i])}
        for i, name in enumerate(classes)
    }
    total = int(matrix.sum())
    return {
        "pixels": total,
        "overall_accuracy": float(tp.sum() / total) if total else 0.0,
        "mean_iou": float(np.mean([c["iou"] for c in per_class.values()])),
        "classes": per_class,
    }


def best_threshold(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising the target's F1, from histograms of its probability over target pixels
    (``positive``) and background pixels (``negative``), ``BINS`` bins on [0, 1]."""
    tp = positive[::-1].cumsum()[::-1].astype(np.float64)  # predicted target at threshold i / BINS: bins ≥ i
    fp = negative[::-1].cumsum()[::-1].astype(np.float64)
    fn = positive.sum() - tp
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    best = int(np.argmax(f1))
    return best / len(positive), float(f1[best])


@dataclass
class Evaluation:
    """What :func:`evaluate` gathers: the confusion matrix, per scene too, and a binary task's histograms."""

    num_classes: int
    matrix: np.ndarray = field(init=False)
    per_scene: dict[int, np.ndarray] = field(default_factory=dict)
    positive: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    negative: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def add(self, predicted: np.ndarray, target: np.ndarray, scenes: np.ndarray, prob: np.ndarray | None) -> None:
        """A batch: predicted and true classes (B × H × W), scene index per patch, binary target probability."""
        for scene in np.unique(scenes):
            pick = scenes == scene
            m = confusion(predicted[pick], target[pick], self.num_classes)
            self.per_scene[int(scene)] = self.per_scene.get(int(scene), 0) + m
            self.matrix += m
        if prob is not None:
            bins = np.minimum((prob * BINS).astype(np.int64), BINS - 1)
            self.positive += np.bincount(bins[target == 1], minlength=BINS)
            self.negative += np.bincount(bins[target == 0], minlength=BINS)


def evaluate(task: Any, loader: Any) -> Evaluation:
    """Run ``task``'s model over ``loader`` (batches with ``image``, ``mask``, ``scene``) and gather."""
    import torch

    binary = task.card.task == "binary"
    result = Evaluation(task.card.num_classes)
    task.eval()
    with torch.inference_mode():
        for batch in loader:
            logits = task(batch["image"].to(task.device))
            prob = torch.sigmoid(logits[:, 0]).float().cpu().numpy() if binary else None
            predicted = task.predict_classes(logits).cpu().numpy()
            result.add(predicted, batch["mask"].numpy(), batch["scene"].numpy(), prob)
    return result


def build_report(result: Evaluation, classes: list[str], scene_names: list[str], split: str, binary: bool,
                 note: str = "") -> dict[str, Any]:  # fmt: skip
    """The report as a JSON-ready dict."""
    report: dict[str, Any] = {"split": split, "note": note, **scores(result.matrix, classes)}
    report["confusion"] = {"rows": "true class", "columns": "predicted class", "classes": classes,
                           "matrix": result.matrix.tolist()}  # fmt: skip
    focus = 1 if binary else None
    report["scenes"] = {
        scene_names[i]: (scores(m, classes)["classes"][classes[focus]]["iou"] if focus is not None
                         else scores(m, classes)["mean_iou"])
        for i, m in sorted(result.per_scene.items())
    }  # fmt: skip
    report["scene_metric"] = f"IoU of {classes[1]}" if binary else "mean IoU"
    if binary:
        threshold, f1 = best_threshold(result.positive, result.negative)
        report["threshold"] = {"f1_optimal": threshold, "f1": f1, "default": 0.5}
    return report


def write_report(run_dir: Path, report: dict[str, Any]) -> list[Path]:
    """``report.json``, ``report.md``, ``confusion.csv`` and ``confusion.png`` in ``run_dir``."""
    classes = report["confusion"]["classes"]
    matrix = np.asarray(report["confusion"]["matrix"])
    paths = [run_dir / "report.json", run_dir / "report.md", run_dir / "confusion.csv", run_dir / "confusion.png"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    rows = ["true \\ predicted," + ",".join(classes)]
    rows += [f"{name}," + ",".join(str(int(v)) for v in row) for name, row in zip(classes, matrix, strict=True)]
    paths[2].write_text("\n".join(rows) + "\n")
    _plot_confusion(matrix, classes, paths[3])
    return paths


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (tables), for a paper's appendix."""
    lines = [f"# Evaluation on the {report['split']} split", ""]
    if report["note"]:
        lines += [report["note"], ""]
    lines += [f"{report['pixels']} labelled valid pixels; overall accuracy {report['overall_accuracy']:.4f}, "
              f"mean IoU {report['mean_iou']:.4f}.", "",
              "| class | IoU | F1 | precision | recall | pixels |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, c in report["classes"].items():
        lines.append(f"| {name} | {c['iou']:.4f} | {c['f1']:.4f} | {c['precision']:.4f} | {c['recall']:.4f} | "
                     f"{c['pixels']} |")  # fmt: skip
    classes = report["confusion"]["classes"]
    lines += ["", "Confusion matrix (rows: true class, columns: predicted; `confusion.csv`, `confusion.png`):", "",
              "| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]  # fmt: skip
    for name, row in zip(classes, report["confusion"]["matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", f"Per scene ({report['scene_metric']}):", "", "| scene | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in report["scenes"].items()]
    if "threshold" in report:
        t = report["threshold"]
        lines += ["", f"F1-optimal threshold on the target's probability: {t['f1_optimal']:.2f} (F1 {t['f1']:.4f}; "
                  "the table above uses 0.5). Recorded in the best checkpoint's model card (`extra.threshold`): "
                  "`predict` writes its class map with it."]  # fmt: skip
    return "\n".join(lines) + "\n"


def report_training(task: Any, datamodule: Any, best: Path, run_dir: Path, skipped: list[str]) -> list[Path]:
    """The report of ``task`` (the best weights) on the test split, or the validation split when there is
    none; a binary task's F1-optimal threshold goes into ``best``'s model card. Returns the files written."""
    import torch

    from torchbearer.ml.checkpoint import CARD_KEY

    assert datamodule.split is not None
    on_test = len(datamodule.split.test) > 0
    loader = datamodule.test_dataloader() if on_test else datamodule.val_dataloader()
    note = "" if on_test else "No test split was given (test_regions / test_fraction): these are the validation " \
        "patches, which also chose the best epoch, so the figures are optimistic."  # fmt: skip
    if skipped:
        note += (" " if note else "") + "Skipped scenes: " + "; ".join(skipped)
    names = datamodule.source_names
    report = build_report(evaluate(task, loader), task.card.classes, names, "test" if on_test else "validation",
                          task.card.task == "binary", note)  # fmt: skip
    if "threshold" in report:  # recorded in the card so that predict's class map uses it
        held = torch.load(best, map_location="cpu", weights_only=True)
        held[CARD_KEY].setdefault("extra", {})["threshold"] = report["threshold"]["f1_optimal"]
        part = best.with_name(best.name + ".part")
        torch.save(held, part)
        part.replace(best)
    log.info("evaluation on the %s split: overall accuracy %.4f, mean IoU %.4f", report["split"],
             report["overall_accuracy"], report["mean_iou"])  # fmt: skip
    return write_report(run_dir, report)


def _plot_confusion(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from torchbearer.ml.plots import save_figure

    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 2 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, f"{value}\n{share[r, c]:.2f}", ha="center", va="center",
                color="white" if share[r, c] > 0.5 else "black", fontsize=8)  # fmt: skip
    save_figure(fig, path, dpi=100)
