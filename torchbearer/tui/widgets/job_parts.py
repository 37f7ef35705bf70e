"""The parts of the job view: title line, failure, progress bars, curves, log tail, outputs and spec.

Each part takes a :class:`~torchbearer.tui.data.JobDetail` (and the time, for running clocks) in ``show``
and redraws only when what it shows changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.widgets import RichLog, Static
from textual_plotext import PlotextPlot

from torchbearer.formatting import STATE_STYLES, display_path, format_duration, format_when
from torchbearer.ml.report_summary import report_summary
from torchbearer.store import JobState
from torchbearer.tui.data import Curve, JobDetail, smoothed, wants_log_axis

#: Log lines drawn in red / yellow.
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|FATAL|Traceback|\w+Error|\w+Exception)\b")
WARNING_LINE = re.compile(r"\b(WARN|WARNING|Warning)\b")

#: Progress-event fields shown on the figures line, with their labels and formats.
FIGURES = (("loss", "loss", "{:.4g}"), ("lr", "lr", "{:.2e}"), ("samples_per_s", "samples/s", "{:.0f}"),
           ("data_wait_share", "data wait", "{:.0%}"))  # fmt: skip


def log_text(line: str) -> Text:
    """A log line, red when it reports an error, yellow for a warning."""
    if ERROR_LINE.search(line):
        return Text(line, style="bold red")
    if WARNING_LINE.search(line):
        return Text(line, style="yellow")
    return Text(line)


@dataclass(frozen=True)
class ProgressFigures:
    """What the progress panel draws, read from the latest progress event.

    ``done/total`` is the whole job; the epoch bar comes from ``epoch`` with the fields ``epochs`` (or
    ``max_epochs``) and ``epoch_step``/``epoch_steps`` (or ``batch``/``batches``), as the train kind reports.
    """

    stage: str | None
    job_fraction: float | None
    job_label: str
    epoch_fraction: float | None
    epoch_label: str
    eta_s: float | None
    figures: tuple[tuple[str, str], ...]

    @classmethod
    def from_event(
        cls,
        event: dict[str, Any] | None,
        job_progress: float | None = None,
        latest_metrics: dict[str, float] | None = None,
    ) -> ProgressFigures:
        """``latest_metrics`` (e.g. ``lr``, ``samples_per_s`` logged as metrics) fill figures the event lacks."""
        event = event or {}
        fields = {**(latest_metrics or {}), **(event.get("fields") or {})}
        done, total = event.get("done"), event.get("total")
        job_fraction = done / total if done is not None and total else job_progress
        job_label = f"{done:.0f}/{total:.0f} {event.get('unit') or ''}".rstrip() if done is not None and total else ""
        epoch = event.get("epoch", fields.get("epoch"))
        epochs = fields.get("epochs", fields.get("max_epochs"))
        step = fields.get("epoch_step", fields.get("batch"))
        steps = fields.get("epoch_steps", fields.get("batches"))
        epoch_fraction = step / steps if step is not None and steps else None
        epoch_label = ""
        if epoch is not None:
            epoch_label = f"epoch {epoch}" + (f"/{epochs}" if epochs else "")
            if steps:
                epoch_label += f"  step {step}/{steps}"
        eta = event.get("eta_s") if event.get("eta_s") is not None else fields.get("eta_s", fields.get("eta"))
        figures = tuple(
            (label, fmt.format(fields[key])) for key, label, fmt in FIGURES if isinstance(fields.get(key), int | float)
        )
        return cls(event.get("stage"), job_fraction, job_label, epoch_fraction, epoch_label, eta, figures)


def bar_row(table: Table, label: str, fraction: float, detail: str) -> None:
    table.add_row(
        Text(label, style="bold"),
        ProgressBar(total=1.0, completed=max(0.0, min(1.0, fraction))),
        Text(f"{fraction * 100:5.1f}% {detail}", no_wrap=True, overflow="ellipsis"),
    )


class JobTitle(Static):
    """``#12 fcn · train · running · attempt 2 · started 11-21 02:13 · 1h02m``."""

    def show(self, detail: JobDetail, now: float) -> None:
        job = detail.job
        text = Text()
        text.append(f"#{job.id} ", style="dim").append(job.name, style="bold").append(f" · {job.kind} · ")
        text.append(job.state, style=STATE_STYLES.get(job.state, ""))
        if job.stage and job.state == JobState.RUNNING:
            text.append(f" · {job.stage}")
        if job.attempts:
            text.append(f" · attempt {job.attempts}", style="dim")
        if job.started_at:
            end = job.finished_at if job.finished_at and job.finished_at >= job.started_at else now
            text.append(f" · started {format_when(job.started_at, '%m-%d %H:%M')} · ", style="dim")
            text.append(format_duration(end - job.started_at))
        if job.priority:
            text.append(f" · priority {job.priority}", style="dim")
        self.update(text)


