"""Starting workers, watching them (exit, timeout, cancel, log size) and recording how each attempt ended.

A worker that raises, segfaults, is OOM-killed or hangs costs its job, never the daemon. The supervisor is
the worker's one link to the store (``daemon/contract.py``): it writes ``job.json`` before an attempt, ingests
the attempt's events file every :data:`INGEST_INTERVAL_S`, and at the end reads the outcome file the worker
wrote, adds what only it can know (the exit signal, a timeout, a cancel, the end of the log) and moves the
job on: succeeded, failed (or waiting for a retry), cancelled, or interrupted (runs again).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torchbearer import runs
from torchbearer.daemon import contract
from torchbearer.daemon.executors import Executor, SubmitLater, WorkerHandle
from torchbearer.daemon.executors.local import LocalExecutor, signal_process_group
from torchbearer.daemon.oom import oom_evidence, oom_kill_count
from torchbearer.settings import Settings
from torchbearer.store import AttemptOutcome, Job, JobState, Store, is_transient, pid_alive
from torchbearer.worker import EXIT_INPUT, EXIT_INTERRUPTED, STACK_SIGNAL

log = logging.getLogger("torchbearer.supervisor")

LOG_CHECK_INTERVAL_S = 2.0
#: Seconds between two reads of the running workers' events files (a stat and a read each when they grew).
INGEST_INTERVAL_S = 0.2
#: Seconds between two rewrites of a controller's ``children.json``.
CHILDREN_INTERVAL_S = 1.0


@dataclass
class RunningJob:
    """A job whose worker this daemon started."""

    job_id: int
    name: str
    attempt: int
    handle: WorkerHandle
    slots: tuple[str, ...]
    started: float  # monotonic seconds
    timeout_s: float | None
    log_path: Path
    term_sent: float | None = None  # monotonic seconds of the SIGTERM we sent
    timed_out: bool = False
    killed_by_us: bool = False
    daemon_stopping: bool = False  # stopped because the daemon stops: a kill is not the job's fault
    oom_kills: int | None = None  # the memory cgroup's OOM-kill count when it started (daemon/oom.py)
    stall_after_s: float | None = None  # seconds without a progress event before it counts as stalled
    started_wall: float = field(default_factory=time.time)  # UNIX seconds: progress rows are UNIX seconds
    stalled: str | None = None  # the stall watchdog's reason, once it tripped
    stacks_sent: float | None = None  # monotonic seconds of the STACK_SIGNAL sent before stopping it
    gpu_samples: list[tuple[float, float]] = field(default_factory=list)  # (UNIX s, utilisation %) of its GPUs
    controller: bool = False  # a devices: 0 job (a sweep): it may spawn jobs and reads children.json
    spawns_checked: bool = True


def describe_exit(code: int | None, *, killed_by_us: bool = False, oom: str | None = None) -> str:
    """Human words for a worker's exit code (negative: the signal that ended it).

    ``oom``: what shows the kernel's out-of-memory killer ended it (:func:`torchbearer.daemon.oom.oom_evidence`);
    without it a SIGKILL is not blamed on memory.
    """
    if code is None:
        return "the worker vanished"
    if code >= 0:
        return f"the worker exited with code {code}"
    name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
    if -code == signal.SIGSEGV:
        return "the worker crashed: segmentation fault (SIGSEGV)"
    if -code == signal.SIGKILL and not killed_by_us:
        if oom:
            return f"the worker was killed by the kernel's out-of-memory killer (SIGKILL; {oom})"
        return ("the worker was killed by SIGKILL, not by torchbearer (neither the kernel log nor the memory "
                "cgroup's OOM counter, where readable, shows the out-of-memory killer: a kill -9?)")  # fmt: skip
    return f"the worker was killed by {name}"


def cap_log(path: Path, cap_bytes: int) -> bool:
    """Cut a log back to its newest half once it passes ``cap_bytes``; True if it was cut.

    The worker appends with O_APPEND, so its next write lands at the new end.
    """
    try:
        size = path.stat().st_size
        if size <= cap_bytes:
            return False
        keep = cap_bytes // 2
        with open(path, "r+b") as file:
            file.seek(size - keep)
            tail = file.read()
            file.seek(0)
            file.truncate()
            file.write(f"[… {size - len(tail):,} earlier bytes cut by torchbearer …]\n".encode())
            file.write(tail)
    except OSError as exc:
        log.warning("could not cap %s: %s", path, exc)
        return False
    return True


def is_worker_of(pid: int, job_id: int) -> bool:
    """Whether ``pid`` is a ``torchbearer.worker`` process of this job (not a recycled pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"torchbearer.worker" in argv and str(job_id).encode() in argv


def live_worker(store: Store, job: Job) -> int | None:
    """The pid of a live worker of the job's latest attempt, if that attempt has not ended; else None."""
    if not job.attempts:
        return None
    attempt = store.attempt(job.id, job.attempts) or {}
    pid = attempt.get("pid") or job.pid
    if attempt.get("finished_at") is not None or not pid:
        return None
    return int(pid) if pid_alive(int(pid)) and is_worker_of(int(pid), job.id) else None


def executor_for(settings: Settings) -> Executor:
    """The executor the settings name: child processes here, or Slurm batch jobs."""
    if settings.executor == "slurm":
        from torchbearer.daemon.executors.slurm import SlurmExecutor

        return SlurmExecutor.from_settings(settings)
    return LocalExecutor()


class Supervisor:
    """Owns the running workers of one daemon (or one foreground ``run``)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        executor: Executor | None = None,
        on_event: Callable[..., None] | None = None,
    ) -> None:
        self.settings = settings
        #: ``on_event(event, job_id=None, message=None)``: a job failed/succeeded/stalled, the queue paused.
        self.on_event = on_event or (lambda *args, **kwargs: None)
        self.store = store
        self.executor = executor or executor_for(settings)
        self.running: dict[int, RunningJob] = {}
        self.quick_failures: set[int] = set()  # jobs whose latest attempt died within the crash window
        self._last_log_check = 0.0
        self._last_ingest = 0.0
        self._last_children = 0.0
        #: Set when ingesting queued jobs (a sweep's trials): the engine then schedules at once.
        self.spawned = False
        self._busy_logged: set[int] = set()

    # -- slots ----------------------------------------------------------------------------------------------

    def free_slots(self) -> list[str]:
        busy = {slot for job in self.running.values() for slot in job.slots}
        return [slot for slot in self.settings.slots if slot not in busy]

    # -- starting -------------------------------------------------------------------------------------------

    def start(self, job_id: int, slots: tuple[str, ...]) -> bool:
        """Claim a runnable job and start its worker; False if another process claimed it first."""
        job = self.store.job(job_id)
        if job is None:
            return False
        held = getattr(self.executor, "unavailable", lambda: None)()
        if held is not None:  # a cluster that cannot take jobs now: the job waits in the queue, saying why
            if job.reason != held:
                self.store.update_job(job_id, reason=held)
            return False
        busy_pid = live_worker(self.store, job)
        if busy_pid is not None:  # a worker of its last attempt still runs: never two attempts at once
            if job_id not in self._busy_logged:
                self._busy_logged.add(job_id)
                log.warning("not starting %s (#%d): its attempt %d still runs as pid %d", job.name, job_id,
                            job.attempts, busy_pid)  # fmt: skip
            return False
        self._busy_logged.discard(job_id)
        run_dir = runs.run_dir_of(job, self.settings.runs_dir)
        claimed = self.store.transition(
            job_id, JobState.RUNNING, expect=[JobState.QUEUED, JobState.INTERRUPTED], reason=None,
            started_at=time.time(), finished_at=None, run_dir=str(run_dir), slot=",".join(slots),
            executor=self.executor.name, pid=None, exit_code=None, cancel_requested=0, error_tail=None,
            stage="starting", progress=None, eta_s=None,
        )  # fmt: skip
        if not claimed:
            return False
        attempt = self.store.start_attempt(job_id, pid=None, slot=",".join(slots), executor=self.executor.name)
        log_path = run_dir / runs.LOG_FILE
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            contract.write_job_file(self.store, job, attempt, run_dir)  # all the worker reads besides its spec
            handle = self.executor.start(
                [sys.executable, "-m", "torchbearer.worker", str(job_id), str(attempt), str(run_dir)],
                env=self._worker_env(job_id, slots),
                log_path=log_path,
                cwd=self.settings.project_dir,
                devices=len(slots),
                nodes=job.spec.get("num_nodes"),  # kinds that train in parallel have it (one process per slot)
            )
        except SubmitLater as exc:  # nothing started: back to the queue, the attempt forgotten, tried again later
            self.store.discard_attempt(job_id, attempt)
            self.store.transition(job_id, JobState.QUEUED, expect=[JobState.RUNNING], reason=str(exc),
                                  started_at=None, slot=None, executor=None, stage=None)  # fmt: skip
            return False
        except OSError as exc:
            reason = f"could not start the worker: {exc}"
            self.store.finish_attempt(job_id, attempt, outcome=AttemptOutcome.FAILED, reason=reason)
            self.store.transition(job_id, JobState.FAILED, reason=reason, finished_at=time.time())
            log.error("job %s (#%d): %s", job.name, job_id, reason)
            return False
        self.store.update_job(job_id, pid=handle.pid, external_id=handle.external_id)
        if handle.pid is not None:
            self.store.set_attempt_pid(job_id, attempt, handle.pid)
        self.running[job_id] = RunningJob(
            job_id, job.name, attempt, handle, slots, time.monotonic(), job.timeout_s, log_path,
            oom_kills=oom_kill_count(), stall_after_s=self._stall_after(job), controller=job.devices == 0,
        )  # fmt: skip
        where = f"slot {','.join(slots) or 'cpu'}" if slots else "no device slot"
        log.info("started %s (#%d) attempt %d on %s", job.name, job_id, attempt, where)
        return True

    def _stall_after(self, job: Job) -> float | None:
        """The job's ``stall_after``, else the settings' default for a job holding a device slot (a controller
        such as a sweep waits on other jobs without progress of its own); None: never."""
        value = job.spec.get("stall_after")
        if value is None:
            value = self.settings.stall_after_s if job.devices > 0 else 0
        return float(value) or None

    def _worker_env(self, job_id: int, slots: tuple[str, ...]) -> dict[str, str]:
        env = {
            **os.environ,
            **self.settings.as_environ(),
            "PYTHONUNBUFFERED": "1",
            "TORCHBEARER_JOB_ID": str(job_id),
        }
        gpus = ",".join(s for s in slots if s)
        if gpus:  # each job sees exactly its own GPUs
            env["CUDA_VISIBLE_DEVICES"] = gpus
            env["HIP_VISIBLE_DEVICES"] = gpus
        return env

    # -- watching -------------------------------------------------------------------------------------------

    def poll(self) -> list[int]:
        """Check every worker once: reap the finished, enforce timeouts and grace periods, cap logs.

        Returns the ids of jobs that ended.
        """
        now = time.monotonic()
        ended: list[int] = []
        if now - self._last_ingest >= INGEST_INTERVAL_S:
            self._last_ingest = now
            self.ingest_all()
        if now - self._last_children >= CHILDREN_INTERVAL_S:
            self._last_children = now
            for running in self.running.values():
                if running.controller:
                    job = self.store.job(running.job_id)
                    if job is not None:
                        contract.write_children(self.store, job, running.log_path.parent)
        for job_id, running in list(self.running.items()):
            code = running.handle.poll()
            if getattr(running.handle, "waiting", False):  # queued on a cluster: its clock starts when it runs
                running.started = now
            if code is not None:
                self.ingest(running, final=True)  # all it reported, before its outcome is settled
                self._finalize(running, code)  # a store fault raises here: the job stays ours, tried again
                del self.running[job_id]
                ended.append(job_id)
                continue
            if running.timeout_s and not running.timed_out and now - running.started > running.timeout_s:
                log.warning("job %s (#%d) hit its timeout of %.0f s", running.name, job_id, running.timeout_s)
                running.timed_out = True
                self._terminate(running)
            if running.term_sent is not None and now - running.term_sent > self.settings.kill_grace_s:
                log.warning("job %s (#%d) ignored SIGTERM for %.0f s: SIGKILL", running.name, job_id,
                            self.settings.kill_grace_s)  # fmt: skip
                running.killed_by_us = True
                running.handle.kill()
                running.term_sent = now  # do not resend every tick
        if now - self._last_log_check > LOG_CHECK_INTERVAL_S:
            self._last_log_check = now
            for running in self.running.values():
                cap_log(running.log_path, self.settings.log_cap_bytes)
                self._watch_stall(running)
        return ended

    def ingest_all(self) -> None:
        """Bring every running worker's new events into the store."""
        for running in self.running.values():
            if not getattr(running.handle, "waiting", False):
                self.ingest(running)

    def ingest(self, running: RunningJob, *, final: bool = False) -> None:
        """Bring one worker's new events into the store (all of them: a burst is read in bounded batches);
        ``final``: its worker ended, so read to the end and remove the events file."""
        read = contract.ingest_to_end if final else contract.ingest
        if read(self.store, running.job_id, running.attempt, running.log_path.parent):
            running.spawns_checked = False
        if running.controller and not running.spawns_checked:
            running.spawns_checked = True
            self.spawned = True  # cheap: the engine's next pass places what it queued

    def _watch_stall(self, running: RunningJob) -> None:
        """The stall watchdog: no progress event for ``stall_after_s`` → stacks into its log, then SIGTERM.

        The stacks are asked first (``STACK_SIGNAL``: the worker's faulthandler writes them at once, from C),
        the SIGTERM one check later, so the dump shows where it hung and not the stop's own handler.
        """
        if not running.stall_after_s or running.term_sent is not None or getattr(running.handle, "waiting", False):
            return
        if running.stacks_sent is not None:
            self._terminate(running)
            return
        now = time.time()
        self._sample_gpus(running, now)
        latest = self.store.latest_progress(running.job_id)
        last = max(running.started_wall, latest["time"] if latest else 0.0)
        silent_s = now - last
        if silent_s <= running.stall_after_s:
            return
        shares = [pct for when, pct in running.gpu_samples if when >= last]
        gpu = f"; GPU utilisation {sum(shares) / len(shares):.0f} % meanwhile" if shares else ""
        running.stalled = f"stalled: no progress for {silent_s:.0f} s (stall_after {running.stall_after_s:.0f} s){gpu}"
        log.warning("job %s (#%d) %s: writing its stacks to its log, then stopping it", running.name,
                    running.job_id, running.stalled)  # fmt: skip
        running.stacks_sent = time.monotonic()
        if running.handle.pid is not None and self.executor.name == "local":
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile: poll() settles it
                os.kill(running.handle.pid, STACK_SIGNAL)

    def _sample_gpus(self, running: RunningJob, now: float) -> None:
        """Note the utilisation of the job's GPUs (NVML), kept for one stall period, for a stall's reason."""
        if not any(slot.isdigit() for slot in running.slots):
            return
        from torchbearer.gpu import utilisation

        values = [u for u in (utilisation(slot) for slot in running.slots) if u is not None]
        if values:
            running.gpu_samples.append((now, sum(values) / len(values)))
        horizon = now - 2 * (running.stall_after_s or 0)
        running.gpu_samples[:] = [sample for sample in running.gpu_samples if sample[0] >= horizon]

    def apply_cancel_requests(self) -> None:
        """SIGTERM the workers of jobs a client asked to cancel."""
        for job_id, running in self.running.items():
            if running.term_sent is None:
                job = self.store.job(job_id)
                if job is not None and job.cancel_requested:
                    log.info("cancelling %s (#%d)", running.name, job_id)
                    # before the SIGTERM: the worker tells a cancel (a sweep cancels its trials) from a stop
                    with contextlib.suppress(OSError):
                        (running.log_path.parent / runs.CANCEL_FILE).touch()
                    self._terminate(running)

    def _terminate(self, running: RunningJob) -> None:
        running.term_sent = time.monotonic()
        running.handle.terminate()

    def stop_all(self, grace_s: float | None = None) -> None:
        """SIGTERM every worker, wait for them (SIGKILL after the grace period), record them interrupted."""
        grace_s = self.settings.kill_grace_s if grace_s is None else grace_s
        for running in self.running.values():
            running.daemon_stopping = True
            if running.term_sent is None:
                self._terminate(running)
        deadline = time.monotonic() + grace_s
        while self.running and time.monotonic() < deadline:
            self._poll_while_stopping()
            time.sleep(0.1)
        for running in self.running.values():
            running.killed_by_us = True
            running.handle.kill()
        while self.running:
            self._poll_while_stopping()
            time.sleep(0.05)

    def _poll_while_stopping(self) -> None:
        """:meth:`poll`; if the store refuses writes, forget the workers that ended: the next start settles
        their jobs (:meth:`recover`), and the daemon must not hang on its way out."""
        try:
            self.poll()
        except Exception as exc:
            if not is_transient(exc):
                raise
            for job_id, running in list(self.running.items()):
                if running.handle.poll() is not None:
                    log.error("%s (#%d) ended while the store refused writes (%s): settled at the next start",
                              running.name, job_id, exc)  # fmt: skip
                    del self.running[job_id]

    # -- outcomes -------------------------------------------------------------------------------------------

    def _finalize(self, running: RunningJob, code: int | None) -> None:
        job = self.store.job(running.job_id)
        if job is None:
            return
        attempt = runs.read_outcome(running.log_path.parent, running.attempt) or {}
        outcome = attempt.get("outcome")
        elapsed = time.monotonic() - running.started
        now = time.time()
        common = {"finished_at": now, "exit_code": code, "pid": None, "stage": None, "eta_s": None}
        # first: a job that finished as a cancel or timeout hit is done
        if code == 0 and outcome == AttemptOutcome.SUCCEEDED:
            self.quick_failures.clear()
            self._end(running, JobState.SUCCEEDED, None, outcome, code, {**common, "progress": 1.0})
        elif job.cancel_requested:
            self._end(running, JobState.CANCELLED, "cancelled on request", AttemptOutcome.CANCELLED, code, common)
        elif running.daemon_stopping and outcome is None:  # killed after the grace without a word: runs again
            self._end(running, JobState.INTERRUPTED, "the daemon stopped while it ran; runs again",
                      AttemptOutcome.INTERRUPTED, code, common)  # fmt: skip
        elif running.stalled:
            self._fail(job, running, running.stalled, code, common)
        elif running.timed_out:
            self._fail(job, running, f"timed out after {running.timeout_s:.0f} s", code, common)
        elif outcome == AttemptOutcome.INTERRUPTED or code == EXIT_INTERRUPTED:
            self._end(running, JobState.INTERRUPTED, "stopped at a safe point; runs again",
                      AttemptOutcome.INTERRUPTED, code, common)  # fmt: skip
        else:
            oom = None
            if code == -signal.SIGKILL and not running.killed_by_us:
                oom = oom_evidence(running.handle.pid, running.oom_kills)
            reason = (attempt.get("reason") or getattr(running.handle, "end_reason", None)
                      or describe_exit(code, killed_by_us=running.killed_by_us, oom=oom))  # fmt: skip
            self._fail(job, running, reason, code, common)
            if code != EXIT_INPUT:  # a missing file or a refused path is a user error, not a crash
                self._guard_crash_loop(running.job_id, elapsed)

    def _end(self, running: RunningJob, state: JobState, reason: str | None, outcome: AttemptOutcome,
             code: int | None, columns: dict) -> None:  # fmt: skip
        self.store.finish_attempt(running.job_id, running.attempt, outcome=outcome, exit_code=code, reason=reason)
        self.store.transition(running.job_id, state, expect=[JobState.RUNNING], reason=reason, **columns)
        log.info("%s (#%d) %s%s", running.name, running.job_id, state, f": {reason}" if reason else "")
        if state in (JobState.FAILED, JobState.SUCCEEDED):
            self.on_event("stalled" if running.stalled else str(state), running.job_id)

    def _fail(self, job, running: RunningJob, reason: str, code: int | None, columns: dict) -> None:
        columns = {**columns, "error_tail": runs.read_tail(running.log_path)}
        if job.attempts <= job.retries:
            delay = job.retry_backoff_s * 2 ** (job.attempts - 1)
            retry = f"{reason}; retry {job.attempts}/{job.retries} in {delay:.0f} s"
            self.store.finish_attempt(running.job_id, running.attempt, outcome=AttemptOutcome.FAILED, exit_code=code,
                                      reason=reason)  # fmt: skip
            self.store.transition(running.job_id, JobState.WAITING, expect=[JobState.RUNNING], reason=retry,
                                  next_try_at=time.time() + delay, **columns)  # fmt: skip
            log.warning("%s (#%d) failed: %s", running.name, running.job_id, retry)
            if running.stalled:
                self.on_event("stalled", running.job_id)
            return
        self._end(running, JobState.FAILED, reason, AttemptOutcome.FAILED, code, columns)

    def _guard_crash_loop(self, job_id: int, elapsed_s: float) -> None:
        # Distinct jobs, not attempts: one broken job retrying must not pause a whole night's queue.
        if elapsed_s > self.settings.crash_window_s:
            self.quick_failures.clear()
            return
        self.quick_failures.add(job_id)
        if len(self.quick_failures) >= self.settings.crash_loop_count:
            reason = (
                f"crash loop: {len(self.quick_failures)} jobs in a row died within "
                f"{self.settings.crash_window_s:.0f} s of starting; fix the cause, then `torchbearer resume`"
            )
            self.store.set_queue_paused(reason)
            log.error("queue paused: %s", reason)
            self.on_event("paused", message=f"queue paused: {reason}")
            self.quick_failures.clear()

    # -- recovery -------------------------------------------------------------------------------------------

    def recover(self) -> list[int]:
        """At start: settle jobs left ``running`` by a daemon that died. Returns their ids.

        A leftover worker of the job is stopped first (SIGTERM, then SIGKILL after the grace period). A job
        whose attempt recorded success is succeeded (never run twice); any other is interrupted and runs again.
        A Slurm job outlives the daemon: while the cluster still knows it, it is watched again instead.
        """
        recovered = []
        for job in self.store.jobs(states=[JobState.RUNNING]):
            if self._reattach(job):
                recovered.append(job.id)
                continue
            if job.pid and pid_alive(job.pid) and is_worker_of(job.pid, job.id):
                log.warning("stopping leftover worker of %s (#%d), pid %d", job.name, job.id, job.pid)
                signal_process_group(job.pid, signal.SIGTERM)
                deadline = time.monotonic() + self.settings.kill_grace_s
                while pid_alive(job.pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                signal_process_group(job.pid, signal.SIGKILL)
            run_dir = runs.run_dir_of(job, self.settings.runs_dir)
            attempt = self.store.attempt(job.id, job.attempts) or {}
            if job.attempts:  # what it reported while the daemon was down, and how it ended (its outcome file)
                contract.ingest_to_end(self.store, job.id, job.attempts, run_dir)
                attempt = runs.read_outcome(run_dir, job.attempts) or attempt
            if attempt.get("outcome") == AttemptOutcome.SUCCEEDED:  # never run twice
                state, reason = JobState.SUCCEEDED, "finished while the daemon was down"
                self.store.finish_attempt(job.id, job.attempts, outcome="succeeded",
                                          exit_code=attempt.get("exit_code"))  # fmt: skip
            else:
                state, reason = JobState.INTERRUPTED, "the daemon stopped while it ran; runs again"
                if job.attempts:
                    self.store.finish_attempt(job.id, job.attempts,
                                              outcome=attempt.get("outcome") or AttemptOutcome.INTERRUPTED,
                                              reason=attempt.get("reason") or reason)  # fmt: skip
            self.store.transition(job.id, state, expect=[JobState.RUNNING], reason=reason, pid=None,
                                  finished_at=time.time() if state == JobState.SUCCEEDED else None)  # fmt: skip
            log.warning("recovered %s (#%d): %s", job.name, job.id, state)
            recovered.append(job.id)
        return recovered

    def _reattach(self, job: Job) -> bool:
        """Watch again the cluster job of a job left running, if this executor can and the cluster knows it."""
        attach = getattr(self.executor, "attach", None)
        if job.executor != self.executor.name or not job.external_id or attach is None:
            return False
        handle = attach(job.external_id)
        if handle is None:
            return False
        run_dir = runs.run_dir_of(job, self.settings.runs_dir)
        ran_s = time.time() - job.started_at if job.started_at else 0.0
        self.running[job.id] = RunningJob(
            job.id,
            job.name,
            job.attempts,
            handle,
            tuple(filter(None, (job.slot or "").split(","))),
            time.monotonic() - ran_s,
            job.timeout_s,
            run_dir / runs.LOG_FILE,
            controller=job.devices == 0,
        )
        log.warning("re-attached %s (#%d) to its %s job %s", job.name, job.id, self.executor.name, job.external_id)
        return True
