"""One line of a training's evaluation report (``report.json``, ``ml/report.py``) for ``show`` and the dashboard.

Standard library only: what ``status`` / the dashboard import must not pull numpy's friends (rasterio, torch).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def report_summary(outputs: Iterable[dict[str, Any]]) -> str | None:
    """The summary of the ``report.json`` among a job's outputs; None when there is none (or it is unreadable)."""
    path = next((Path(o["path"]) for o in outputs if Path(o["path"]).name == "report.json"), None)
    try:
        report = json.loads(path.read_text()) if path is not None else None
        if not report:
            return None
        ious = "  ".join(f"{name}={c['iou']:.3f}" for name, c in report["classes"].items())
        threshold = (report.get("threshold") or {}).get("f1_optimal")
        return (f"report ({report['split']} split, {report['pixels']} px): overall accuracy "
                f"{report['overall_accuracy']:.3f}, IoU {ious}"
                + (f", F1-optimal threshold {threshold:.2f}" if threshold is not None else ""))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None
