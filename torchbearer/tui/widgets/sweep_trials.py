"""A sweep's trials in the job view: one row per trial (job, state, parameters, metric), best first.

It reads the sweep's own ``sweep.csv`` (rewritten whole by the sweep whenever a trial moves), only when the
file changed: a few hundred bytes, so no store query and nothing the sweep does not already publish. Hidden for
jobs of any other kind.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from torchbearer.formatting import STATE_STYLES
from torchbearer.sweeps.report import LEADING_COLUMNS, SWEEP_CSV, read_csv
from torchbearer.tui.data import JobDetail

#: Rows drawn at most (the best ones); the whole table is in sweep.csv.
MAX_ROWS = 50


def _value(row: dict[str, str], metric: str) -> float | None:
    try:
        value = float(row.get(metric) or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def sorted_trials(rows: list[dict[str, str]], metric: str, direction: str) -> list[dict[str, str]]:
    """Trials with a metric value best first (``direction``: maximize or minimize), then the others by number."""
    sign = -1.0 if direction == "maximize" else 1.0

    def key(row: dict[str, str]) -> tuple:
        value = _value(row, metric)
        number = int(row["trial"]) if row.get("trial", "").isdigit() else 0
        return (0, sign * value, number) if value is not None else (1, 0.0, number)

    return sorted(rows, key=key)


class SweepTrials(Static):
    """The trials table of a sweep (``kind: sweep``), sorted by its metric."""

    DEFAULT_CSS: ClassVar[str] = """
    SweepTrials {
        height: auto;
        max-height: 20;
        padding: 0 1;
        overflow-y: auto;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._key: tuple | None = None
        self.display = False  # until a sweep is shown

    def show(self, detail: JobDetail) -> None:
        job = detail.job
        self.display = job.kind == "sweep"
        if not self.display:
            return
        path = Path(job.run_dir) / SWEEP_CSV if job.run_dir else None
        try:
            stat = path.stat() if path else None
        except OSError:
            stat = None
        key = (str(path), stat.st_mtime_ns, stat.st_size) if stat else None
        if key == self._key and key is not None:
            return
        self._key = key
        header, rows = read_csv(path) if path else ([], [])
        if not rows:
            self.update(Text("no trials queued yet", style="dim"))
            return
        self.update(self.table(header, rows, job.spec.get("metric", ""), job.spec.get("direction", "maximize")))

    @staticmethod
    def table(header: list[str], rows: list[dict[str, str]], metric: str, direction: str) -> Table:
        """The drawn table: rank, trial job, state, each parameter, the metric, and why a trial has none."""
        params = [c for c in header if c not in (*LEADING_COLUMNS, metric, "note")]
        ordered = sorted_trials(rows, metric, direction)
        ended = sum(1 for r in rows if _value(r, metric) is not None or r.get("note"))
        arrow = "↑" if direction == "maximize" else "↓"
        title = f"trials {ended}/{len(rows)} ended · sorted by {metric} {arrow}"
        table = Table(title=title, title_justify="left", box=None, header_style="bold", expand=True, pad_edge=False)
        for column in ("#", "job", "state", *params, metric, "note"):
            table.add_column(column, no_wrap=column != "note", overflow="ellipsis")
        for rank, row in enumerate(ordered[:MAX_ROWS], start=1):
            value = _value(row, metric)
            best = rank == 1 and value is not None
            table.add_row(
                Text(str(rank) if value is not None else "", style="bold green" if best else ""),
                Text(row.get("job", ""), style="bold" if best else ""),
                Text(row.get("state", ""), style=STATE_STYLES.get(row.get("state", ""), "")),
                *(row.get(p, "") for p in params),
                Text("" if value is None else f"{value:.4g}", style="bold green" if best else ""),
                Text(row.get("note", ""), style="dim"),
            )
        return table
