"""The one place a sweep touches the state store: queueing its trials, cancelling them, reading how they did.

Trials are ordinary jobs, queued through the same calls as a submitted file (``spec`` validation, then
``ingest.job_row`` into ``Store.add_jobs``) and cancelled through ``commands.cancel``, so they show in
``status`` and the dashboard, retry and cancel like any job. Each is named ``<sweep>-<n>`` (n = Optuna's trial
number + 1) and carries ``source = "spawned by #<sweep id>"`` (:data:`commands.SPAWNED_SOURCE`): a restarted
sweep finds the trials it queued by that, never by name alone (an older sweep of the same name is not
mistaken for this one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torchbearer import commands
from torchbearer.ingest import job_row
from torchbearer.jobs import get_kind
from torchbearer.store import TERMINAL_STATES, Job, JobState, Store


@dataclass(frozen=True)
class TrialOutcome:
    """How an ended trial job did: its metric value (None: failed, or it logged none) and why not."""

    value: float | None
    note: str = ""


def trial_name(sweep: str, number: int) -> str:
    """The job name of Optuna trial ``number`` (0-based) of a sweep: ``<sweep>-<number + 1>``."""
    return f"{sweep}-{number + 1}"


class TrialQueue:
    """A sweep's view of its trial jobs in the store."""

    def __init__(self, store: Store, sweep_id: int, sweep_name: str) -> None:
        self.store = store
        self.sweep_id = sweep_id
        self.sweep_name = sweep_name
        self.source = commands.SPAWNED_SOURCE.format(sweep_id)

    def jobs(self) -> dict[int, Job]:
        """The trial jobs queued so far, by Optuna trial number."""
        prefix = f"{self.sweep_name}-"
        found = {}
        for job in commands.spawned_jobs(self.store, self.sweep_id):
            suffix = job.name.removeprefix(prefix)
            if job.name.startswith(prefix) and suffix.isdigit():
                found[int(suffix) - 1] = job
        return found

    def submit(self, given: dict[str, Any]) -> int:
        """Validate a trial's job mapping (named ``<sweep>-<n>``) with its kind's model and queue it; returns
        the job id."""
        spec = get_kind(str(given["kind"])).spec.model_validate(given)
        return self.store.add_jobs([job_row(spec, given, self.source)])[0]

    def cancel_unfinished(self) -> int:
        """Cancel every trial that has not ended (pending at once, running through the daemon); returns how many."""
        count = 0
        for job in self.jobs().values():
            if job.state not in TERMINAL_STATES:
                try:
                    commands.cancel(self.store, job.id)
                    count += 1
                except commands.CommandError:  # it ended meanwhile
                    continue
        return count

    def cancel_requested(self) -> bool:
        """Whether someone asked to cancel the sweep itself (not only to stop it: a daemon stop resumes it)."""
        job = self.store.job(self.sweep_id)
        return bool(job and (job.cancel_requested or job.state == JobState.CANCELLED))

    def outcome(self, job: Job, metric: str, direction: str, aggregate: str) -> TrialOutcome:
        """The metric of an ended trial: its best value over the run (``aggregate: best``) or its last."""
        if job.state != JobState.SUCCEEDED:
            return TrialOutcome(None, f"{job.state}: {job.reason or ''}".strip(": "))
        values = [r["value"] for r in self.store.metrics(job.id, metric) if r["value"] is not None]
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return TrialOutcome(None, f"succeeded but logged no {metric}")
        if aggregate == "last":
            return TrialOutcome(values[-1])
        return TrialOutcome(max(values) if direction == "maximize" else min(values))

    def best_checkpoint(self, job_id: int) -> str | None:
        """The ``best_checkpoint`` output a trial recorded (its latest), if any."""
        outputs = self.store.outputs(job_id, "best_checkpoint")
        return outputs[-1]["path"] if outputs else None
