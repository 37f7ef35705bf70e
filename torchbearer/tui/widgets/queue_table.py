"""The queue table: every job, one line each, sortable and filterable by state, fast with 10 000 jobs.

A Line-API widget: it keeps the rows in a dict and the visible order in a list, and renders only the lines on
screen, so an update costs what changed (a resort only when a row moves), never a rebuild of 10 000 cells.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from torchbearer.formatting import STATE_STYLES, format_duration, format_when
from torchbearer.store import JobState
from torchbearer.tui.data import JobRow

#: States in the order a "by state" sort lists them: what needs attention first.
STATE_ORDER = {
    state: i
    for i, state in enumerate(
        [
            JobState.RUNNING,
            JobState.FAILED,
            JobState.INTERRUPTED,
            JobState.QUEUED,
            JobState.WAITING,
            JobState.HELD,
            JobState.DEPENDENCY_FAILED,
            JobState.CANCELLED,
            JobState.SUCCEEDED,
        ]
    )
}

#: Shorter names where the state column is narrow.
STATE_LABELS = {JobState.DEPENDENCY_FAILED: "dep-failed"}


@dataclass(frozen=True)
class Column:
    """A table column: ``width`` in cells (0: takes the room left), ``drop`` > 0 hides it early when narrow."""

    key: str
    label: str
    width: int
    justify: str = "left"
    drop: int = 0


COLUMNS: tuple[Column, ...] = (
    Column("id", "id", 6, "right"),
    Column("name", "name", 0),
    Column("kind", "kind", 8, drop=2),
    Column("state", "state", 11),
    Column("stage", "stage", 14, drop=4),
    Column("progress", "prog", 5, "right"),
    Column("eta", "eta", 6, "right", drop=5),
    Column("priority", "prio", 4, "right", drop=3),
    Column("started", "started", 11, drop=1),
    Column("duration", "time", 6, "right"),
)
COLUMN_KEYS = tuple(column.key for column in COLUMNS)
MIN_NAME_WIDTH = 16
MAX_NAME_WIDTH = 48  # past this, the columns stay together on the left of a wide terminal


def sort_value(row: JobRow, key: str, now: float) -> Any:
    """What a row sorts by in a column; missing values sort first."""
    values = {
        "id": lambda: row.id,
        "name": lambda: row.name.lower(),
        "kind": lambda: row.kind,
        "state": lambda: STATE_ORDER.get(row.state, len(STATE_ORDER)),
        "stage": lambda: row.stage or "",
        "progress": lambda: row.progress if row.progress is not None else -1.0,
        "eta": lambda: row.eta_s if row.eta_s is not None else -1.0,
        "priority": lambda: row.priority,
        "started": lambda: row.started_at or 0.0,
        "duration": lambda: row.duration_s(now) or 0.0,
    }
    return (values[key](), row.id)


def cell_text(row: JobRow, key: str, now: float) -> str:
    """A row's text in a column."""
    if key == "id":
        return str(row.id)
    if key == "state":
        return STATE_LABELS.get(row.state, row.state)
    if key == "progress":
        return f"{row.progress * 100:.0f}%" if row.progress is not None else ""
    if key == "eta":
        return format_duration(row.eta_s) if row.state == JobState.RUNNING else ""
    if key == "started":
        return format_when(row.started_at, "%m-%d %H:%M")
    if key == "duration":
        return format_duration(row.duration_s(now))
    if key == "stage":  # what a job does now; a finished job's last stage says nothing
        return row.stage or "" if row.state == JobState.RUNNING else ""
    if key == "priority":
        return str(row.priority)
    return str(getattr(row, key) or "")


@cache
def state_style(state: str) -> Style:
    return Style.parse(STATE_STYLES.get(state, "")) if STATE_STYLES.get(state) else Style()


def fit(text: str, width: int, justify: str) -> str:
    """``text`` cut (with an ellipsis) or padded to exactly ``width`` cells."""
    if len(text) > width:
        return text[: max(0, width - 1)] + "…" if width else ""
    return text.rjust(width) if justify == "right" else text.ljust(width)


