"""A sweep's trials as it sees them, without the state store: queued through the daemon, read from its run folder.

The sweep never opens the store (the daemon is its one writer, see :mod:`torchbearer.runs`). To queue a trial
it validates the trial's job mapping with its kind's model (a bad trial fails here, with the error) and appends
a ``submit`` event; the daemon queues it as an ordinary job (``ingest.job_row`` into ``Store.add_jobs``) with
``source = "spawned by #<sweep id>"`` (:data:`commands.SPAWNED_SOURCE`), at most once per name, so it shows in
``status`` and the dashboard, retries and cancels like any job. The daemon rewrites the sweep's
``children.json`` about once a second: each trial's id, state, reason, outputs and values of the sweep's
metric; that is all this module reads. Each trial is named ``<sweep>-<n>`` (n = Optuna's trial number + 1). A
cancel of the sweep cancels its unfinished trials in ``commands.cancel``; the daemon marks it in the run
folder (``cancel-requested``) before its SIGTERM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchbearer.jobs import get_kind

if TYPE_CHECKING:
    from torchbearer.context import JobContext

#: States after which a job never runs again (as ``store.TERMINAL_STATES``, spelled out: no store here).
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "dependency-failed"})


@dataclass(frozen=True)
class TrialOutcome:
    """How an ended trial job did: its metric value (None: failed, or it logged none) and why not."""

    value: float | None
    note: str = ""


@dataclass(frozen=True)
class TrialJob:
    """A trial job as the daemon last described it in ``children.json``."""

    id: int
    name: str
    state: str
    reason: str | None = None
    outputs: list[dict[str, str]] = field(default_factory=list)
    metrics: dict[str, list[float | None]] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL


def trial_name(sweep: str, number: int) -> str:
    """The job name of Optuna trial ``number`` (0-based) of a sweep: ``<sweep>-<number + 1>``."""
    return f"{sweep}-{number + 1}"


class TrialQueue:
    """A sweep's view of its trial jobs: submitted through its context, read from ``children.json``."""

    def __init__(self, ctx: JobContext, sweep_name: str) -> None:
        self.ctx = ctx
        self.sweep_name = sweep_name
        #: Names submitted by this attempt that the daemon may not have queued yet (not to submit twice).
        self.submitted: set[str] = set()

    def jobs(self) -> dict[int, TrialJob]:
        """The trial jobs queued so far, by Optuna trial number."""
        prefix = f"{self.sweep_name}-"
        found = {}
        for name, entry in self.ctx.children().items():
            suffix = name.removeprefix(prefix)
            if name.startswith(prefix) and suffix.isdigit():
                found[int(suffix) - 1] = TrialJob(
                    id=int(entry["id"]), name=name, state=str(entry["state"]), reason=entry.get("reason"),
                    outputs=list(entry.get("outputs") or []), metrics=dict(entry.get("metrics") or {}),
                )  # fmt: skip
        return found

    def pending(self, name: str) -> bool:
        """Whether this attempt submitted ``name`` already (queued or about to be)."""
        return name in self.submitted

    def submit(self, given: dict[str, Any]) -> None:
        """Validate a trial's job mapping (named ``<sweep>-<n>``) with its kind's model and ask the daemon to
        queue it."""
        get_kind(str(given["kind"])).spec.model_validate(given)
        self.ctx.submit(given)
        self.submitted.add(str(given["name"]))

    def cancel_requested(self) -> bool:
        """Whether someone asked to cancel the sweep itself (not only to stop it: a daemon stop resumes it)."""
        return self.ctx.cancel_requested

    def outcome(self, job: TrialJob, metric: str, direction: str, aggregate: str) -> TrialOutcome:
        """The metric of an ended trial: its best value over the run (``aggregate: best``) or its last."""
        if job.state != "succeeded":
            return TrialOutcome(None, f"{job.state}: {job.reason or ''}".strip(": "))
        values = [v for v in job.metrics.get(metric, []) if v is not None and math.isfinite(v)]
        if not values:
            return TrialOutcome(None, f"succeeded but logged no {metric}")
        if aggregate == "last":
            return TrialOutcome(values[-1])
        return TrialOutcome(max(values) if direction == "maximize" else min(values))

    def best_checkpoint(self, job: TrialJob) -> str | None:
        """The ``best_checkpoint`` output a trial recorded (its latest), if any."""
        paths = [o["path"] for o in job.outputs if o["kind"] == "best_checkpoint"]
        return paths[-1] if paths else None
