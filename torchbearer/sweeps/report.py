"""What a sweep writes: ``sweep.csv`` (one row per trial: its job, state, parameters and metric) and
``best.json`` (the best trial). Both are rewritten whole, through a temporary file, whenever a trial moves,
so a reader (the dashboard) never sees half a file."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SWEEP_CSV = "sweep.csv"
BEST_JSON = "best.json"
#: The columns before the parameters; the metric (named as in the spec) and ``note`` come after them.
LEADING_COLUMNS = ("trial", "job", "job_id", "state")


@dataclass(frozen=True)
class TrialRow:
    """One trial of a sweep as reported: ``trial`` counts from 1 (the ``n`` of its job ``<sweep>-<n>``)."""

    trial: int
    job: str
    job_id: int | None
    state: str
    params: dict[str, Any] = field(default_factory=dict)
    value: float | None = None
    note: str = ""


def best_row(rows: list[TrialRow], direction: str) -> TrialRow | None:
    """The trial with the best metric (the earliest of equals), or None when none has one."""
    scored = [r for r in rows if r.value is not None]
    if not scored:
        return None
    sign = -1 if direction == "maximize" else 1
    return min(scored, key=lambda r: (sign * r.value, r.trial))


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_csv(path: Path, rows: list[TrialRow], keys: list[str], metric: str) -> None:
    """``sweep.csv``: trial, job, job_id, state, one column per parameter, the metric, note."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*LEADING_COLUMNS, *keys, metric, "note"])
    for row in sorted(rows, key=lambda r: r.trial):
        writer.writerow([row.trial, row.job, row.job_id if row.job_id is not None else "", row.state,
                         *(row.params.get(k, "") for k in keys), "" if row.value is None else repr(row.value),
                         row.note])  # fmt: skip
    _write_atomic(path, buffer.getvalue())


def write_best(path: Path, best: TrialRow, metric: str, direction: str, checkpoint: str | None) -> None:
    """``best.json``: the best trial, its parameters, metric value and checkpoint."""
    document = {
        "trial": best.trial, "job": best.job, "job_id": best.job_id, "metric": metric, "direction": direction,
        "value": best.value, "params": best.params, "checkpoint": checkpoint,
    }  # fmt: skip
    _write_atomic(path, json.dumps(document, indent=2, default=str) + "\n")


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a ``sweep.csv`` (for the dashboard); empty when it does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return [], []
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)