def layout(width: int) -> list[tuple[Column, int]]:
    """The columns that fit in ``width`` cells with their widths: drops the ``drop`` ones first, in order."""
    columns = list(COLUMNS)
    for drop in sorted({c.drop for c in COLUMNS if c.drop}):
        fixed = sum(c.width for c in columns) + len(columns) - 1
        if width - fixed >= MIN_NAME_WIDTH:
            break
        columns = [c for c in columns if c.drop != drop]
    fixed = sum(c.width for c in columns) + len(columns) - 1
    name = max(MIN_NAME_WIDTH, min(MAX_NAME_WIDTH, width - fixed))
    return [(c, c.width or name) for c in columns]


class QueueTable(ScrollView, can_focus=True):
    """Jobs, one per line, under a fixed header line. Arrow keys move; Enter opens the job."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,g", "cursor(-1000000000)", "First", show=False),
        Binding("end,G", "cursor(1000000000)", "Last", show=False),
        Binding("enter", "select", "Open job"),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {"queue-table--header", "queue-table--cursor"}
    DEFAULT_CSS = """
    QueueTable {
        overflow-x: hidden;
        background: $surface;
    }
    QueueTable > .queue-table--header { text-style: bold; color: $text-accent; }
    QueueTable > .queue-table--cursor { background: $block-cursor-background; color: $block-cursor-foreground; }
    QueueTable:blur > .queue-table--cursor { background: $block-cursor-blurred-background; }
    """

    class Highlighted(Message):
        """The cursor is on another job (``job_id`` None when the table is empty)."""

        def __init__(self, job_id: int | None) -> None:
            super().__init__()
            self.job_id = job_id

    class Selected(Message):
        """Enter on a job: open it."""

        def __init__(self, job_id: int) -> None:
            super().__init__()
            self.job_id = job_id

    def __init__(self, *, clock: Callable[[], float], id: str | None = None) -> None:
        super().__init__(id=id)
        self.clock = clock
        self.rows: dict[int, JobRow] = {}
        self.order: list[int] = []  # ids of the rows shown, in display order
        self.cursor = 0
        self.sort_key = "id"
        self.sort_reverse = False
        self.state_filter: frozenset[str] | None = None
        self._highlighted: int | None = None
        self._strips: LRUCache[tuple, Strip] = LRUCache(1024)

    # -- data -----------------------------------------------------------------------------------------------

    @property
    def selected_id(self) -> int | None:
        return self.order[self.cursor] if self.order else None

    @property
    def selected_row(self) -> JobRow | None:
        job_id = self.selected_id
        return self.rows.get(job_id) if job_id is not None else None

    def apply_rows(self, rows: Iterable[JobRow], *, full: bool = False) -> int:
        """Take new or changed rows (all of them when ``full``); returns how many changed."""
        rows = list(rows)
        now = self.clock()
        first_load = not self.rows
        reorder = False
        if full:
            gone = self.rows.keys() - {row.id for row in rows}
            for job_id in gone:
                del self.rows[job_id]
            reorder = bool(gone)
        changed = 0
        for row in rows:
            old = self.rows.get(row.id)
            if old == row:
                continue
            changed += 1
            self.rows[row.id] = row
            reorder = reorder or old is None or self._moves(old, row, now)
        if reorder:
            self._rebuild_order(now)
            if first_load and self.order:
                running = [i for i, job_id in enumerate(self.order) if self.rows[job_id].state == JobState.RUNNING]
                self.move_to(running[0] if running else len(self.order) - 1)
        if changed:
            self.refresh()
        return changed

    def _moves(self, old: JobRow, new: JobRow, now: float) -> bool:
        """Whether a changed row may change place or visibility."""
        if self.state_filter is not None and old.state != new.state:
            return True
        return sort_value(old, self.sort_key, now) != sort_value(new, self.sort_key, now)

    def set_filter(self, states: Iterable[str] | None) -> None:
        """Show only jobs in these states (None: all)."""
        self.state_filter = frozenset(states) if states is not None else None
        self._rebuild_order(self.clock())

    def set_sort(self, key: str, reverse: bool = False) -> None:
        if key not in COLUMN_KEYS:
            raise ValueError(f"no column {key!r} to sort by (one of {', '.join(COLUMN_KEYS)})")
        self.sort_key, self.sort_reverse = key, reverse
        self._rebuild_order(self.clock())

    def _rebuild_order(self, now: float) -> None:
        selected = self.selected_id
        wanted = self.state_filter
        order = [job_id for job_id, row in self.rows.items() if wanted is None or row.state in wanted]
        order.sort(key=lambda job_id: sort_value(self.rows[job_id], self.sort_key, now), reverse=self.sort_reverse)
        self.order = order
        self.virtual_size = Size(self.size.width, len(order) + 1)
        index = order.index(selected) if selected in self.rows and selected in set(order) else self.cursor
        self.move_to(index)
        self.refresh()

    # -- cursor ---------------------------------------------------------------------------------------------

    def move_to(self, index: int) -> None:
        """Put the cursor on display row ``index`` (clamped), scroll it into view, tell the screen."""
        self.cursor = max(0, min(index, len(self.order) - 1))
        visible = max(1, self.size.height - 1)
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False, immediate=True)
        self.refresh()
        if self.selected_id != self._highlighted:
            self._highlighted = self.selected_id
            self.post_message(self.Highlighted(self._highlighted))

    def select_job(self, job_id: int) -> bool:
        """Move the cursor to a job if it is shown; returns whether it is."""
        if job_id not in self.rows or job_id not in set(self.order):
            return False
        self.move_to(self.order.index(job_id))
        return True

    def action_cursor(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * max(1, self.size.height - 2))

    def action_select(self) -> None:
        if self.selected_id is not None:
            self.post_message(self.Selected(self.selected_id))

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            self.move_to(int(self.scroll_y) + event.y - 1)
            if event.chain == 2:
                self.action_select()

    def on_resize(self, _event: events.Resize) -> None:
        self.virtual_size = Size(self.size.width, len(self.order) + 1)
        self.move_to(self.cursor)

    # -- rendering ------------------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        columns = layout(width)
        if y == 0:
            return self._header(columns, width)
        index = int(self.scroll_y) + y - 1
        if index >= len(self.order):
            if not self.order and y == 1:
                empty = "no jobs yet: drop a job file into queue/ or press n to submit one"
                if self.state_filter is not None and self.rows:
                    empty = "no job in this state: press f to change the filter"
                return Strip([Segment(fit(empty, width, "left"), self.rich_style + Style(dim=True))], width)
            return Strip.blank(width, self.rich_style)
        row = self.rows[self.order[index]]
        now = self.clock()
        selected = index == self.cursor
        key = (row, width, selected, self.has_focus, int(now) if row.finished_at is None else 0)
        strip = self._strips.get(key)
        if strip is None:
            strip = self._strips[key] = self._row_strip(row, columns, width, selected, now)
        return strip

    def _header(self, columns: list[tuple[Column, int]], width: int) -> Strip:
        style = self.get_component_rich_style("queue-table--header")
        arrow = "▼" if self.sort_reverse else "▲"
        cells = []
        for column, cell_width in columns:
            label = column.label + (arrow if column.key == self.sort_key else "")
            cells.append(fit(label, cell_width, column.justify))
        return Strip([Segment(fit(" ".join(cells), width, "left"), style)], width)

    def _row_strip(self, row: JobRow, columns: list[tuple[Column, int]], width: int, selected: bool, now: float):
        base = self.rich_style
        if selected:
            base = base + self.get_component_rich_style("queue-table--cursor")
        segments: list[Segment] = []
        for i, (column, cell_width) in enumerate(columns):
            if i:
                segments.append(Segment(" ", base))
            text = fit(cell_text(row, column.key, now), cell_width, column.justify)
            style = base + state_style(row.state) if column.key == "state" and not selected else base
            segments.append(Segment(text, style))
        used = sum(w for _, w in columns) + len(columns) - 1
        if used < width:
            segments.append(Segment(" " * (width - used), base))
        return Strip(segments, width).crop(0, width)
