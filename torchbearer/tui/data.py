"""What the dashboard shows, read from the store and the run folders (on a worker thread, never the UI's).

Plain frozen dataclasses travel from the reading thread to the widgets, so a widget can tell "changed?" with
``==`` and redraw only then. Times are UNIX seconds, sizes bytes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from torchbearer.gpu import GpuStats, gpu_stats
from torchbearer.runs import LogFollower, log_path_of  # noqa: F401 - the run-folder module's, used here
from torchbearer.store import TERMINAL_STATES, Job, Store, StoreError

#: The light columns of the queue table (no specs): one indexed scan, cheap for 10 000 jobs.
ROW_COLUMNS = (
    "id", "name", "kind", "state", "priority", "stage", "progress", "eta_s", "started_at", "finished_at", "updated_at",
    "reason",
)  # fmt: skip

#: Metrics drawn as the "key metric" curve, in order of preference; else the first ``val/*`` that is not a loss.
KEY_METRICS = ("val/iou", "val/f1", "val/accuracy", "val/acc")


T = TypeVar("T")


def with_store(state_path: Path, use: Callable[[Store], T]) -> T:
    """``use(store)`` on a connection of its own, closed after: what a worker thread of the dashboard does (a
    SQLite connection stays in the thread that opened it)."""
    store = Store(state_path)
    try:
        return use(store)
    finally:
        store.close()


def read_then_draw(app: Any, read: Callable[[Store], T], draw: Callable[[T], Any], failure: str) -> None:
    """From a worker thread of ``app`` (a Textual app): ``read`` the store on a connection of its own, then
    ``draw`` what it read on the UI thread; a store that cannot be read shows as the error ``<failure>: <why>``."""
    try:
        result = with_store(app.settings.state_path, read)
    except (StoreError, sqlite3.Error) as exc:
        app.call_from_thread(app.notify, f"{failure}: {exc}", severity="error")
        return
    app.call_from_thread(draw, result)


@dataclass(frozen=True)
class JobRow:
    """One queue-table row."""

    id: int
    name: str
    kind: str
    state: str
    priority: int
    stage: str | None
    progress: float | None
    eta_s: float | None
    started_at: float | None
    finished_at: float | None
    updated_at: float
    reason: str | None = None

    def duration_s(self, now: float) -> float | None:
        """Seconds from the latest start to the end, or to ``now`` while unfinished."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at and self.finished_at >= self.started_at else now
        return end - self.started_at


@dataclass(frozen=True)
class QueueInfo:
    """The daemon and the queue as the header shows them."""

    daemon_alive: bool
    daemon_pid: int | None
    daemon_host: str | None
    paused_reason: str | None
    counts: dict[str, int]

    @property
    def paused(self) -> bool:
        return self.paused_reason is not None


@dataclass(frozen=True)
class WorkerUsage:
    """A running job's worker process (with its children: data loaders): CPU in % of one core, memory in bytes."""

    job_id: int
    name: str
    pid: int | None
    slots: tuple[str, ...]  # the GPU ids it was given ("" or none on a CPU slot)
    cpu_pct: float | None
    rss: int | None
    pids: frozenset[int] = frozenset()  # the worker and its children, to tell which GPU processes are ours


@dataclass(frozen=True)
class ProcessInfo:
    """Who runs a process seen on a GPU: its user and command line (None when it cannot be read)."""

    pid: int
    user: str | None
    command: str | None


@dataclass(frozen=True)
class SystemStats:
    """This machine: CPU in %, memory and free disk (of the project folder) in bytes, and its GPUs.

    ``workers`` and ``processes`` are filled by the poller from the store (the running jobs' workers) and the
    process table (the owners of the processes on the GPUs).
    """

    cpu_pct: float
    ram_used: int
    ram_total: int
    disk_free: int
    gpus: tuple[GpuStats, ...] = ()
    workers: tuple[WorkerUsage, ...] = ()
    processes: tuple[ProcessInfo, ...] = ()


def read_system_stats(project_dir: Path) -> SystemStats:
    """Live figures (psutil, NVML). ``cpu_percent`` compares with the previous call: the first reads 0."""
    import psutil

    memory = psutil.virtual_memory()
    try:
        free = psutil.disk_usage(str(project_dir)).free
    except OSError:
        free = 0
    return SystemStats(
        cpu_pct=psutil.cpu_percent(interval=None),
        ram_used=int(memory.total - memory.available),
        ram_total=int(memory.total),
        disk_free=int(free),
        gpus=tuple(gpu_stats()),
    )


