"""The morning report: what the night did, as Markdown and HTML in ``reports/``.

``torchbearer report [--since]`` writes it, and so does the daemon at ``TORCHBEARER_REPORT_AT`` (a cron
expression, APScheduler), which also sends it through the notifiers (``notify.py``, event ``report``, the HTML
file attached where the service takes attachments). It lists every job that ended (or still runs) since
``since``: job, kind, state, duration, best metric, outputs, and for a failed job its reason with the last line
of its traceback; the GPU-hours its attempts held; and for train and classify jobs a small PNG of their curves.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from torchbearer.notify import best_metric, format_duration
from torchbearer.redact import scrub
from torchbearer.store import Job, JobState, Store

#: Kinds whose curves are drawn.
CURVE_KINDS = frozenset({"train", "classify"})
#: Metrics drawn in a job's curve PNG, when it logged them.
CURVE_METRICS = ("train/loss_epoch", "val/loss", "val/iou", "val/accuracy")
#: Meta key of the last report's time (the default ``since`` of the next one).
LAST_REPORT_KEY = "last-report"
DEFAULT_SINCE_S = 24 * 3600.0
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b.*")


@dataclass
class Row:
    """One job of the report."""

    job_id: int
    name: str
    kind: str
    state: str
    duration: str
    best: str
    outputs: list[str]
    reason: str
    curves: str | None = None


@dataclass
class Report:
    """A written report: its files, its rows and its figures."""

    since: float
    until: float
    rows: list[Row]
    gpu_hours: float
    markdown: Path | None = None
    html: Path | None = None
    pictures: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.state] = counts.get(row.state, 0) + 1
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no jobs"
        return f"{len(self.rows)} jobs since {_when(self.since)}: {states}; {self.gpu_hours:.2f} GPU-hours"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def last_traceback_line(tail: str | None) -> str | None:
    """The exception line closest to the end of a log tail (``RuntimeError: …``), else None."""
    for line in reversed((tail or "").splitlines()):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()
    return None


def night_jobs(store: Store, since: float) -> list[Job]:
    """Jobs that ended since ``since``, and those running now, in id order."""
    return [
        job
        for job in store.jobs(since=since)
        if job.state == JobState.RUNNING or (job.is_terminal and (job.finished_at or job.updated_at) >= since)
    ]


def gpu_hours(store: Store, jobs: list[Job], since: float, now: float) -> float:
    """GPU-hours held by the jobs' attempts within [since, now]: duration × GPUs named in the attempt's slot."""
    total_s = 0.0
    for job in jobs:
        for attempt in store.attempts(job.id):
            gpus = [s for s in (attempt.get("slot") or "").split(",") if s.strip().isdigit()]
            start, end = max(attempt["started_at"], since), min(attempt.get("finished_at") or now, now)
            if gpus and end > start:
                total_s += (end - start) * len(gpus)
    return total_s / 3600.0


def _row(store: Store, job: Job, project_dir: Path) -> Row:
    best = best_metric(store, job)
    outputs = []
    for output in store.outputs(job.id):
        path = Path(output["path"])
        shown = path.relative_to(project_dir) if path.is_relative_to(project_dir) else path
        outputs.append(f"{output['kind']}: {shown}")
    reason = job.reason or ""
    if job.state == JobState.FAILED:
        last = last_traceback_line(job.error_tail)
        if last and last not in reason:
            reason = f"{reason} — {last}" if reason else last
    return Row(job.id, job.name, job.kind, job.state, format_duration(job.duration_s) if job.duration_s else "",
               f"{best['name']} {best['value']:.4g}" if best else "", outputs, scrub(reason))  # fmt: skip


def _curves(store: Store, job: Job, path: Path) -> Path | None:
    """A small PNG of the job's curves (per step, or per epoch), or None when it logged none of them."""
    series = {name: store.metrics(job.id, name) for name in CURVE_METRICS}
    series = {name: rows for name, rows in series.items() if rows}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    from torchbearer.ml.plots import save_figure

    fig, ax = plt.subplots(figsize=(4, 2.5))
    for name, rows in series.items():
        xs = [r["step"] if r["step"] is not None else (r["epoch"] or i) for i, r in enumerate(rows)]
        ax.plot(xs, [r["value"] for r in rows], label=name, marker="." if len(rows) < 30 else None)
    ax.set_xlabel("step")
    ax.set_title(f"{job.name} (#{job.id})", fontsize=9)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)


def build_report(store: Store, settings: Any, since: float | None = None, *, now: float | None = None) -> Report:
    """Collect the night since ``since`` (default: the last report, else 24 h ago) and write its files."""
    now = time.time() if now is None else now
    if since is None:
        since = float(store.meta(LAST_REPORT_KEY) or now - DEFAULT_SINCE_S)
    jobs = night_jobs(store, since)
    folder = Path(settings.project_dir) / "reports"
    stamp = datetime.fromtimestamp(now).strftime("%Y%m%d-%H%M%S")
    rows = [_row(store, job, Path(settings.project_dir)) for job in jobs]
    report = Report(since, now, rows, gpu_hours(store, jobs, since, now))
    for row, job in zip(rows, jobs, strict=True):
        if job.kind in CURVE_KINDS:
            picture = _curves(store, job, folder / f"{stamp}-{job.id}-{job.name}.png")
            if picture is not None:
                row.curves = picture.name
                report.pictures.append(picture)
    folder.mkdir(parents=True, exist_ok=True)
    report.markdown = folder / f"report-{stamp}.md"
    report.markdown.write_text(to_markdown(report), encoding="utf-8")
    report.html = folder / f"report-{stamp}.html"
    report.html.write_text(to_html(report), encoding="utf-8")
    store.set_meta(LAST_REPORT_KEY, now)
    return report


_COLUMNS = ("job", "kind", "state", "duration", "best metric", "outputs", "reason")


def _cells(row: Row) -> list[str]:
    return [f"{row.name} (#{row.job_id})", row.kind, row.state, row.duration, row.best, "; ".join(row.outputs),
            row.reason]  # fmt: skip


def to_markdown(report: Report) -> str:
    lines = [f"# torchbearer: the night of {_when(report.since)} to {_when(report.until)}", "",
             report.summary(), "", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]  # fmt: skip
    for row in report.rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in _cells(row)) + " |")
    for row in report.rows:
        if row.curves:
            lines += ["", f"![{row.name} curves]({row.curves})"]
    return "\n".join(lines) + "\n"


def to_html(report: Report) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
    body = "".join(
        f'<tr class="{html.escape(row.state)}">' + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(row)) + "</tr>"
        for row in report.rows
    )
    pictures = "".join(f'<p><img src="{html.escape(row.curves)}" alt="{html.escape(row.name)} curves"></p>'
                       for row in report.rows if row.curves)  # fmt: skip
    title = f"torchbearer: the night of {_when(report.since)} to {_when(report.until)}"
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>td,th{border:1px solid #ccc;padding:2px 6px}table{border-collapse:collapse}"
            ".failed td{background:#fdd}.succeeded td{background:#dfd}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(report.summary())}</p>"
            f"<table><tr>{head}</tr>{body}</table>{pictures}</body></html>\n")  # fmt: skip
