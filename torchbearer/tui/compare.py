"""Run comparison: several train (or classify) jobs' validation curves overlaid, their best metrics and settings
side by side — what TensorBoard is opened for, without a server.

Open it with ``v`` on the queue (pick the jobs), ``torchbearer tui --compare 3,5,7``, or from code with
``app.open_compare([3, 5, 7])`` (a sweep's trial table opens its trials this way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Label, SelectionList, Static

from torchbearer.formatting import STATE_STYLES
from torchbearer.store import Store
from torchbearer.tui.data import Curve, curve_from_points, key_metric, read_then_draw
from torchbearer.tui.widgets.header import HeaderBar
from torchbearer.tui.widgets.job_parts import MetricPlot

if TYPE_CHECKING:
    from torchbearer.tui.app import TorchbearerApp

#: Spec keys never compared (they differ by design or say nothing about the run).
IGNORED_SETTINGS = {"name", "kind", "after", "priority", "retries", "schedule"}


@dataclass(frozen=True)
class RunSummary:
    """One compared job: its validation curves and best values, and its settings as dotted keys."""

    id: int
    name: str
    kind: str
    state: str
    curves: dict[str, Curve]
    settings: dict[str, Any]

    @property
    def label(self) -> str:
        return f"#{self.id} {self.name}"

    def best(self, metric: str) -> tuple[float, float] | None:
        curve = self.curves.get(metric)
        return curve.best() if curve else None


@dataclass(frozen=True)
class Comparison:
    """The compared jobs, the key metric they are ranked by, and the settings in which they differ."""

    runs: tuple[RunSummary, ...]
    key: str | None
    differing: tuple[str, ...]
    missing: tuple[int, ...] = ()  # asked-for ids that are not in the store


def flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"arch": "unet"}}`` as ``{"model.arch": "unet"}`` (lists kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        if not prefix and key in IGNORED_SETTINGS:
            continue
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_comparison(store: Store, job_ids: list[int]) -> Comparison:
    """Read the jobs' validation (and per-epoch training) curves and specs from the store."""
    runs, missing = [], []
    for job_id in job_ids:
        job = store.job(job_id)
        if job is None:
            missing.append(job_id)
            continue
        points: dict[str, list[tuple[int | None, int | None, float]]] = {}
        for _, name, epoch, step, value in store.metric_points(job_id, validation_only=True):
            points.setdefault(name, []).append((epoch, step, value))
        curves = {name: curve_from_points(name, pts) for name, pts in points.items()}
        runs.append(RunSummary(job.id, job.name, job.kind, job.state, curves, flatten(job.spec or {})))
    key = key_metric({name for run in runs for name in run.curves})
    keys = sorted({k for run in runs for k in run.settings})
    differing = tuple(k for k in keys if len({repr(run.settings.get(k)) for run in runs}) > 1)
    return Comparison(tuple(runs), key, differing, tuple(missing))


def comparable_jobs(store: Store, limit: int = 200) -> list[tuple[int, str]]:
    """Jobs with validation metrics (train, classify …), newest first, as ``(id, "#id name (state)")``."""
    rows = store.jobs_with_metric("val/", limit=limit)
    return [(row[0], f"#{row[0]} {row[1]} · {row[2]} · {row[3]}") for row in rows]


def comparison_table(comparison: Comparison) -> Table:
    """Jobs side by side (a column each): state, best key metric and val/loss with their epochs, settings."""
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    table.add_column("", style="bold", no_wrap=True)
    runs = comparison.runs
    best_of_all = None
    if comparison.key:
        values = [b[1] for run in runs if (b := run.best(comparison.key))]
        if values:
            best_of_all = min(values) if "loss" in comparison.key else max(values)
    for run in runs:
        table.add_column(run.label, overflow="fold")
    table.add_row("state", *(Text(run.state, style=STATE_STYLES.get(run.state, "")) for run in runs))
    for metric in [m for m in (comparison.key, "val/loss") if m]:
        cells = []
        for run in runs:
            best = run.best(metric)
            if best is None:
                cells.append(Text("—", style="dim"))
                continue
            where = f"ep {best[0]:g}" if run.curves[metric].by_epoch else f"step {best[0]:g}"
            winner = metric == comparison.key and best[1] == best_of_all
            cells.append(Text(f"{best[1]:.4g} ({where})", style="bold green" if winner else ""))
        table.add_row(f"best {metric}", *cells)
    table.add_row("epochs", *(str(len(run.curves[comparison.key].y)) if comparison.key in run.curves else "—"
                              for run in runs))  # fmt: skip
    for key in comparison.differing:
        table.add_row(key, *(Text(_setting(run.settings.get(key)), style="yellow") for run in runs))
    return table


