"""The dashboard's one reader: a thread that watches the store and the focused job's files, and hands changes
to the UI.

It owns its own :class:`Store` connection (SQLite connections are not shared between threads) and asks
``PRAGMA data_version`` each tick, so an idle queue costs one tiny query; the queue table is then read
incrementally by ``updated_at`` (plus a full read now and then, which also catches clock jumps). The focused
job's log is followed by offset, its metrics read by row id, so a long training costs the same each tick.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torchbearer.preflight import job_warnings
from torchbearer.settings import Settings
from torchbearer.store import Job, JobState, Store, StoreError
from torchbearer.tui.data import (
    Curve,
    JobDetail,
    JobRow,
    LogFollower,
    QueueInfo,
    RunPanel,
    SystemStats,
    WorkerMeter,
    curve_from_points,
    curves_by_role,
    job_rows,
    log_path_of,
    preview_candidate,
    process_info,
    queue_info,
)

#: Key in the store's meta table: when a dashboard was last opened (UNIX seconds), for the morning summary.
LAST_OPENED_KEY = "tui_last_opened"

#: At most this many running jobs get a live panel on the main screen (one a slot; more would not fit).
MAX_PANELS = 8

#: Log lines a running job's panel keeps.
PANEL_LOG_LINES = 6

#: Rows updated up to this many seconds before the last read are read again: a writer takes its time stamp before
#: its commit, which may wait on another writer's lock.
UPDATED_MARGIN_S = 5.0


@dataclass
class Update:
    """What changed since the previous tick; None fields did not change."""

    rows: list[JobRow] | None = None
    full: bool = False  # ``rows`` is every job, not only the changed ones
    queue: QueueInfo | None = None
    system: SystemStats | None = None
    detail: JobDetail | None = None
    panels: tuple[RunPanel, ...] | None = None  # the running jobs' panels on the main screen
    error: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.rows or self.full or self.queue or self.system or self.detail or self.error) and (
            self.panels is None
        )


@dataclass
class _Focus:
    """What the poller keeps between ticks about the job the job view shows."""

    job_id: int
    follower: LogFollower | None = None
    metric_after_id: int = 0
    points: dict[str, list[tuple[int | None, int | None, float]]] = field(default_factory=dict)
    preview_key: tuple[str, float] | None = None
    last_detail: JobDetail | None = None


@dataclass
class _Panel:
    """What the poller keeps between ticks about one running job's panel."""

    focus: _Focus
    job: Job | None = None
    event: dict[str, Any] | None = None
    curve: Curve | None = None
    tail: list[str] = field(default_factory=list)


def panel_curve(points: dict[str, list[tuple[int | None, int | None, float]]]) -> Curve | None:
    """The curve a running job's panel draws: its key metric, else its first loss."""
    losses, key = curves_by_role({name: curve_from_points(name, pts) for name, pts in points.items()})
    return key or (losses[0] if losses else None)


