"""What a job kind's ``run(spec, ctx)`` gets: where to write, how to report, whether to stop.

The context is the only bridge between a kind's code and the state store: progress events, metrics and
outputs go through it, throttled so a fast training loop cannot flood the database.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchbearer.redact import register
from torchbearer.settings import Settings
from torchbearer.store import JobState, Store, is_transient

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
    store: Store
    progress_interval_s: float = 0.5
    #: Rank of this process among a parallel job's tasks (:func:`task_rank`): only rank 0 reports.
    rank: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _last_progress: float = field(default=0.0, repr=False)
    #: Writes (metrics, outputs) the store refused while read-only / full / failing, replayed in order later.
    _pending: list[Callable[[], Any]] = field(default_factory=list, repr=False)

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

    # -- writing through store faults ----------------------------------------------------------------------

    def _write(self, write: Callable[[], Any], *, keep: bool = True) -> bool:
        """Do ``write`` after the ones still pending; if the store refuses it for now (read-only, disk full,
        I/O error), keep it for later (``keep``) or drop it (progress), log once, and go on: a store fault must
        not cost the job. Returns whether everything was written."""
        try:
            while self._pending:
                self._pending[0]()
                self._pending.pop(0)
            write()
        except sqlite3.OperationalError as exc:
            if not is_transient(exc):
                raise
            if not self._pending and not getattr(self, "_fault_logged", False):
                log.warning("the state database refuses writes (%s): the job goes on, its records wait", exc)
            self._fault_logged = True
            if keep and len(self._pending) < MAX_PENDING_WRITES:
                self._pending.append(write)
            return False
        if getattr(self, "_fault_logged", False):
            log.info("the state database takes writes again")
            self._fault_logged = False
        return True

    def persist(self, write: Callable[[], Any], *, retry_s: float = 1.0, max_wait_s: float = 15.0) -> None:
        """Do ``write`` after what is pending, waiting (``retry_s`` doubling to ``max_wait_s``) while the store
        refuses writes: for what must not be lost, such as how the attempt ended."""
        self._write(write)
        while not self._write(lambda: None):
            time.sleep(retry_s)
            retry_s = min(retry_s * 2, max_wait_s)

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
        return self._write(
            lambda: self.store.add_progress(
                self.job_id, stage=stage, done=done, total=total, unit=unit, epoch=epoch, step=step, eta_s=eta_s,
                fields=fields or None,
            ),
            keep=False,  # the next event says more than a late one
        )  # fmt: skip

    def metric(self, name: str, value: float, *, step: int | None = None, epoch: int | None = None) -> None:
        self.metrics({name: value}, step=step, epoch=epoch)

    def metrics(self, values: dict[str, float], *, step: int | None = None, epoch: int | None = None) -> None:
        """Record several values of one moment (curves in the dashboard)."""
        if values and not self.rank:
            values = dict(values)
            self._write(lambda: self.store.add_metrics(self.job_id, values, attempt=self.attempt, step=step,
                                                       epoch=epoch))  # fmt: skip

    def output(self, path: str | Path, kind: str) -> None:
        """Record a product of the job: ``checkpoint``, ``best_checkpoint``, ``map``, ``plot``, ``scene`` …"""
        if self.rank:
            return
        resolved = Path(path).resolve()
        self._write(lambda: self.store.add_output(self.job_id, resolved, kind))

    def job_outputs(self, ref: str | int, kind: str | None = None) -> list[dict[str, Any]]:
        """The outputs of another job (by id or name); raises if it did not succeed."""
        other = self.store.find_job(ref)
        if other is None:
            raise LookupError(f"no job {ref!r} in the store")
        if other.state != JobState.SUCCEEDED:
            raise LookupError(f"job {other.name} (#{other.id}) is {other.state}, not succeeded")
        return self.store.outputs(other.id, kind)