class FailurePanel(Static):
    """Why a job failed (or was cancelled, or lost a dependency), the end of its traceback, and its warnings:
    the pre-flight check's from when it was queued, then those its workers logged."""

    def show(self, detail: JobDetail) -> None:
        job = detail.job
        failed = job.state in {JobState.FAILED, JobState.DEPENDENCY_FAILED, JobState.INTERRUPTED} or bool(
            job.error_tail and job.state != JobState.SUCCEEDED
        )
        self.display = failed or bool(detail.warnings)
        if not self.display:
            return
        parts: list[Any] = []
        if failed:
            parts.append(Text(f"{job.state}: {job.reason or 'no reason recorded'}", style="bold red"))
            if job.error_tail:
                parts.append(Text("\n").join(log_text(line) for line in job.error_tail.splitlines()[-12:]))
        parts += [Text(f"warning: {warning}", style="yellow") for warning in detail.warnings]
        self.update(Group(*parts))


class ProgressPanel(Static):
    """The stage, the epoch and whole-job bars with the ETA, and the latest loss, lr and samples/s."""

    def show(self, detail: JobDetail) -> None:
        job = detail.job
        latest = {key: curve.y[-1] for key, _, _ in FIGURES if (curve := detail.curves.get(key)) and curve.y}
        figures = ProgressFigures.from_event(detail.progress, job.progress, latest)
        done = job.state == JobState.SUCCEEDED
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(width=5, no_wrap=True)
        table.add_column(ratio=1)  # the bars take the room left
        table.add_column(ratio=1, no_wrap=True)
        stage = job.stage or figures.stage if job.state == JobState.RUNNING else job.state
        table.add_row(Text("stage", style="bold"), Text(stage or "—"), Text(""))
        if figures.epoch_fraction is not None and not done:
            bar_row(table, "epoch", figures.epoch_fraction, figures.epoch_label)
        job_fraction = 1.0 if done else figures.job_fraction
        if job_fraction is not None:
            eta = f"ETA {format_duration(figures.eta_s)}" if figures.eta_s is not None and not done else ""
            label = figures.job_label
            if figures.epoch_fraction is None:  # no epoch bar: say the epoch on the job bar
                label = f"{figures.epoch_label} {label}"
            bar_row(table, "job", job_fraction, f"{label.strip()}  {eta}".strip())
        line = Text("  ".join(f"{label} {value}" for label, value in figures.figures), style="dim")
        line.no_wrap, line.overflow = True, "ellipsis"
        self.update(Group(table, line) if figures.figures else table)


