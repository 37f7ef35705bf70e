"""The main screen's live panels, one per running job: stage, progress with ETA, the key curve, the last log lines.

At 80×24 (the screen without the ``-tall``/``-wide`` classes) each panel folds to one line; in a large terminal
it takes a box with the bars, the curve as a sparkline and the log tail.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widget import Widget

from torchbearer.formatting import format_duration
from torchbearer.tui.data import Curve, RunPanel
from torchbearer.tui.widgets.job_parts import ProgressFigures, bar_row, log_text

#: Eight heights of a sparkline cell, lowest first.
SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float] | tuple[float, ...], width: int, *, low: float | None = None,
              high: float | None = None) -> str:  # fmt: skip
    """``values`` as at most ``width`` block characters (the newest kept), scaled to ``low``–``high`` (their range)."""
    values = list(values)[-width:] if width > 0 else []
    if not values:
        return ""
    low = min(values) if low is None else low
    high = max(values) if high is None else high
    span = high - low
    if span <= 0:
        return SPARKS[len(SPARKS) // 2] * len(values)
    top = len(SPARKS) - 1
    return "".join(SPARKS[max(0, min(top, round((v - low) / span * top)))] for v in values)


def curve_text(curve: Curve | None, width: int) -> Text:
    """``val/iou 0.529 ▁▃▅▇ best 0.529 @ep2``: the latest value, the curve, the best point."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if curve is None or not curve.y:
        return text.append("no metrics yet", style="dim")
    best = curve.best()
    text.append(f"{curve.name} ", style="bold").append(f"{curve.y[-1]:.4g} ")
    text.append(sparkline(curve.y, max(4, width)), style="cyan")
    if best is not None:
        where = f"ep{best[0]:g}" if curve.by_epoch else f"step {best[0]:g}"
        text.append(f" best {best[1]:.4g} @{where}", style="green")
    return text


class JobPanel(Widget):
    """One running job; ``compact`` folds it to one line."""

    DEFAULT_CSS = """
    JobPanel { height: auto; }
    JobPanel.-compact { height: 1; padding: 0 1; }
    JobPanel.-full { border: round $primary-darken-1; padding: 0 1; height: auto; }
    """

    def __init__(self, panel: RunPanel, now: float, *, compact: bool) -> None:
        super().__init__(id=f"panel-{panel.id}")
        self.panel, self.now = panel, now
        self.set_class(compact, "-compact")
        self.set_class(not compact, "-full")

    @property
    def compact(self) -> bool:
        return self.has_class("-compact")

    def set_panel(self, panel: RunPanel, now: float, *, compact: bool) -> None:
        if (panel, compact) != (self.panel, self.compact) or now - self.now >= 1:
            self.panel, self.now = panel, now
            self.set_class(compact, "-compact")
            self.set_class(not compact, "-full")
            self.refresh(layout=True)

    def render(self) -> RenderableType:
        panel = self.panel
        figures = ProgressFigures.from_event(panel.event, panel.progress)
        eta = panel.eta_s if panel.eta_s is not None else figures.eta_s
        fraction = figures.job_fraction if figures.job_fraction is not None else panel.progress
        if self.compact:
            return self._one_line(panel, figures, fraction, eta)
        ran = format_duration(self.now - panel.started_at) if panel.started_at else ""
        self.border_title = f"#{panel.id} {panel.name} · {panel.kind} · {panel.stage or figures.stage or '…'} · {ran}"
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(width=5, no_wrap=True)
        table.add_column(ratio=1)
        table.add_column(ratio=1, no_wrap=True)
        if figures.epoch_fraction is not None:
            bar_row(table, "epoch", figures.epoch_fraction, figures.epoch_label)
        if fraction is not None:
            label = (
                figures.job_label
                if figures.epoch_fraction is not None
                else f"{figures.epoch_label} {figures.job_label}"
            )
            bar_row(table, "job", fraction, f"{label.strip()}  ETA {format_duration(eta)}" if eta else label.strip())
        parts: list[RenderableType] = [table, curve_text(panel.curve, max(8, self.size.width // 3))]
        if figures.figures:
            parts.append(Text("  ".join(f"{k} {v}" for k, v in figures.figures), style="dim", no_wrap=True))
        for line in panel.log_tail[-3:]:
            text = log_text(line)
            text.no_wrap, text.overflow = True, "ellipsis"
            text.stylize("dim") if not text.style else None
            parts.append(text)
        return Group(*parts)

    def _one_line(self, panel: RunPanel, figures: ProgressFigures, fraction: float | None, eta: float | None) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("▶ ", style="green").append(f"#{panel.id} ", style="dim").append(panel.name, style="bold")
        text.append(f" {panel.stage or figures.stage or '…'}")
        if fraction is not None:
            cells = 10
            filled = round(max(0.0, min(1.0, fraction)) * cells)
            text.append(" ").append("━" * filled, style="magenta").append("━" * (cells - filled), style="grey35")
            text.append(f" {fraction * 100:.0f}%")
        if figures.epoch_label:
            text.append(f" {figures.epoch_label.split('  ')[0]}", style="dim")
        if eta is not None:
            text.append(f" ETA {format_duration(eta)}")
        text.append("  ").append_text(curve_text(panel.curve, 8))
        return text


class RunningPanels(VerticalScroll):
    """The running jobs' panels under the queue; hidden while nothing runs."""

    DEFAULT_CSS = """
    RunningPanels { height: auto; max-height: 40%; display: none; }
    RunningPanels.-running { display: block; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.panels: tuple[RunPanel, ...] = ()

    @property
    def compact(self) -> bool:
        """One line each unless the terminal is both wide and tall (the app's breakpoint classes)."""
        return not (self.screen.has_class("-wide") and self.screen.has_class("-tall"))

    def show(self, panels: tuple[RunPanel, ...], now: float) -> None:
        self.panels = panels
        self.set_class(bool(panels), "-running")
        compact = self.compact
        wanted = {f"panel-{p.id}" for p in panels}
        for child in list(self.children):
            if child.id not in wanted:
                child.remove()
        for panel in panels:
            existing = self.query(f"#panel-{panel.id}")
            if existing:
                existing.first(JobPanel).set_panel(panel, now, compact=compact)
            else:
                self.mount(JobPanel(panel, now, compact=compact))
