"""The end-of-training report of a patch classifier on its held-out split.

:func:`write_report` writes, into a run folder: ``report.json`` (every figure), ``report.md`` (the same as
tables), ``confusion_matrix.png`` (single-label: true × predicted counts; multi-label: one 2 × 2 matrix a
class) and ``roc.png`` (single-label: one-vs-rest ROC curve a class) or ``pr.png`` (multi-label:
precision-recall curve a class). Curves are drawn for the classes present in the split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchbearer.ml.plots import save_figure


@torch.inference_mode()
def predict_batches(task: Any, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N × classes) and labels of every batch of ``loader``, with ``task`` in eval mode."""
    task.eval()
    probabilities, labels = [], []
    for batch in loader:
        image = task.standardise(batch["image"].to(task.device))
        probabilities.append(task.probabilities(task(image)).float().cpu().numpy())
        labels.append(batch["label"].numpy())
    if not probabilities:
        return np.zeros((0, task.card.num_classes), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(probabilities), np.concatenate(labels)


def classification_figures(probabilities: np.ndarray, labels: np.ndarray, classes: list[str],
                           multilabel: bool) -> dict[str, Any]:  # fmt: skip
    """Accuracy, macro F1, per-class precision / recall / F1 / support; multi-label adds micro F1 and mAP."""
    from sklearn.metrics import accuracy_score, average_precision_score, precision_recall_fscore_support

    n = len(classes)
    if multilabel:
        predicted = (probabilities >= 0.5).astype(int)
        truth = labels.astype(int)
    else:
        predicted, truth = probabilities.argmax(axis=1), labels.astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=None if multilabel else list(range(n)), zero_division=0
    )
    figures: dict[str, Any] = {
        "patches": len(labels),
        "accuracy": float(
            accuracy_score(truth.ravel(), predicted.ravel()) if multilabel else accuracy_score(truth, predicted)
        ),
        "f1_macro": float(np.mean(f1)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }
    if multilabel:
        _, _, micro, _ = precision_recall_fscore_support(truth, predicted, average="micro", zero_division=0)
        present = truth.sum(axis=0) > 0
        figures["f1_micro"] = float(micro)
        figures["map"] = (float(average_precision_score(truth[:, present], probabilities[:, present], average="macro"))
                          if present.any() else None)  # fmt: skip
    return figures


def write_report(
    run_dir: Path, probabilities: np.ndarray, labels: np.ndarray, classes: list[str], multilabel: bool,
    *, split: str, extra: dict[str, Any] | None = None,
) -> dict[str, Path]:  # fmt: skip
    """Write the report files of a held-out ``split`` into ``run_dir``; returns them by kind of product."""
    figures = classification_figures(probabilities, labels, classes, multilabel)
    report = {"split": split, "task": "multilabel" if multilabel else "multiclass", "classes": classes,
              **figures, **(extra or {})}  # fmt: skip
    paths = {"report": run_dir / "report.json", "report_md": run_dir / "report.md"}
    paths["report"].write_text(json.dumps(report, indent=2))
    paths["report_md"].write_text(_markdown(report))
    paths["confusion"] = _confusion_png(run_dir / "confusion_matrix.png", probabilities, labels, classes, multilabel)
    curves = _curves_png(run_dir / ("pr.png" if multilabel else "roc.png"), probabilities, labels, classes, multilabel)
    if curves is not None:
        paths["curves"] = curves
    return paths


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# Classification report ({report['split']} split, {report['patches']} patches)", ""]
    overall = ["accuracy", "f1_macro", "f1_micro", "map"]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {report[k]:.4f} |" for k in overall if isinstance(report.get(k), float)]
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, row in report["per_class"].items():
        lines.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |")
    if report.get("class_weights"):
        lines += ["", f"Class weights: {json.dumps(report['class_weights'])}"]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a GPU server
    import matplotlib.pyplot as plt

    return plt


def _confusion_png(path: Path, probabilities: np.ndarray, labels: np.ndarray, classes: list[str],
                   multilabel: bool) -> Path:  # fmt: skip
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, multilabel_confusion_matrix

    plt = _pyplot()
    if multilabel:
        matrices = multilabel_confusion_matrix(labels.astype(int), (probabilities >= 0.5).astype(int))
        columns = min(4, len(classes))
        rows = -(-len(classes) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
        for ax, matrix, name in zip(axes.ravel(), matrices, classes, strict=False):
            ConfusionMatrixDisplay(matrix, display_labels=["no", "yes"]).plot(ax=ax, colorbar=False)
            ax.set_title(name[:28], fontsize=8)
        for ax in axes.ravel()[len(classes) :]:
            ax.axis("off")
    else:
        matrix = confusion_matrix(labels, probabilities.argmax(axis=1), labels=list(range(len(classes))))
        size = max(4, 0.7 * len(classes) + 2)
        fig, ax = plt.subplots(figsize=(size, size))
        ConfusionMatrixDisplay(matrix, display_labels=classes).plot(ax=ax, colorbar=False, xticks_rotation=45)
    return save_figure(fig, path)


def _curves_png(path: Path, probabilities: np.ndarray, labels: np.ndarray, classes: list[str],
                multilabel: bool) -> Path | None:  # fmt: skip
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    truth = labels.astype(int) if multilabel else np.eye(len(classes), dtype=int)[labels.astype(int)]
    drawn = [i for i in range(len(classes)) if 0 < truth[:, i].sum() < len(truth)]  # both outcomes present
    if not drawn:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for i in drawn:
        display = PrecisionRecallDisplay if multilabel else RocCurveDisplay
        display.from_predictions(truth[:, i], probabilities[:, i], name=classes[i][:28], ax=ax)
    ax.set_title("precision-recall per class" if multilabel else "ROC per class (one vs rest)")
    return save_figure(fig, path)