class WorkerMeter:
    """Measures the running jobs' workers with psutil, keeping each process between readings.

    ``cpu_percent`` compares with the previous call on the same process object, so the objects are kept: the
    first reading of a new process is 0.
    """

    def __init__(self) -> None:
        self._processes: dict[int, Any] = {}

    def read(self, store: Store) -> tuple[WorkerUsage, ...]:
        import psutil

        rows = store.open_attempts()
        kept: dict[int, Any] = {}
        usages = []
        for job_id, name, pid, slot in rows:
            slots = tuple(s for s in (slot or "").split(",") if s)
            cpu, rss, pids = None, None, frozenset()
            if pid:
                try:
                    tree = [self._process(psutil, pid, kept)]
                    tree += [self._process(psutil, child.pid, kept) for child in tree[0].children(recursive=True)]
                    cpu = sum(proc.cpu_percent(interval=None) for proc in tree)
                    rss = sum(proc.memory_info().rss for proc in tree)
                    pids = frozenset(proc.pid for proc in tree)
                except (psutil.Error, OSError):  # it ended (or is not ours to read) between two looks
                    cpu, rss = None, None
            usages.append(WorkerUsage(job_id, name, pid, slots, cpu, rss, pids))
        self._processes = kept
        return tuple(usages)

    def _process(self, psutil: Any, pid: int, kept: dict[int, Any]) -> Any:
        process = self._processes.get(pid) or psutil.Process(pid)
        kept[pid] = process
        return process


def process_info(pids: set[int]) -> tuple[ProcessInfo, ...]:
    """The user and command line of each pid (as far as this user may read them)."""
    import psutil

    infos = []
    for pid in sorted(pids):
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                user = process.username()
                command = " ".join(process.cmdline()) or process.name()
        except (psutil.Error, OSError):
            user, command = None, None
        infos.append(ProcessInfo(pid, user, command))
    return tuple(infos)


@dataclass(frozen=True)
class Curve:
    """One metric over time: ``x`` is the epoch where the job gave one, else the step, else the sample index.

    ``steps`` is the training step of each point where known (so epoch values can be drawn beside per-step ones
    on one step axis). A ``…_step`` series (``train/loss_step``) is always by step.
    """

    name: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    by_epoch: bool
    steps: tuple[float | None, ...] = ()

    @property
    def higher_is_better(self) -> bool:
        return "loss" not in self.name

    def best(self) -> tuple[float, float] | None:
        """``(x, value)`` of the best point, or None for an empty curve."""
        if not self.y:
            return None
        pick = max if self.higher_is_better else min
        index = pick(range(len(self.y)), key=self.y.__getitem__)
        return self.x[index], self.y[index]


@dataclass(frozen=True)
class JobDetail:
    """Everything the job view shows of one job, at one moment."""

    job: Job
    progress: dict[str, Any] | None
    curves: dict[str, Curve]
    outputs: tuple[dict[str, Any], ...]
    log_path: Path
    log_lines: tuple[str, ...] = ()
    log_reset: bool = False  # the lines replace what the view holds (first read, another job, log cut back)
    preview_path: Path | None = None
    preview: Any = field(default=None, compare=False)  # numpy (H, W, 3) uint8 when (re)loaded this time
    warnings: tuple[str, ...] = ()  # pre-flight warnings, then the logged ones (preflight.job_warnings)


def key_metric(names: list[str] | set[str]) -> str | None:
    """The metric the job view plots as its key curve, and the summary ranks by."""
    for name in KEY_METRICS:
        if name in names:
            return name
    candidates = sorted(n for n in names if n.startswith("val/") and "loss" not in n)
    return candidates[0] if candidates else None


def curve_from_points(name: str, points: list[tuple[int | None, int | None, float]]) -> Curve:
    """A curve from ``(epoch, step, value)`` points: one value per epoch (the last) when epochs are given.

    Per-step series (names ending in ``_step``) keep every point, by step.
    """
    if points and all(epoch is not None for epoch, _, _ in points) and not name.endswith("_step"):
        per_epoch: dict[int, tuple[int | None, float]] = {}
        for epoch, step, value in points:
            per_epoch[int(epoch)] = (step, value)
        return Curve(name, tuple(float(e) for e in per_epoch), tuple(v for _, v in per_epoch.values()), by_epoch=True,
                     steps=tuple(None if s is None else float(s) for s, _ in per_epoch.values()))  # fmt: skip
    xs = tuple(float(step if step is not None else i) for i, (_, step, _) in enumerate(points))
    return Curve(name, xs, tuple(value for _, _, value in points), by_epoch=False, steps=xs)


#: Loss curves drawn together, in this order: per step, per epoch (both as Lightning names them), validation.
LOSS_CURVES = ("train/loss_step", "train/loss_epoch", "train/loss", "val/loss")


