"""What a job kind's ``run(spec, ctx)`` gets: where to write, how to report, whether to stop.

The context is the only bridge between a kind's code and the daemon. It never opens the state store: it reads
what the daemon wrote into the run folder before the attempt (``job.json``: the job, the jobs it names) and
reports by appending events to ``events-<attempt>.jsonl`` there (see :mod:`torchbearer.runs`), which the
daemon ingests. Progress is throttled so a fast training loop cannot flood the file.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchbearer import runs
from torchbearer.redact import register, scrub, scrub_value
from torchbearer.settings import Settings

log = logging.getLogger("torchbearer.job")

#: Most refused writes a job keeps for later; beyond, metrics are dropped (outputs are few).
MAX_PENDING_WRITES = 100_000


def task_rank() -> int:
    """This process's rank among the ``srun`` tasks of a job trained in parallel (the Slurm executor sets
    ``TORCHBEARER_TASKS`` for those); 0 for a job that runs as one process."""
    return int(os.environ.get("SLURM_PROCID") or 0) if os.environ.get("TORCHBEARER_TASKS") else 0


class JobInterrupted(Exception):
    """Raised by a kind after stopping at a safe point on request; the job runs again later."""


class JobInputError(ValueError):
    """The job's input is wrong (a missing file, a path it may not use): the user's mistake, not a crash.

    Raise it (or let ``FileNotFoundError`` through) when a check fails before any work: such a failure does not
    count towards the crash-loop guard.
    """


class PathOutsideProject(JobInputError):
    """A job file named a path outside the project folder while that is not allowed."""


@dataclass
class JobContext:
    """Everything a running job needs besides its spec. ``progress_interval_s`` throttles progress writes."""

    job_id: int
    name: str
    attempt: int
    run_dir: Path
    settings: Settings
    #: The job as the daemon resolved it (``job.json``): ``spec``, ``kind``, ``refs`` (the jobs it names) …
    job: dict[str, Any] = field(default_factory=dict)
    progress_interval_s: float = 0.5
    #: Rank of this process among a parallel job's tasks (:func:`task_rank`): only rank 0 reports.
    rank: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _last_progress: float = field(default=0.0, repr=False)
    _events: runs.EventWriter | None = field(default=None, repr=False)

    @classmethod
    def from_run_dir(cls, run_dir: Path, attempt: int, settings: Settings) -> JobContext:
        """The context of an attempt whose ``job.json`` the daemon wrote into ``run_dir``."""
        job = runs.read_job_file(run_dir)
        if job is None:
            raise FileNotFoundError(f"{run_dir / runs.JOB_FILE} is missing or unreadable: the daemon writes it")
        return cls(job_id=int(job["id"]), name=str(job["name"]), attempt=attempt, run_dir=run_dir,
                   settings=settings, job=job)  # fmt: skip

    @property
    def events(self) -> runs.EventWriter:
        """The attempt's events file, opened on first use."""
        if self._events is None:
            self._events = runs.EventWriter(runs.events_path(self.run_dir, self.attempt))
        return self._events

    def emit(self, event_type: str, /, **fields: Any) -> None:
        """Append one event for the daemon (secrets scrubbed on the way); only rank 0 of a parallel job reports."""
        if self.rank:
            return
        self.events.append(event_type, **scrub_value(fields))

    # -- stopping -------------------------------------------------------------------------------------------

    @property
    def should_stop(self) -> bool:
        """True once SIGTERM (cancel, daemon stop, timeout) arrived: save, then raise :class:`JobInterrupted`."""
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """Turn SIGTERM/SIGINT into :attr:`should_stop` instead of an abrupt exit (main thread only)."""

        def handler(signum: int, _frame: Any) -> None:
            log.warning("received %s: stopping at the next safe point", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def request_stop(self) -> None:
        """Ask the job to stop at its next safe point (what SIGTERM does)."""
        self._stop.set()

    def check_stop(self) -> None:
        """Raise :class:`JobInterrupted` if a stop was requested (for kinds whose every step is a safe point)."""
        if self.should_stop:
            raise JobInterrupted("stopped on request")

    # -- paths ----------------------------------------------------------------------------------------------

    def resolve(self, path: str | Path) -> Path:
        """A job-file path, made absolute against the project folder; refuses paths outside it by default."""
        candidate = Path(path).expanduser()
        resolved = (candidate if candidate.is_absolute() else self.settings.project_dir / candidate).resolve()
        if not self.settings.allow_outside_paths and not resolved.is_relative_to(self.settings.project_dir):
            raise PathOutsideProject(
                f"{path} is outside the project folder {self.settings.project_dir} "
                "(set TORCHBEARER_ALLOW_OUTSIDE_PATHS=1 to allow)"
            )
        return resolved

    def secret(self, name: str) -> str | None:
        """A credential from the environment or env file; never log or store the value (it is scrubbed from
        every text the project stores or prints, see :mod:`torchbearer.redact`)."""
        value = self.settings.secret(name)
        register(value)
        return value

    # -- reporting ------------------------------------------------------------------------------------------

    def progress(
        self,
        stage: str | None = None,
        *,
        done: float | None = None,
        total: float | None = None,
        unit: str = "",
        epoch: int | None = None,
        step: int | None = None,
        eta_s: float | None = None,
        force: bool = False,
        **fields: Any,
    ) -> bool:
        """Record a progress event; skipped (returns False) if the last one was under the interval ago,
        unless it is the last of its stage (``done >= total``): the end of a stage is never dropped."""
        if self.rank:  # another task of a parallel job: rank 0 reports for all of them (ditto below)
            return False
        now = time.monotonic()
        finished = done is not None and total is not None and done >= total
        if not (force or finished) and now - self._last_progress < self.progress_interval_s:
            return False
        self._last_progress = now
        self.emit(runs.PROGRESS, stage=scrub(stage) if stage else stage, done=done, total=total, unit=unit,
                  epoch=epoch, step=step, eta_s=eta_s, fields=fields or None)  # fmt: skip
        return True

    def metric(self, name: str, value: float, *, step: int | None = None, epoch: int | None = None) -> None:
        self.metrics({name: value}, step=step, epoch=epoch)

    def metrics(self, values: dict[str, float], *, step: int | None = None, epoch: int | None = None) -> None:
        """Record several values of one moment (curves in the dashboard)."""
        if values:
            self.emit(runs.METRICS, values={k: float(v) for k, v in values.items()}, step=step, epoch=epoch)

    def resumed(self, epoch: int, step: int) -> None:
        """Say that this attempt resumed a training at ``epoch`` (0-based, as Lightning reports it) and global
        ``step`` (the checkpoint's): the metrics earlier attempts logged after that step are redone by this one,
        and the store drops them."""
        self.emit(runs.RESUMED, epoch=int(epoch), step=int(step))

    def output(self, path: str | Path, kind: str) -> None:
        """Record a product of the job: ``checkpoint``, ``best_checkpoint``, ``map``, ``plot``, ``scene`` …"""
        self.emit(runs.OUTPUT, path=str(Path(path).resolve()), kind=kind)

    def submit(self, given: dict[str, Any]) -> None:
        """Ask the daemon to queue a job spawned by this one (a sweep's trial: ``given`` is its job mapping,
        named uniquely); it shows in ``children.json`` once queued. Submitting a name twice queues it once."""
        self.emit(runs.SUBMIT, job=given)

    # -- the jobs this one names (written by the daemon into job.json) ---------------------------------------

    def job_record(self, ref: str | int) -> dict[str, Any]:
        """Another job this job's spec names (by id or name): ``id``, ``name``, ``kind``, ``state``, ``spec``,
        ``outputs``, ``metrics`` (for plot curves), as the daemon found it when this attempt started."""
        other = (self.job.get("refs") or {}).get(str(ref))
        if other is None:
            raise LookupError(f"no job {ref!r} in the store")
        return other

    def job_outputs(self, ref: str | int, kind: str | None = None) -> list[dict[str, Any]]:
        """The outputs of another job (by id or name); raises if it did not succeed."""
        other = self.job_record(ref)
        if other["state"] != "succeeded":
            raise LookupError(f"job {other['name']} (#{other['id']}) is {other['state']}, not succeeded")
        return [o for o in other.get("outputs", []) if kind is None or o["kind"] == kind]

    def children(self) -> dict[str, dict[str, Any]]:
        """The jobs this one spawned (by name), as the daemon last wrote them into ``children.json``: ``id``,
        ``state``, ``reason``, ``outputs`` and the metric values the controller's spec ``metric`` names."""
        data = runs.read_json(self.run_dir / runs.CHILDREN_FILE)
        return dict(data.get("jobs", {})) if isinstance(data, dict) else {}

    @property
    def cancel_requested(self) -> bool:
        """Whether the stop asked is a cancel of this job (not a daemon stop, after which it runs again)."""
        return (self.run_dir / runs.CANCEL_FILE).exists()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