def _setting(value: Any) -> str:
    return "—" if value is None else str(value)


class CompareScreen(Screen):
    """The compared jobs' key metric and validation loss curves overlaid, and the side-by-side table."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,backspace", "app.pop_screen", "Back")]

    app: TorchbearerApp

    def __init__(self, job_ids: list[int]) -> None:
        super().__init__()
        self.job_ids = list(job_ids)
        self.comparison: Comparison | None = None
        self.title_line = Static(id="compare-title")
        self.key_plot = MetricPlot("key metric", id="compare-key")
        self.loss_plot = MetricPlot("val/loss", id="compare-loss")
        self.table = Static(Text("reading …", style="dim"), id="compare-table")

    def compose(self) -> ComposeResult:
        yield HeaderBar()
        yield self.title_line
        with VerticalScroll():
            with Horizontal(id="compare-plots"):
                yield self.key_plot
                yield self.loss_plot
            yield self.table
        yield Footer()

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def load(self) -> None:
        read_then_draw(self.app, lambda store: read_comparison(store, self.job_ids), self.draw, "cannot compare")

    def draw(self, comparison: Comparison) -> None:
        self.comparison = comparison
        runs = comparison.runs
        title = Text()
        title.append("Compare ", style="bold").append(", ".join(run.label for run in runs) or "no jobs")
        if comparison.missing:
            title.append(f"  (no job {', '.join(f'#{i}' for i in comparison.missing)})", style="red")
        self.title_line.update(title)
        if comparison.key:
            self.key_plot.title = comparison.key
            self.key_plot.show(*self._overlay(comparison.key))
        self.loss_plot.show(*self._overlay("val/loss"))
        self.table.update(comparison_table(comparison))

    def _overlay(self, metric: str) -> tuple[list[Curve], str | None]:
        """One curve per job for ``metric``, named by the job; and the name of the job with the best value."""
        assert self.comparison is not None
        curves = []
        for run in self.comparison.runs:
            curve = run.curves.get(metric)
            if curve is not None:
                name = run.label if "loss" not in metric else f"{run.label} loss"  # "loss" in a name: lower is better
                curves.append(Curve(name, curve.x, curve.y, curve.by_epoch, curve.steps))
        ranked = [(c.best(), c.name) for c in curves if c.y]
        if not ranked:
            return curves, None
        pick = min if "loss" in metric else max
        return curves, pick(ranked, key=lambda item: item[0][1])[1]  # type: ignore[index]


class CompareDialog(ModalScreen[list[int] | None]):
    """Pick jobs to compare (space marks, Enter compares); Escape picks nothing."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_none", "Close"),
        Binding("enter", "compare", "Compare", priority=True),  # space marks (the list's own key)
    ]

    def __init__(self, choices: list[tuple[int, str]], *, marked: set[int] | None = None) -> None:
        super().__init__()
        self.choices = choices
        self.marked = marked or set()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Compare runs: space marks a job, Enter compares", classes="dialog-question")
            yield SelectionList[int](*((label, job_id, job_id in self.marked) for job_id, label in self.choices),
                                     id="compare-choices")  # fmt: skip

    def on_mount(self) -> None:
        self.query_one(SelectionList).focus()

    def action_compare(self) -> None:
        selected = sorted(self.query_one(SelectionList).selected)
        self.dismiss(selected or None)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
