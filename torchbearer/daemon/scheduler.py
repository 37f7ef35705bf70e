"""What runs next: dependency and time gates, then priority and submission order, then free slots.

These decisions read and write only the store, so the daemon and ``torchbearer run`` make the same ones.
Recurring jobs (``schedule:`` cron expressions) are fired by APScheduler's cron triggers, which put a fresh
copy of the job into the store each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torchbearer.ingest import job_row
from torchbearer.jobs import get_kind
from torchbearer.store import JobState, Store

log = logging.getLogger("torchbearer.scheduler")

FAILED_DEPENDENCY_STATES = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.DEPENDENCY_FAILED})


@dataclass(frozen=True)
class Placement:
    """A job to start now on these slots (GPU ids, or ``""`` for the CPU-only slot)."""

    job_id: int
    slots: tuple[str, ...]


def promote_waiting(store: Store, *, only_ids: set[int] | None = None, now: float | None = None) -> None:
    """Move waiting jobs on: to ``queued`` when their gates opened, to ``dependency-failed`` when one failed."""
    now = time.time() if now is None else now
    for job in store.jobs(states=[JobState.WAITING], ids=only_ids):
        dependencies = store.jobs(ids=job.after) if job.after else []
        failed = [d for d in dependencies if d.state in FAILED_DEPENDENCY_STATES]
        if failed:
            names = ", ".join(f"{d.name} (#{d.id}) {d.state}" for d in failed)
            store.transition(job.id, JobState.DEPENDENCY_FAILED, expect=[JobState.WAITING],
                             reason=f"dependency did not succeed: {names}", finished_at=now)  # fmt: skip
            continue
        if any(d.state != JobState.SUCCEEDED for d in dependencies):
            continue
        if (job.not_before and job.not_before > now) or (job.next_try_at and job.next_try_at > now):
            continue
        store.transition(job.id, JobState.QUEUED, expect=[JobState.WAITING], reason="ready to run")


def place_jobs(
    store: Store, free_slots: list[str], all_slots: Iterable[str], *, only_ids: set[int] | None = None
) -> list[Placement]:
    """Jobs to start now: highest priority first, then oldest; a job that needs more slots than are free
    waits, and blocks lower-priority jobs behind it so it is not starved. A job that needs more slots than the
    daemon has fails at once, with the reason. A job of ``devices: 0`` (a controller such as a sweep, which
    only waits on jobs it queued) starts without a slot, even when none is free: holding the only slot while
    waiting for its own trials would deadlock a one-slot daemon."""
    total = len(list(all_slots))
    placements: list[Placement] = []
    free = list(free_slots)
    blocked = False
    for job in store.jobs(states=[JobState.QUEUED, JobState.INTERRUPTED], ids=only_ids, order="run"):
        if job.devices == 0:
            placements.append(Placement(job.id, ()))
            continue
        if job.devices > total:
            store.transition(job.id, JobState.FAILED, expect=[JobState.QUEUED, JobState.INTERRUPTED],
                             reason=f"needs {job.devices} device slots; this daemon has {total}",
                             finished_at=time.time())  # fmt: skip
            continue
        if blocked or job.devices > len(free):
            blocked = True  # later jobs that need a slot wait behind this one
            continue
        placements.append(Placement(job.id, tuple(free[: job.devices])))
        free = free[job.devices :]
    return placements


class CronSchedules:
    """Keeps APScheduler's cron triggers in step with the store's ``schedules`` table."""

    def __init__(self, store: Store, on_fire: Callable[[], None]) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.store = store
        self.on_fire = on_fire
        self.scheduler = BackgroundScheduler(daemon=True)
        self._known: set[int] = set()

    def start(self) -> None:
        self.scheduler.start()
        self.sync()

    def shutdown(self) -> None:
        self.scheduler.shutdown(wait=False)

    def sync(self) -> None:
        """Arm a trigger for every enabled schedule that has none yet; disarm those disabled since."""
        from apscheduler.triggers.cron import CronTrigger

        rows = self.store.schedules()
        for schedule_id in self._known - {row["id"] for row in rows}:
            self._known.discard(schedule_id)
            self.scheduler.remove_job(f"schedule-{schedule_id}")
            log.info("schedule #%d disarmed", schedule_id)
        for row in rows:
            if row["id"] in self._known:
                continue
            self._known.add(row["id"])
            self.scheduler.add_job(
                self._fire, CronTrigger.from_crontab(row["cron"]), args=[row["id"]], id=f"schedule-{row['id']}",
                misfire_grace_time=300, coalesce=True, max_instances=1,
            )  # fmt: skip
            log.info("schedule %s (%s) armed", row["name"], row["cron"])

    def _fire(self, schedule_id: int) -> None:
        # APScheduler runs this in its own thread: use a connection of our own.
        store = Store(self.store.path)
        try:
            row = next((r for r in store.schedules() if r["id"] == schedule_id), None)
            if row is None:
                return
            spec = get_kind(row["spec"]["kind"]).spec.model_validate(row["spec"])
            store.add_jobs([job_row(spec, row["spec_given"], f"schedule #{schedule_id}", schedule_id=schedule_id)])
            store.mark_schedule_fired(schedule_id)
            log.info("schedule %s fired", row["name"])
        finally:
            store.close()
        self.on_fire()
