"""The daemon's loop: ingest complete files, settle client commands, start what may run, watch what runs.

One :class:`Engine` serves both ``torchbearer daemon`` (watching the queue folder forever) and
``torchbearer run FILE`` (only that file's jobs, in the foreground, until they are done). The loop wakes at
least every ``tick_s``; between wakes it costs one ``PRAGMA data_version`` read, so an idle daemon stays far
under 1 % of a core.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchbearer.commands import spawned_jobs
from torchbearer.daemon.executors import Executor
from torchbearer.daemon.scheduler import CronSchedules, place_jobs, promote_waiting
from torchbearer.daemon.supervisor import Supervisor
from torchbearer.daemon.watcher import QueueWatcher
from torchbearer.ingest import ingest_queue_file, recover_claimed
from torchbearer.locks import try_lock
from torchbearer.notify import LOG_LINES, Notifier, job_event, jobs_left, queue_event
from torchbearer.runs import log_path_of, read_tail
from torchbearer.settings import Settings
from torchbearer.spec import JobFileError, PathRules, load_job_file
from torchbearer.store import TERMINAL_STATES, Store, is_transient

log = logging.getLogger("torchbearer.daemon")

HEARTBEAT_INTERVAL_S = 5.0
#: Seconds between tries while the state database refuses writes (read-only, disk full, I/O error): doubles
#: from the first value up to the second.
STORE_RETRY_S = (1.0, 5.0)
#: Full scheduling pass at least this often even when nothing in the store changed (time gates).
PASS_INTERVAL_S = 1.0


class QueueLockedError(RuntimeError):
    """Another daemon (or foreground run) already serves this state database or this queue."""


class FileLock:
    """An exclusive ``flock`` on ``path``, held for the life of the process; the file holds the holder's pid.

    ``what`` names what the lock guards in the refusal ("state database …", "queue …").
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise QueueLockedError(f"cannot open the lock {self.path} ({exc.strerror or exc})") from None
        if not try_lock(fd):
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise QueueLockedError(
                f"another torchbearer daemon (pid {holder}) is already serving the {self.what}; "
                "stop it first, or use `torchbearer submit` to add jobs to it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def state_lock_path(state_path: Path) -> Path:
    """The daemon's lock beside the state database (``state/torchbearer.db.lock``).

    One daemon per database, whatever queue folder it watches: the jobs live in the database, so a second
    daemon on it would "recover" the first one's running jobs and start them again. Beside the database, not
    in ``queue/``: deleting and re-creating the queue folder must not free it.
    """
    return state_path.with_name(state_path.name + ".lock")


class QueueLock(FileLock):
    """An exclusive ``flock`` on ``queue/.torchbearer.lock``: two databases must not share one queue folder."""

    def __init__(self, queue_dir: Path) -> None:
        super().__init__(queue_dir / ".torchbearer.lock", f"queue {queue_dir}")


class Engine:
    """Runs the queue until stopped (daemon) or until ``only_ids`` are all done (foreground run)."""

    def __init__(
        self,
        settings: Settings,
        *,
        watch: bool = True,
        only_ids: set[int] | None = None,
        executor: Executor | None = None,
        tick_s: float = 0.1,
        on_tick: Callable[[Engine], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.watch = watch
        self.only_ids = only_ids
        self.tick_s = tick_s
        self.on_tick = on_tick
        self.state_lock = FileLock(state_lock_path(settings.state_path), f"state database {settings.state_path}")
        self.lock = QueueLock(settings.queue_dir)
        self.store = Store(settings.state_path)
        self.store.check()  # a damaged file is refused here, with what to do, not mid-night as a traceback
        self.paths = PathRules.of(settings)
        self.notifier = Notifier(settings)
        self.supervisor = Supervisor(settings, self.store, executor, on_event=self.notify)
        self._had_work = False  # a job ran since the queue was last empty: tell when it empties again
        self._report_due = threading.Event()  # set by the report's cron trigger (APScheduler's thread)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.watcher = QueueWatcher(settings.queue_dir, on_change=self.wake.set) if watch else None
        self.cron = CronSchedules(self.store, on_fire=self.wake.set) if watch else None
        self._data_version = -1
        self._last_pass = 0.0
        self._last_heartbeat = 0.0
        self._started_at = time.time()
        self.store_fault: str | None = None  # why the store refuses writes; nothing new starts meanwhile
        self._store_retry_s = STORE_RETRY_S[0]

    # -- lifecycle ------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT); workers are stopped at a safe point on the way out."""
        self.settings.ensure_dirs()
        self.state_lock.acquire()  # first: the jobs are in the database, whichever queue folder is watched
        try:
            self.lock.acquire()
        except QueueLockedError:
            self.state_lock.release()
            raise
        try:
            self._install_signal_handlers()
            self.supervisor.recover()
            if self.watcher is not None:
                for result in recover_claimed(self.settings.queue_dir, self.store, paths=self.paths,
                                              preflight=self.preflight):  # fmt: skip
                    log.info("finished ingesting %s left by a previous daemon", result.source)
                self.watcher.start()
            if self.cron is not None:
                self.cron.start()
                self._arm_report()
            self.notifier.start()
            log.info("serving %s (state %s, %d slot%s)", self.settings.queue_dir, self.settings.state_path,
                     len(self.settings.slots), "s" if len(self.settings.slots) > 1 else "")  # fmt: skip
            while not self.stopping.is_set():
                if not self._step_or_wait():
                    continue
                if self.only_ids is not None and self._all_done():
                    break
                self.wake.wait(self.tick_s)
                self.wake.clear()
        finally:
            self._shutdown()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            if self.stopping.is_set():  # second signal: do not wait for the grace period
                log.warning("second %s: killing workers now", signal.Signals(signum).name)
                for running in self.supervisor.running.values():
                    running.killed_by_us = True
                    running.handle.kill()
            log.info("%s: stopping (running jobs save and are re-run next time)", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _shutdown(self) -> None:
        try:
            if self.watcher is not None:
                self.watcher.stop()
            if self.cron is not None:
                self.cron.shutdown()
            self.supervisor.stop_all()
            if self.watch:
                try:
                    self.store.set_meta("daemon", None)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.error("could not clear the daemon's record (%s): its stale heartbeat says it stopped", exc)
            self.notifier.close()
        finally:
            self.lock.release()
            self.state_lock.release()

    # -- one pass -------------------------------------------------------------------------------------------

    def _step_or_wait(self) -> bool:
        """One :meth:`step`; while the store refuses writes, log, start nothing, keep the workers, retry later.

        Returns False after a store fault (having waited before the next try).
        """
        try:
            self.step()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if self.store_fault is None:
                log.error("the state database %s refuses writes (%s): starting no jobs, running ones go on; "
                          "retrying until it is writable", self.settings.state_path, exc)  # fmt: skip
            self.store_fault = str(exc)
            self.wake.wait(self._store_retry_s)
            self.wake.clear()
            self._store_retry_s = min(self._store_retry_s * 2, STORE_RETRY_S[1])
            self._last_heartbeat = 0.0  # the heartbeat is the write that tells when it works again
            return False
        if self.store_fault is not None:
            log.warning("the state database %s is writable again: resuming", self.settings.state_path)
            self.store_fault = None
            self._store_retry_s = STORE_RETRY_S[0]
        return True

    def step(self) -> None:
        """One turn of the loop; cheap when nothing changed."""
        changed = False  # our own commits do not move data_version: note them here
        if self.watcher is not None and self.store_fault is not None:
            # a file claimed while the store refused writes is still in accepted/ under its .ingesting- name
            for result in recover_claimed(
                self.settings.queue_dir, self.store, paths=self.paths, preflight=self.preflight
            ):
                changed = True
                log.info("finished ingesting %s after the store fault", result.source)
        if self.watcher is not None:
            for path in self.watcher.ready(_parses):
                result = ingest_queue_file(path, self.settings.queue_dir, self.store, paths=self.paths,
                                           preflight=self.preflight)  # fmt: skip
                changed |= result.accepted
        changed |= bool(self.supervisor.poll())
        if self.supervisor.spawned:  # a controller queued jobs (a sweep's trials): place them now
            self.supervisor.spawned = False
            changed = True
        now = time.monotonic()
        version = self.store.data_version()
        if changed or version != self._data_version or now - self._last_pass >= PASS_INTERVAL_S:
            self._data_version = version
            self._last_pass = now
            self._schedule()
        if self.watch and now - self._last_heartbeat >= HEARTBEAT_INTERVAL_S:
            self._last_heartbeat = now
            self.store.record_daemon(started_at=self._started_at, executor=self.supervisor.executor.name)
        if self._report_due.is_set():
            self._report_due.clear()
            self._morning_report()
        if self.on_tick is not None:
            self.on_tick(self)

    def _schedule(self) -> None:
        self.supervisor.apply_cancel_requests()
        if self.cron is not None:
            self.cron.sync()
        promote_waiting(self.store, only_ids=self.only_ids)
        if self.store.queue_paused() is not None or self.stopping.is_set() or self.store_fault is not None:
            return
        if self.only_ids is not None:  # a foreground run also runs the jobs its jobs queued (a sweep's trials)
            self.only_ids |= {job.id for job in spawned_jobs(self.store, self.only_ids)}
        free = self.supervisor.free_slots()  # even with none free, a devices: 0 job may start
        for placement in place_jobs(self.store, free, self.settings.slots, only_ids=self.only_ids):
            self.supervisor.start(placement.job_id, placement.slots)
        self._check_queue_empty()

    # -- notifications --------------------------------------------------------------------------------------

    def notify(self, event: str, job_id: int | None = None, message: str | None = None) -> None:
        """Hand an event to the notifier (which sends it on its own thread); never raises."""
        if not self.notifier.wants(event):
            return
        try:
            job = self.store.job(job_id) if job_id is not None else None
            if job is not None:
                tail = read_tail(log_path_of(job, self.settings.runs_dir), LOG_LINES) if job.run_dir else None
                self.notifier.send(job_event(self.store, job, event, tail))
            else:
                self.notifier.send(queue_event(self.store, event, message or event))
        except Exception:  # telling about a job must never cost the daemon
            log.exception("could not build the %s notification", event)

    def _arm_report(self) -> None:
        """The morning report's cron trigger (``TORCHBEARER_REPORT_AT``); a bad expression is logged, not fatal."""
        if not self.settings.report_at or self.cron is None:
            return
        from apscheduler.triggers.cron import CronTrigger

        try:
            trigger = CronTrigger.from_crontab(self.settings.report_at)
        except ValueError as exc:
            log.error("TORCHBEARER_REPORT_AT=%r is not a cron expression (%s): no morning report",
                      self.settings.report_at, exc)  # fmt: skip
            return
        self.cron.scheduler.add_job(lambda: (self._report_due.set(), self.wake.set()), trigger, id="morning-report",
                                    misfire_grace_time=3600, coalesce=True, max_instances=1)  # fmt: skip
        log.info("morning report armed (%s)", self.settings.report_at)

    def _morning_report(self) -> None:
        """Write the report (``report.py``) and send it through the notifiers, the HTML file attached."""
        from torchbearer.report import build_report

        try:
            report = build_report(self.store, self.settings)
        except Exception:  # a report that cannot be written must not stop the night
            log.exception("the morning report failed")
            return
        log.info("morning report: %s (%s)", report.summary(), report.markdown)
        if self.notifier.wants("report"):
            event = queue_event(self.store, "report", "morning report")
            event.message = report.markdown.read_text(encoding="utf-8") if report.markdown else report.summary()
            event.attachments = [str(p) for p in (report.html, *report.pictures) if p is not None]
            self.notifier.send(event)

    def _check_queue_empty(self) -> None:
        """Send ``queue-empty`` once, when the last job of a busy spell has ended (daemon only)."""
        if self.supervisor.running:
            self._had_work = True
        elif self._had_work and self.watch and self.notifier.wants("queue-empty") and not jobs_left(self.store):
            self._had_work = False
            self.notify("queue-empty", message="the queue is empty: nothing left to run")

    def preflight(self, parsed: list) -> list:
        """The pre-flight check of a file being queued (``preflight.py``), against this daemon's store."""
        from torchbearer.preflight import check_jobs

        return check_jobs(parsed, self.settings, self.store) if self.settings.preflight else []

    def _all_done(self) -> bool:
        jobs = self.store.jobs(ids=self.only_ids)
        return not self.supervisor.running and all(job.state in TERMINAL_STATES for job in jobs)


def _parses(path: Path) -> bool:
    try:
        load_job_file(path)
    except JobFileError:
        return False
    except Exception:  # noqa: BLE001 - a store or plugin problem is reported by ingest, not here
        return True
    return True
