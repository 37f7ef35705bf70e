"""The dashboard's screens: the queue, one job, and the morning summary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, TabPane

from torchbearer.formatting import STATE_STYLES, display_path, format_duration, format_when
from torchbearer.store import JobState
from torchbearer.tui.data import JobDetail, Summary, curves_by_role, read_summary, read_then_draw
from torchbearer.tui.widgets.dialogs import ChoiceDialog
from torchbearer.tui.widgets.header import HeaderBar
from torchbearer.tui.widgets.job_parts import (
    FailurePanel,
    JobTitle,
    LogTail,
    MetricPlot,
    OutputsList,
    ProgressPanel,
    SpecView,
)
from torchbearer.tui.widgets.panels import RunningPanels
from torchbearer.tui.widgets.preview import ImagePreview
from torchbearer.tui.widgets.queue_table import COLUMNS, QueueTable
from torchbearer.tui.widgets.sweep_trials import SweepTrials

if TYPE_CHECKING:
    from torchbearer.tui.app import TorchbearerApp

#: The filter choices: ``(value, label)``; a value is a comma-separated list of states, "" for all.
FILTERS = [
    ("", "all jobs"),
    (",".join([JobState.RUNNING, JobState.QUEUED, JobState.WAITING, JobState.HELD, JobState.INTERRUPTED]),
     "active (running, queued, waiting, held, interrupted)"),
    *((str(state), str(state)) for state in JobState),
]  # fmt: skip


class MainScreen(Screen):
    """The header, the queue table, a live panel per running job, a line about the highlighted job, the key bar."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
    ]

    app: TorchbearerApp

    def __init__(self, *, clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock = clock
        self.table = QueueTable(clock=clock, id="queue")
        self.running = RunningPanels(id="running")
        self.selected_line = Static(id="selected")

    def compose(self) -> ComposeResult:
        yield HeaderBar()
        yield self.table
        yield self.running
        yield self.selected_line
        yield Footer()

    def on_resize(self) -> None:
        """Panels fold to one line or unfold when the terminal crosses the breakpoints."""
        self.call_after_refresh(lambda: self.running.show(self.running.panels, self.clock()))

    @property
    def job_id(self) -> int | None:
        """The job the job actions apply to: the highlighted one."""
        return self.table.selected_id

    def on_mount(self) -> None:
        self.table.focus()
        self.call_after_refresh(self.app.start_polling)

    def on_queue_table_highlighted(self, _message: QueueTable.Highlighted) -> None:
        self.describe_selected()

    def on_queue_table_selected(self, message: QueueTable.Selected) -> None:
        self.app.open_job(message.job_id)

    def describe_selected(self) -> None:
        """The line under the table: the highlighted job's state, stage, progress and reason."""
        row = self.table.selected_row
        text = Text(no_wrap=True, overflow="ellipsis")
        if row is not None:
            text.append(f"#{row.id} ", style="dim").append(row.name, style="bold").append(" ")
            text.append(row.state, style=STATE_STYLES.get(row.state, ""))
            if row.state == JobState.RUNNING and row.stage:
                text.append(f" · {row.stage}")
                if row.progress is not None:
                    text.append(f" {row.progress * 100:.0f}%")
                if row.eta_s is not None:
                    text.append(f" · ETA {format_duration(row.eta_s)}")
            if row.reason and row.state != JobState.RUNNING:
                text.append(f" · {row.reason}", style="red" if row.state == JobState.FAILED else "dim")
        shown = self.table.state_filter
        text.append(f"   [{len(self.table.order)} of {len(self.table.rows)} jobs", style="dim")
        text.append(f", filter: {', '.join(sorted(shown))}]" if shown else "]", style="dim")
        self.selected_line.update(text)

    def action_filter(self) -> None:
        current = ",".join(sorted(self.table.state_filter)) if self.table.state_filter else ""
        by_sorted = {",".join(sorted(value.split(","))) if value else "": value for value, _ in FILTERS}

        def chosen(value: str | None) -> None:
            if value is not None:
                self.table.set_filter(value.split(",") if value else None)
                self.describe_selected()

        self.app.push_screen(ChoiceDialog("Show jobs in state", FILTERS, current=by_sorted.get(current)), chosen)

    def action_sort(self) -> None:
        table = self.table
        choices = [(c.key, c.label + (" (again: reverse)" if c.key == table.sort_key else "")) for c in COLUMNS]

        def chosen(key: str | None) -> None:
            if key is not None:
                table.set_sort(key, reverse=not table.sort_reverse if key == table.sort_key else False)

        self.app.push_screen(ChoiceDialog("Sort by", choices, current=table.sort_key), chosen)


class JobScreen(Screen):
    """One job: overview (failure, progress, curves, log, preview), full log, outputs and spec, in tabs."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("1", "tab('overview')", "Overview", show=False),
        Binding("2", "tab('log')", "Log", show=False),
        Binding("3", "tab('outputs')", "Outputs", show=False),
        Binding("4", "tab('spec')", "Spec", show=False),
        Binding("l", "tab('log')", "Log"),
        Binding("o", "tab('outputs')", "Outputs", show=False),
        Binding("s", "smooth", "Smooth"),
    ]

    app: TorchbearerApp

    def __init__(self, job_id: int, *, tab: str = "overview") -> None:
        super().__init__()
        self.job_id = job_id
        self.initial_tab = tab
        self.detail: JobDetail | None = None
        self.smooth = False  # per-step curves drawn smoothed (TensorBoard's moving average)
        self._pending: JobDetail | None = None
        # The parts, kept here so drawing never looks them up (a lookup fails while the screen closes).
        self.title_line = JobTitle(f"#{job_id} …", id="job-title")
        self.failure = FailurePanel(id="failure")
        self.progress = ProgressPanel(id="progress")
        self.trials = SweepTrials(id="sweep-trials")  # shown for sweeps only
        self.plots = Horizontal(id="plots")
        self.loss_plot = MetricPlot("loss", id="loss-plot")
        self.metric_plot = MetricPlot("key metric", id="metric-plot")
        self.logs = (LogTail(id="overview-log"), LogTail(id="full-log"))
        self.previews = (ImagePreview(id="overview-preview"), ImagePreview(id="outputs-preview"))
        self.outputs = OutputsList(id="outputs-list")
        self.spec = SpecView(id="spec-view")

    def compose(self) -> ComposeResult:
        yield HeaderBar()
        yield self.title_line
        with TabbedContent(initial=self.initial_tab):
            with TabPane("Overview", id="overview"), VerticalScroll():
                yield self.failure
                yield self.progress
                yield self.trials
                with self.plots:
                    yield self.loss_plot
                    yield self.metric_plot
                with Horizontal(id="overview-bottom"):
                    yield self.logs[0]
                    yield self.previews[0]
            with TabPane("Log", id="log"):
                yield self.logs[1]
            with TabPane("Outputs", id="outputs"), Horizontal():
                yield self.outputs
                yield self.previews[1]
            with TabPane("Spec", id="spec"), VerticalScroll():
                yield self.spec
        yield Footer()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_smooth(self) -> None:
        """Smoothing on or off for the per-step curves."""
        self.smooth = not self.smooth
        if self.detail is not None:
            losses, _ = curves_by_role(self.detail.curves)
            self.loss_plot.show(losses, best_of="val/loss", smooth=self.smooth)
        self.notify(f"smoothing {'on' if self.smooth else 'off'}", timeout=2)

    def on_mount(self) -> None:
        self.call_after_refresh(self._show_pending)

    @property
    def ready(self) -> bool:
        """Whether the parts are mounted (the tabs mount theirs a moment after the screen)."""
        return self.is_mounted and self.spec.is_mounted

    def _show_pending(self) -> None:
        if self._pending is None:
            return
        if not self.ready:
            self.call_after_refresh(self._show_pending)
            return
        pending, self._pending = self._pending, None
        self.show(pending)

    def show(self, detail: JobDetail) -> None:
        """Draw a new reading of the job (from the poller); kept until the parts are mounted if they are not."""
        if not self.ready or self._pending is not None:
            self._pending = detail if self._pending is None else merge_details(self._pending, detail)
            if self.is_mounted:
                self._show_pending()
            return
        first = self.detail is None
        self.detail = detail
        self.title_line.show(detail, self.app.clock())
        self.failure.show(detail)
        self.progress.show(detail)
        self.trials.show(detail)
        losses, key = curves_by_role(detail.curves)
        self.plots.display = bool(losses or key)
        self.loss_plot.show(losses, best_of="val/loss", smooth=self.smooth)
        self.metric_plot.show([key] if key else [])
        for log in self.logs:
            log.show(detail)
        project = self.app.settings.project_dir
        self.outputs.show(detail, project)
        caption = "no map or plot yet"
        if detail.preview_path is not None:
            caption = f"{display_path(detail.preview_path, project)} (cannot be drawn)"
        for preview in self.previews:
            preview.show(detail.preview, caption)
        if first:
            self.spec.show(detail)

    def tick(self, now: float) -> None:
        """Once a second: the running clock in the title."""
        if self.detail is not None and self.detail.job.state == JobState.RUNNING:
            self.title_line.show(self.detail, now)


def merge_details(older: JobDetail, newer: JobDetail) -> JobDetail:
    """One reading from two in a row that were not drawn: the newer, with the log lines and preview of both."""
    return replace(
        newer,
        log_lines=newer.log_lines if newer.log_reset else older.log_lines + newer.log_lines,
        log_reset=older.log_reset or newer.log_reset,
        preview=newer.preview if newer.preview is not None else older.preview,
    )


#: Summary windows: ``(value, label)``; "opened" is "since the dashboard was last opened".
SUMMARY_WINDOWS = [("opened", "since the dashboard was last opened"), ("43200", "last 12 hours"),
                   ("86400", "last 24 hours"), ("604800", "last 7 days")]  # fmt: skip


#: The summary lists failures (with their reasons) first, then what was stopped, then what succeeded.
SUMMARY_ORDER = {JobState.FAILED: 0, JobState.DEPENDENCY_FAILED: 1, JobState.INTERRUPTED: 2, JobState.CANCELLED: 3,
                 JobState.SUCCEEDED: 4}  # fmt: skip


class SummaryScreen(Screen):
    """The morning summary: what ended since a time, how it went, best metrics, time spent, outputs."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,m,q", "app.pop_screen", "Close"),
        Binding("t", "window", "Time window"),
    ]

    app: TorchbearerApp

    def __init__(self, since: float, label: str) -> None:
        super().__init__()
        self.since = since
        self.label = label
        self.title_line = Static(id="summary-title")
        self.body = Static(Text("reading …", style="dim"), id="summary-body")

    def compose(self) -> ComposeResult:
        yield HeaderBar()
        yield self.title_line
        with VerticalScroll():
            yield self.body
        yield Footer()

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="summary", exit_on_error=False)
    def load(self) -> None:
        until = self.app.clock()
        read_then_draw(self.app, lambda store: read_summary(store, self.since, until), self.draw, "no summary")

    def draw(self, summary: Summary) -> None:
        title = Text()
        title.append("Morning summary", style="bold").append(f" since {format_when(summary.since, '%m-%d %H:%M')} ")
        title.append(f"({self.label})", style="dim")
        self.title_line.update(title)
        line = Text()
        line.append(f"{len(summary.rows)} ended: ")
        for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEPENDENCY_FAILED):
            if summary.count(state):
                line.append(f"{summary.count(state)} {state}  ", style=STATE_STYLES[state])
        line.append(f"· {format_duration(summary.run_time_s) or '0s'} of running")
        if summary.pending:
            line.append(" · now " + ", ".join(f"{n} {s}" for s, n in sorted(summary.pending.items())), style="dim")
        table = Table(box=None, header_style="bold", expand=True, pad_edge=False)
        for name, justify in (("id", "right"), ("name", "left"), ("state", "left"), ("time", "right"),
                              ("best", "left"), ("outputs / reason", "left")):  # fmt: skip
            table.add_column(name, justify=justify, overflow="fold")
        project = self.app.settings.project_dir
        for row in sorted(summary.rows, key=lambda r: SUMMARY_ORDER.get(r.state, len(SUMMARY_ORDER))):
            best = f"{row.best[0]} {row.best[1]:.4g}" if row.best else ""
            if row.state == JobState.SUCCEEDED:
                shown = [o for o in row.outputs if o[0] in {"best_checkpoint", "map"}] or list(row.outputs[-2:])
                last = "\n".join(f"{kind}: {display_path(path, project)}" for kind, path in shown)
            else:
                last = row.reason or ""
            table.add_row(str(row.id), row.name, Text(row.state, style=STATE_STYLES.get(row.state, "")),
                          format_duration(row.duration_s), best, last)  # fmt: skip
        body: list = [line, Text("")]
        body.append(table if summary.rows else Text("nothing ended in this window", style="dim"))
        self.body.update(Group(*body))

    def action_window(self) -> None:
        def chosen(value: str | None) -> None:
            if value is None:
                return
            label = dict(SUMMARY_WINDOWS)[value]
            self.since = self.app.last_opened if value == "opened" else self.app.clock() - float(value)
            self.label = label
            self.load()

        self.app.push_screen(ChoiceDialog("Summary of", SUMMARY_WINDOWS), chosen)


def default_since(previous_opened: float | None, now: float) -> float:
    """Since when the summary looks: the previous opening, else the last 12 hours."""
    return previous_opened if previous_opened else now - 12 * 3600