class Poller:
    """Reads the store on its own thread every ``interval_s`` seconds (sooner after :meth:`wake`).

    ``system_stats`` returns the header's machine figures (None to show none); ``preview_loader`` turns an
    image path into an array for the preview. Both run on the poller's thread.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        interval_s: float = 0.5,
        system_stats: Callable[[], SystemStats | None] | None = None,
        system_interval_s: float = 2.0,
        full_read_s: float = 60.0,
        preview_loader: Callable[[Path], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.system_stats = system_stats
        self.system_interval_s = system_interval_s
        self.full_read_s = full_read_s
        self.preview_loader = preview_loader
        self.focus_job: int | None = None  # set by the UI thread; read here (an int swap is atomic)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._applied = threading.Event()
        self._store: Store | None = None
        self._version: int | None = None
        self._read_at = 0.0  # wall-clock time of the last read of the jobs table
        self._last_full = float("-inf")
        self._last_slow = 0.0
        self._last_queue: QueueInfo | None = None
        self._focus: _Focus | None = None
        self._panels: dict[int, _Panel] = {}
        self._meter = WorkerMeter()
        self._last_panels: tuple[RunPanel, ...] | None = None
        self.previous_opened: float | None = None

    # -- driven by the UI -----------------------------------------------------------------------------------

    def wake(self) -> None:
        """Read now rather than at the next tick (after a command, or when the focus changes)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._applied.set()

    def applied(self) -> None:
        """The UI has drawn the last update: the next may come (one in flight, so a slow UI is never flooded)."""
        self._applied.set()

    def run(self, deliver: Callable[[Update], None], cancelled: Callable[[], bool] = lambda: False) -> None:
        """Loop until :meth:`stop` or ``cancelled()``: read, hand non-empty updates to ``deliver``, sleep."""

        def stopping() -> bool:
            return self._stop.is_set() or cancelled()

        try:
            while not stopping():
                update = self.poll()
                if not update.empty:
                    self._applied.clear()
                    deliver(update)
                    while not self._applied.wait(self.interval_s) and not stopping():
                        pass
                self._wake.wait(self.interval_s)
                self._wake.clear()
        finally:
            if self._store is not None:
                self._store.close()

    # -- one tick -------------------------------------------------------------------------------------------

    def open(self) -> Store:
        """Open the store (once) and remember when the dashboard was opened, keeping the previous time."""
        if self._store is None:
            self._store = Store(self.settings.state_path)
            self.previous_opened = self._store.meta(LAST_OPENED_KEY)
            self._store.set_meta(LAST_OPENED_KEY, time.time())
        return self._store

    def poll(self) -> Update:
        """Read what changed; a store that cannot be opened or read becomes an error for the header."""
        try:
            return self._poll(self.open())
        except StoreError as exc:
            error = str(exc)
        except (sqlite3.Error, OSError) as exc:  # locked for too long, disk trouble: show it, try again next tick
            error = f"{self.settings.state_path}: {exc}"
        self._last_full = float("-inf")  # once readable again, read everything (and so clear the error)
        return Update(error=error)

    def _poll(self, store: Store) -> Update:
        update = Update()
        now = time.monotonic()
        version = store.data_version()
        changed = version != self._version
        self._version = version
        read_at = time.time()
        if now - self._last_full >= self.full_read_s:
            update.rows, update.full = job_rows(store), True
            self._last_full, self._read_at = now, read_at
        elif changed:
            update.rows = job_rows(store, since=self._read_at - UPDATED_MARGIN_S) or None
            self._read_at = read_at
        slow_due = now - self._last_slow >= self.system_interval_s
        if changed or slow_due:  # the daemon's liveness ages without any write: re-check it now and then
            queue = queue_info(store)
            if queue != self._last_queue:
                update.queue = self._last_queue = queue
        if slow_due:
            self._last_slow = now
            update.system = self._system(store)
        update.detail = self._detail(store, changed)
        update.panels = self._running_panels(store, changed)
        return update

    def _system(self, store: Store) -> SystemStats | None:
        """The machine's figures, with the running workers' CPU and memory and who runs each GPU process."""
        stats = self.system_stats() if self.system_stats else None
        if stats is None:
            return None
        workers = self._meter.read(store)
        on_gpus = {process.pid for gpu in stats.gpus for process in gpu.processes}
        return replace(stats, workers=workers, processes=process_info(on_gpus))

    # -- the running jobs' panels ---------------------------------------------------------------------------

    def _running_panels(self, store: Store, changed: bool) -> tuple[RunPanel, ...] | None:
        """The live panels of the running jobs, when something in them changed (store or log), else None.

        Each running job's metrics are read by row id and its log followed by offset (the last 8 KB at first),
        as for the open job, so a panel costs the same each tick however long the run.
        """
        if changed or self._last_panels is None:
            ids = store.job_ids(states=[JobState.RUNNING], limit=MAX_PANELS)
            self._panels = {i: self._panels.get(i) or _Panel(_Focus(i)) for i in ids}
            for job_id, panel in self._panels.items():
                panel.job = store.job(job_id)
                panel.event = store.latest_progress(job_id)
                if self._read_panel_metrics(store, panel.focus):  # new points: the panel's curve is built again
                    panel.curve = panel_curve(panel.focus.points)
        panels, new_lines = [], False
        for panel in self._panels.values():
            job, focus = panel.job, panel.focus
            if job is None:
                continue
            log_path = log_path_of(job, self.settings.runs_dir)
            if focus.follower is None or focus.follower.path != log_path:
                focus.follower = LogFollower(log_path, max_bytes=8 * 1024)
            lines, reset = focus.follower.read_new()
            new_lines = new_lines or bool(lines) or reset
            kept = [] if reset else panel.tail
            panel.tail = [line for line in kept + lines if line.strip()][-PANEL_LOG_LINES:]
            panels.append(RunPanel(job.id, job.name, job.kind, job.stage, job.progress, job.eta_s, job.started_at,
                                   panel.event, panel.curve, tuple(panel.tail)))  # fmt: skip
        result = tuple(panels)
        if result == self._last_panels and not new_lines:
            return None
        self._last_panels = result
        return result

    # -- the focused job ------------------------------------------------------------------------------------

    def _detail(self, store: Store, changed: bool) -> JobDetail | None:
        job_id = self.focus_job
        if job_id is None:
            self._focus = None
            return None
        focus = self._focus
        fresh = focus is None or focus.job_id != job_id
        if fresh:
            focus = self._focus = _Focus(job_id)
        job = store.job(job_id) if (fresh or changed) else focus.last_detail.job if focus.last_detail else None
        if job is None:
            return None
        log_path = log_path_of(job, self.settings.runs_dir)
        if focus.follower is None or focus.follower.path != log_path:
            focus.follower = LogFollower(log_path)
        lines, reset = focus.follower.read_new()
        if not (fresh or changed or lines or reset):
            return None
        if fresh or changed:
            self._read_metrics(store, focus)
            outputs = tuple(store.outputs(job_id))
            progress = store.latest_progress(job_id)
            warnings = tuple(job_warnings(store, job_id))
        else:
            outputs, progress = focus.last_detail.outputs, focus.last_detail.progress
            warnings = focus.last_detail.warnings
        preview_path, preview = self._preview(focus, outputs)
        detail = JobDetail(
            job=job,
            progress=progress,
            curves={name: curve_from_points(name, points) for name, points in focus.points.items()},
            outputs=outputs,
            log_path=log_path,
            log_lines=tuple(lines),
            log_reset=reset or fresh,
            preview_path=preview_path,
            preview=preview,
            warnings=warnings,
        )
        focus.last_detail = detail
        return detail

    def _read_panel_metrics(self, store: Store, focus: _Focus) -> bool:
        """New points of the curves a panel may draw (validation metrics, per-epoch losses …); True if any.

        Per-step series (``…_step``, ``lr``, ``samples_per_s``) are left out: a panel draws one value an epoch,
        and a night of per-step points would be rebuilt into a curve on every tick.
        """
        rows = store.metric_points(focus.job_id, after_id=focus.metric_after_id, curves_only=True)
        for row_id, name, epoch, step, value in rows:
            focus.points.setdefault(name, []).append((epoch, step, value))
            focus.metric_after_id = row_id
        return bool(rows)

    def _read_metrics(self, store: Store, focus: _Focus) -> None:
        rows = store.metric_points(focus.job_id, after_id=focus.metric_after_id)
        for row_id, name, epoch, step, value in rows:
            if value is not None:
                focus.points.setdefault(name, []).append((epoch, step, value))
            focus.metric_after_id = row_id

    def _preview(self, focus: _Focus, outputs: tuple[dict[str, Any], ...]) -> tuple[Path | None, Any]:
        """The preview image's path, and its pixels when it is new or was rewritten since the last look."""
        path = preview_candidate(outputs)
        if path is None or self.preview_loader is None:
            return path, None
        try:
            key = (str(path), path.stat().st_mtime)
        except OSError:
            return path, None
        if key == focus.preview_key:
            return path, None
        focus.preview_key = key
        return path, self.preview_loader(path)