class MetricPlot(PlotextPlot):
    """Curves against epoch (or step), with the best point of one of them (``best_of``, else the first) marked.

    Honest about scale: a log y axis for losses and for values spanning more than two decades (a loss that starts
    at 11 269 would otherwise flatten every later value to the bottom line). Per-step and per-epoch series are
    drawn together on a step axis, each under its own name; ``smooth`` draws per-step series smoothed
    (TensorBoard's moving average) over their raw values.
    """

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self._shown: tuple | None = None
        self.smooth = False
        self.log_axis = False  # whether the last drawing used a log y axis (tests look)

    def show(self, curves: list[Curve], best_of: str | None = None, *, smooth: bool = False) -> None:
        key = tuple((c.name, c.x, c.y) for c in curves)
        if key == self._shown and smooth == self.smooth:
            return
        self._shown, self.smooth = key, smooth
        plt = self.plt
        plt.clear_data()
        curves = [curve for curve in curves if curve.y]
        if not curves:
            plt.title(f"{self.title}: no values yet")
            self.refresh()
            return
        by_step = any(not c.by_epoch for c in curves) and any(c.by_epoch and c.steps for c in curves)

        def xs(curve: Curve) -> list[float]:
            if by_step and curve.by_epoch and curve.steps and None not in curve.steps:
                return [float(s) for s in curve.steps]  # type: ignore[arg-type]
            return list(curve.x)

        self.log_axis = wants_log_axis(curves)
        plt.yscale("log" if self.log_axis else "linear")
        for curve in curves:
            if smooth and not curve.by_epoch and len(curve.y) > 2:
                plt.plot(xs(curve), list(curve.y), marker="braille", color="gray")
                plt.plot(xs(curve), smoothed(curve.y), label=f"{curve.name} (smoothed)", marker="braille")
            else:
                plt.plot(xs(curve), list(curve.y), label=curve.name, marker="braille")
        marked = next((c for c in curves if c.name == best_of), curves[0])
        best = marked.best()
        assert best is not None
        x, value = best
        index = marked.x.index(x)
        where = f"epoch {x:g}" if marked.by_epoch else f"step {x:g}"
        drawn_x = xs(marked)[index]
        plt.vertical_line(drawn_x, color="green")
        plt.scatter([drawn_x], [value], marker="●", color="green")
        scale = " (log)" if self.log_axis else ""
        plt.title(f"{marked.name}: best {value:.4g} at {where}{scale}")
        plt.xlabel("epoch" if marked.by_epoch and not by_step else "step")
        if marked.by_epoch and not by_step:  # whole epochs, at most about ten ticks
            last = int(max(max(c.x) for c in curves))
            plt.xticks(list(range(0, last + 1, max(1, (last + 9) // 10))))
        self.refresh()


class LogTail(RichLog):
    """The end of the job's log, followed as it grows; errors in red, warnings in yellow."""

    def __init__(self, *, id: str | None = None, max_lines: int = 2000) -> None:
        super().__init__(id=id, max_lines=max_lines, wrap=False, highlight=False, markup=False, auto_scroll=True)

    def show(self, detail: JobDetail) -> None:
        if detail.log_reset:
            self.clear()
            if not detail.log_lines:
                self.write(Text(f"no log yet ({detail.log_path.name} appears when the job starts)", style="dim"))
        for line in detail.log_lines:
            self.write(log_text(line))


class OutputsList(Static):
    """The job's products with their kinds and paths (relative to the project folder)."""

    def show(self, detail: JobDetail, project_dir: Path) -> None:
        if not detail.outputs:
            self.update(Text("no outputs yet", style="dim"))
            return
        table = Table(box=None, show_header=True, header_style="bold", expand=True, pad_edge=False)
        table.add_column("kind", no_wrap=True)
        table.add_column("path", overflow="fold")
        table.add_column("written", no_wrap=True)
        for output in detail.outputs:
            exists = Path(output["path"]).exists()
            path = Text(display_path(output["path"], project_dir), style="" if exists else "dim strike")
            table.add_row(output["kind"], path, format_when(output["time"], "%m-%d %H:%M"))
        summary = report_summary(detail.outputs)  # a training's evaluation report, in one line
        self.update(Group(Text(summary, style="bold"), table) if summary else table)


class SpecView(Static):
    """The job's resolved spec, as YAML."""

    def show(self, detail: JobDetail) -> None:
        import yaml

        self.update(Text(yaml.safe_dump(detail.job.spec, sort_keys=False).rstrip()))