def curves_by_role(curves: dict[str, Curve]) -> tuple[list[Curve], Curve | None]:
    """The loss curves (train per step and per epoch, validation) and the key metric curve of a job."""
    losses = [curves[name] for name in LOSS_CURVES if name in curves]
    if not losses:
        losses = [c for name, c in sorted(curves.items()) if name.endswith("loss")][:2]
    key = key_metric(set(curves))
    if key is None:  # a kind without validation metrics: its first other curve, so there is something to see
        others = sorted(n for n in curves if "loss" not in n and n not in {"lr", "samples_per_s"})
        key = others[0] if others else None
    return losses, curves.get(key) if key else None


def smoothed(values: tuple[float, ...] | list[float], weight: float = 0.6) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so the first points are not pulled to 0.

    ``weight`` in [0, 1): 0 leaves the values as they are.
    """
    out, last = [], 0.0
    for count, value in enumerate(values, start=1):
        last = last * weight + (1 - weight) * value
        out.append(last / (1 - weight**count) if weight else value)
    return out


def wants_log_axis(curves: list[Curve]) -> bool:
    """A log y axis for losses, and for any curves whose values span more than two decades (all positive)."""
    values = [v for curve in curves for v in curve.y]
    if not values or min(values) <= 0:
        return False
    return any("loss" in curve.name for curve in curves) or max(values) / min(values) > 100


@dataclass(frozen=True)
class RunPanel:
    """What the main screen shows of one running job: stage, progress, ETA, its key curve, its last log lines."""

    id: int
    name: str
    kind: str
    stage: str | None
    progress: float | None  # 0–1, the job row's
    eta_s: float | None
    started_at: float | None
    event: dict[str, Any] | None  # the latest progress event
    curve: Curve | None  # the key metric, else the loss
    log_tail: tuple[str, ...] = ()


def job_rows(store: Store, *, since: float | None = None) -> list[JobRow]:
    """Queue-table rows, all of them or those updated at or after ``since``."""
    return [JobRow(*row) for row in store.job_columns(ROW_COLUMNS, since=since)]


def queue_info(store: Store) -> QueueInfo:
    info = store.daemon_info()
    paused = store.queue_paused()
    return QueueInfo(
        daemon_alive=bool(info["alive"]),
        daemon_pid=info.get("pid"),
        daemon_host=info.get("host"),
        paused_reason=(paused.get("reason") or "paused") if paused else None,
        counts=store.counts_by_state(),
    )


def preview_candidate(outputs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> Path | None:
    """The newest map, plot or explanation output the terminal can draw (PNG/JPEG or GeoTIFF)."""
    for output in reversed(outputs):
        path = Path(output["path"])
        drawable = path.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
        if output["kind"] in {"map", "plot", "explanation"} and drawable:
            return path
    return None


@dataclass(frozen=True)
class SummaryRow:
    """One job that ended in the summary's window."""

    id: int
    name: str
    kind: str
    state: str
    duration_s: float | None
    reason: str | None
    best: tuple[str, float] | None  # (metric, best value)
    outputs: tuple[tuple[str, str], ...]  # (kind, path)


@dataclass(frozen=True)
class Summary:
    """What ran between ``since`` and ``until``: the jobs that ended, the time spent running, what is left."""

    since: float
    until: float
    rows: tuple[SummaryRow, ...]
    run_time_s: float
    pending: dict[str, int]

    def count(self, state: str) -> int:
        return sum(1 for row in self.rows if row.state == state)


def read_summary(store: Store, since: float, until: float, *, limit: int = 500) -> Summary:
    """The jobs that ended since ``since`` (at most ``limit``, newest kept), best metrics, outputs, run time."""
    jobs = store.ended_jobs(since, limit=limit)
    ids = [job["id"] for job in jobs]
    extremes = store.metric_extremes(ids)
    outputs = store.outputs_of(ids)
    rows = []
    for job in jobs:
        metrics = extremes.get(job["id"], {})
        name = key_metric(set(metrics)) or ("val/loss" if "val/loss" in metrics else None)
        best = (name, metrics[name][1 if "loss" in name else 0]) if name else None
        duration = job["finished_at"] - job["started_at"] if job["started_at"] else None
        rows.append(SummaryRow(job["id"], job["name"], job["kind"], job["state"], duration, job["reason"], best,
                               tuple(outputs.get(job["id"], ()))))  # fmt: skip
    run_time = store.attempt_seconds(since, until)
    pending = {s: n for s, n in store.counts_by_state().items() if s not in TERMINAL_STATES}
    return Summary(since, until, tuple(rows), float(run_time), pending)
