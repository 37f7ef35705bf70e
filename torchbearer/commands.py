"""What clients (the CLI and the dashboard) may do to jobs and to the queue: small messages to the store.

Each command is one compare-and-set on the store, so it works whether or not a daemon runs, and a client can
never fight the daemon over a job: a running job is cancelled by flagging it; the daemon sends the signal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from torchbearer.store import PENDING_STATES, TERMINAL_STATES, Job, JobState, Store


class CommandError(ValueError):
    """A command that cannot apply to this job now (says why)."""


@dataclass(frozen=True)
class CommandResult:
    job_id: int
    message: str


def _job(store: Store, ref: str | int) -> Job:
    job = store.find_job(ref)
    if job is None:
        raise CommandError(f"no job {ref!r} (give an id such as 12 or a job name)")
    return job


def _label(job: Job) -> str:
    return f"{job.name} (#{job.id})"


def _gated_state(job: Job) -> JobState:
    """Where a job goes when it may run again: waiting if it has gates, else queued."""
    now = time.time()
    if job.after or (job.not_before and job.not_before > now) or (job.next_try_at and job.next_try_at > now):
        return JobState.WAITING
    return JobState.QUEUED


#: The ``source`` of a job queued by another job (a sweep's trials): ``spawned by #<id>``.
SPAWNED_SOURCE = "spawned by #{}"


def spawned_jobs(store: Store, parent_ids: int | set[int]) -> list[Job]:
    """The jobs that the given jobs queued themselves (a sweep's trials), oldest first."""
    sources = [SPAWNED_SOURCE.format(i) for i in ([parent_ids] if isinstance(parent_ids, int) else parent_ids)]
    if not sources:
        return []
    ids = store.job_ids_from(sources)
    return store.jobs(ids=ids) if ids else []


def cancel(store: Store, ref: str | int) -> CommandResult:
    """Cancel a pending job at once, or ask the daemon to stop a running one (SIGTERM, then SIGKILL).

    The jobs it queued itself (a sweep's trials) that have not ended are cancelled with it."""
    job = _job(store, ref)
    result = _cancel_one(store, job)
    children = [c for c in spawned_jobs(store, job.id) if c.state not in TERMINAL_STATES]
    for child in children:
        try:
            _cancel_one(store, child)
        except CommandError:  # it ended meanwhile
            continue
    if children:
        result = CommandResult(job.id, f"{result.message} (and {len(children)} job(s) it queued)")
    return result


def _cancel_one(store: Store, job: Job) -> CommandResult:
    if job.state == JobState.RUNNING:
        store.update_job(job.id, cancel_requested=True)
        return CommandResult(job.id, f"{_label(job)}: cancel requested; the daemon stops it")
    if job.state in PENDING_STATES and store.transition(
        job.id,
        JobState.CANCELLED,
        expect=PENDING_STATES,
        reason="cancelled on request",
        finished_at=time.time(),
    ):
        return CommandResult(job.id, f"{_label(job)}: cancelled")
    raise CommandError(f"{_label(job)} is {job.state}; nothing to cancel")


def retry(store: Store, ref: str | int) -> CommandResult:
    """Queue a failed, cancelled or dependency-failed job again (its attempt count carries on)."""
    job = _job(store, ref)
    retryable = {JobState.FAILED, JobState.CANCELLED, JobState.DEPENDENCY_FAILED}
    if job.state not in retryable:
        raise CommandError(f"{_label(job)} is {job.state}; only failed, cancelled or dependency-failed jobs retry")
    target = _gated_state(job)
    if not store.transition(job.id, target, expect=retryable, reason="retry on request", finished_at=None,
                            next_try_at=None, cancel_requested=False):  # fmt: skip
        raise CommandError(f"{_label(job)} changed meanwhile; try again")
    return CommandResult(job.id, f"{_label(job)}: {target}")


def hold(store: Store, ref: str | int) -> CommandResult:
    """Keep a pending job from starting until released."""
    job = _job(store, ref)
    holdable = {JobState.QUEUED, JobState.WAITING, JobState.INTERRUPTED}
    if job.state not in holdable or not store.transition(job.id, JobState.HELD, expect=holdable, reason="held"):
        raise CommandError(f"{_label(job)} is {job.state}; only queued, waiting or interrupted jobs can be held")
    return CommandResult(job.id, f"{_label(job)}: held")


def release(store: Store, ref: str | int) -> CommandResult:
    """Let a held job run again."""
    job = _job(store, ref)
    target = _gated_state(job)
    if job.state != JobState.HELD or not store.transition(job.id, target, expect=[JobState.HELD], reason="released"):
        raise CommandError(f"{_label(job)} is {job.state}, not held")
    return CommandResult(job.id, f"{_label(job)}: {target}")


def set_priority(store: Store, ref: str | int, priority: int) -> CommandResult:
    """Change a job's priority (higher runs first); only meaningful before it starts."""
    if not -1000 <= priority <= 1000:
        raise CommandError(f"priority {priority} is out of range -1000..1000")
    job = _job(store, ref)
    if job.state in TERMINAL_STATES or job.state == JobState.RUNNING:
        raise CommandError(f"{_label(job)} is {job.state}; priority only matters before a job starts")
    store.update_job(job.id, priority=priority)
    return CommandResult(job.id, f"{_label(job)}: priority {priority}")


def set_schedule_enabled(store: Store, schedule_id: int, enabled: bool) -> str:
    """Arm or disarm a recurring job (``schedule:``); jobs it already queued are not touched."""
    if not store.set_schedule_enabled(schedule_id, enabled):
        raise CommandError(f"no schedule #{schedule_id} (`torchbearer schedules` lists them)")
    return f"schedule #{schedule_id} {'enabled' if enabled else 'disabled'}"


def pause(store: Store, reason: str = "paused on request") -> str:
    """Pause the queue: the running job finishes, nothing new starts."""
    store.set_queue_paused(reason)
    return "queue paused: running jobs finish, nothing new starts"


def resume(store: Store) -> str:
    store.set_queue_paused(None)
    return "queue resumed"
