"""The ``sweep`` kind: a base job of any kind, a search space over its fields, trials queued as ordinary jobs.

```yaml
name: lr-sweep
kind: sweep
base: {kind: train, scenes: [...], masks: masks/t29unu_cloud.tif, train: {epochs: 2}}
space:
  train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}   # log-uniform range
  model.arch: [fcn, unet]                            # choices
method: tpe            # grid | random | tpe (Optuna's ask-and-tell)
metric: val/iou        # a metric the base kind logs; direction: maximize (minimize for a loss) by default
max_trials: 8
parallel: 2            # trials queued at once
```
Each trial is a job ``<sweep>-<n>`` of the base kind with its parameters written in, queued into the store like
a submitted file: it shows in ``status``, retries (the base's ``retries``) and can be cancelled. The sweep holds
no device slot (``devices: 0``): it only waits on its trials, so it cannot starve them on a one-slot daemon. It
ends when its trials have ended, with ``sweep.csv`` and ``best.json`` in its run folder and the best trial's
checkpoint as its ``best_checkpoint`` (so a predict job's ``models: [{job: <sweep>}]`` uses it). A failed trial
is recorded; cancelling the sweep cancels its unfinished trials; a sweep stopped or killed with its daemon
re-reads its Optuna study (``study.journal``) and its trials (``children.json``, written by the daemon), and
re-queues nothing that ran. Like every worker it never opens the store (``sweeps/trials.py``).
"""

from __future__ import annotations

import difflib
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from torchbearer.jobs import JobKind, UnknownKindError, get_kind, register
from torchbearer.spec import NAME_PATTERN, JobSpec, _Lines, _validation_issues
from torchbearer.sweeps import space as sweep_space

if TYPE_CHECKING:
    from torchbearer.context import JobContext
    from torchbearer.sweeps.report import TrialRow
    from torchbearer.sweeps.trials import TrialQueue

log = logging.getLogger(__name__)

#: Seconds between two looks at the trials (a few store reads each).
POLL_INTERVAL_S = 1.0
#: Placeholder name the base job is validated under (each trial gets ``<sweep>-<n>``).
_BASE_NAME = "sweep-base"
#: Keys of the base job the sweep sets or that would detach a trial from it.
_BASE_FORBIDDEN = {"name": "each trial is named <sweep>-<n>", "after": "put after: on the sweep",
                   "schedule": "put schedule: on the sweep", "not_before": "put not_before: on the sweep"}  # fmt: skip


def _kind_of(base: dict[str, Any]) -> Any:
    try:
        return get_kind(str(base["kind"]))
    except UnknownKindError as exc:
        raise ValueError(f"base.kind: {exc}") from None


def _invalid(exc: ValidationError, model: type) -> str:
    """A trial model's errors as one line, each with its path under ``base``."""
    issues = _validation_issues(exc, model, ("base",), None, _Lines())
    return "; ".join(f"{issue.path}: {issue.message}" for issue in issues)


class SweepSpec(JobSpec):
    """A hyper-parameter sweep: ``base`` job, ``space`` over its fields, ``method``, ``metric``."""

    kind: Literal["sweep"] = "sweep"
    devices: int = Field(0, ge=0, le=0, description="a sweep holds no device slot; its trials do")
    base: dict[str, Any] = Field(description="the job each trial is (any kind), without name")
    space: dict[str, Any] = Field(description="dotted field of the base → list, {choices} or {low, high, step, log}")
    method: Literal["grid", "random", "tpe"] = "grid"
    metric: str = Field(description="what to optimise: a metric the base kind logs, e.g. val/iou")
    direction: Literal["maximize", "minimize"] = Field(description="default: minimize for a loss, maximize otherwise")
    aggregate: Literal["best", "last"] = Field("best", description="a trial's value: its best epoch, or its last")
    max_trials: int | None = Field(None, ge=1, le=1000, description="trials in all (grid: default its size)")
    parallel: int = Field(1, ge=1, le=64, description="trials queued or running at once")
    seed: int = Field(0, ge=0, description="seeds the sampler (and the order of a grid)")

    @model_validator(mode="before")
    @classmethod
    def _default_direction(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("direction") is None and isinstance(data.get("metric"), str):
            data = {**data, "direction": "minimize" if "loss" in data["metric"] else "maximize"}
        return data

    @field_validator("base")
    @classmethod
    def _base(cls, base: dict[str, Any]) -> dict[str, Any]:
        if "kind" not in base:
            raise ValueError("base needs a kind: the kind of every trial (train, classify …)")
        if base["kind"] == "sweep":
            raise ValueError("base.kind: a sweep's trials cannot be sweeps")
        for key, why in _BASE_FORBIDDEN.items():
            if key in base:
                raise ValueError(f"base.{key}: not allowed in a sweep's base ({why})")
        kind = _kind_of(base)
        try:
            kind.spec.model_validate({**base, "name": _BASE_NAME})
        except ValidationError as exc:
            raise ValueError(_invalid(exc, kind.spec)) from None
        return base

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        dimensions = sweep_space.parse_space(space)
        base = info.data.get("base")
        if base is None:  # refused above: its error is enough
            return space
        kind = _kind_of(base)
        for d in dimensions:
            sweep_space.check_key(kind.spec, d.key, kind.name)
        for params in sweep_space.boundary_params(dimensions):
            try:
                kind.spec.model_validate(sweep_space.trial_given(base, params, _BASE_NAME))
            except ValidationError as exc:
                values = ", ".join(f"{k} = {v!r}" for k, v in params.items())
                raise ValueError(f"with {values} the trial is not a valid {kind.name} job: "
                                 f"{_invalid(exc, kind.spec)}") from None  # fmt: skip
        return space

    @field_validator("metric")
    @classmethod
    def _metric(cls, metric: str, info: ValidationInfo) -> str:
        base = info.data.get("base")
        if base is None:
            return metric
        kind = _kind_of(base)
        if not kind.metrics:
            raise ValueError(f"a {kind.name} job logs no metrics a sweep can optimise")
        if not kind.logs_metric(metric):
            names = [m for m in kind.metrics if "*" not in m]
            close = difflib.get_close_matches(metric, names, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"a {kind.name} job does not log {metric!r}{hint} (it logs {', '.join(kind.metrics)})")
        return metric

    @model_validator(mode="after")
    def _trials(self) -> SweepSpec:
        dimensions = sweep_space.parse_space(self.space)
        if self.method == "grid":
            sweep_space.grid(dimensions)  # a log or stepless float range has no grid: say so now
        elif self.max_trials is None:
            raise ValueError(f"max_trials: a {self.method} sweep needs a number of trials")
        longest = f"{self.name}-{self.trial_count}"
        if len(longest) > 64 or not re.match(NAME_PATTERN, longest):
            raise ValueError(f"name: the trials' names ({longest}) would pass 64 characters; shorten the sweep's name")
        return self

    @property
    def dimensions(self) -> list[sweep_space.Dimension]:
        return sweep_space.parse_space(self.space)

    @property
    def trial_count(self) -> int:
        """Trials in all: ``max_trials``, at most the grid's size for a grid."""
        if self.method != "grid":
            return int(self.max_trials or 0)
        size = sweep_space.grid_size(self.dimensions)
        return min(size, self.max_trials or size)

    def trial_base(self) -> dict[str, Any]:
        """The base job of every trial; it takes the sweep's priority unless it names its own."""
        return {"priority": self.priority, **self.base}


# -- running ---------------------------------------------------------------------------------------------------


def run(spec: SweepSpec, ctx: JobContext) -> None:
    from torchbearer.context import JobInterrupted
    from torchbearer.sweeps.study import open_study
    from torchbearer.sweeps.trials import TrialQueue

    queue = TrialQueue(ctx, spec.name)
    dimensions = spec.dimensions
    study = open_study(ctx.run_dir, spec.name, spec.method, spec.direction, dimensions, spec.seed)
    distributions = sweep_space.distributions(dimensions, spec.method)
    total = spec.trial_count
    log.info("sweep %s: %d trial(s) of kind %s, %s, optimising %s (%s)", spec.name, total, spec.base["kind"],
             spec.method, spec.metric, spec.direction)  # fmt: skip
    last_report: list[TrialRow] | None = None
    while True:
        _settle(spec, ctx, study, queue)
        if ctx.should_stop or queue.cancel_requested():
            break
        active = _open_numbers(study)
        while len(active) < spec.parallel and len(study.trials) < total:
            trial = study.ask(distributions)
            queue.submit(_trial_job(spec, trial.number, trial.params))
            log.info("queued trial %d: %s", trial.number + 1, trial.params)
            active.add(trial.number)
        rows = _rows(spec, study, queue)
        if rows != last_report:
            last_report = rows
            _report(spec, ctx, rows)
        if not active and len(study.trials) >= total:
            break
        _sleep(ctx, POLL_INTERVAL_S)
    if ctx.should_stop or queue.cancel_requested():
        if queue.cancel_requested():  # commands.cancel cancelled its unfinished trials with it
            log.info("sweep cancelled: its unfinished trials are cancelled with it")
        _report(spec, ctx, _rows(spec, study, queue))
        raise JobInterrupted("sweep stopped; its finished trials are kept, it carries on when it runs again")
    _finish(spec, ctx, queue, _rows(spec, study, queue))


def _trial_job(spec: SweepSpec, number: int, params: dict[str, Any]) -> dict[str, Any]:
    """The job mapping of Optuna trial ``number``: the base with its parameters, named ``<sweep>-<number + 1>``."""
    from torchbearer.sweeps.trials import trial_name

    return sweep_space.trial_given(spec.trial_base(), params, trial_name(spec.name, number))


def _open_numbers(study: Any) -> set[int]:
    from torchbearer.sweeps.study import open_trials

    return {t.number for t in open_trials(study)}


def _settle(spec: SweepSpec, ctx: JobContext, study: Any, queue: TrialQueue) -> None:
    """Tell Optuna about trials whose jobs ended; queue trials asked but never queued (the sweep stopped in
    between)."""
    from optuna.trial import TrialState

    from torchbearer.sweeps.study import open_trials
    from torchbearer.sweeps.trials import trial_name

    jobs = queue.jobs()
    for trial in open_trials(study):
        job = jobs.get(trial.number)
        if job is None:
            if queue.pending(trial_name(spec.name, trial.number)):  # submitted; the daemon queues it
                continue
            if not (ctx.should_stop or queue.cancel_requested()):
                queue.submit(_trial_job(spec, trial.number, trial.params))
                log.info("queued trial %d, asked before the sweep stopped", trial.number + 1)
            continue
        if not job.is_terminal:
            continue
        outcome = queue.outcome(job, spec.metric, spec.direction, spec.aggregate)
        if outcome.value is None:
            study.tell(trial.number, state=TrialState.FAIL)
            log.warning("trial %d (%s) recorded as failed: %s", trial.number + 1, job.name, outcome.note)
        else:
            study.tell(trial.number, outcome.value)
            ctx.metric(spec.metric, outcome.value, step=trial.number + 1)
            log.info("trial %d (%s): %s = %.6g", trial.number + 1, job.name, spec.metric, outcome.value)


def _rows(spec: SweepSpec, study: Any, queue: TrialQueue) -> list[TrialRow]:
    from optuna.trial import TrialState

    from torchbearer.sweeps.report import TrialRow
    from torchbearer.sweeps.trials import trial_name

    jobs = queue.jobs()
    rows = []
    for trial in study.get_trials(deepcopy=False):
        job = jobs.get(trial.number)
        value, note = trial.value if trial.state == TrialState.COMPLETE else None, ""
        if value is None and job is not None and job.is_terminal:  # failed, or logged no metric: say why
            note = queue.outcome(job, spec.metric, spec.direction, spec.aggregate).note
        rows.append(TrialRow(
            trial=trial.number + 1, job=job.name if job else trial_name(spec.name, trial.number),
            job_id=job.id if job else None, state=job.state if job else "not queued", params=dict(trial.params),
            value=value, note=note,
        ))  # fmt: skip
    return rows


def _report(spec: SweepSpec, ctx: JobContext, rows: list[TrialRow]) -> None:
    from torchbearer.sweeps.report import SWEEP_CSV, best_row, write_csv

    write_csv(ctx.run_dir / SWEEP_CSV, rows, list(spec.space), spec.metric)
    ended = sum(1 for r in rows if r.value is not None or r.note)
    best = best_row(rows, spec.direction)
    fields = {"best_trial": best.job, "best": best.value} if best else {}
    ctx.progress("sweeping", done=ended, total=spec.trial_count, unit="trials", force=True, **fields)


def _finish(spec: SweepSpec, ctx: JobContext, queue: TrialQueue, rows: list[TrialRow]) -> None:
    from torchbearer.sweeps.report import BEST_JSON, SWEEP_CSV, best_row, write_best

    _report(spec, ctx, rows)
    ctx.output(ctx.run_dir / SWEEP_CSV, "report")
    best = best_row(rows, spec.direction)
    if best is None:
        raise RuntimeError(f"no trial of {spec.name} gave {spec.metric}: all {len(rows)} failed (see sweep.csv)")
    jobs = {job.id: job for job in queue.jobs().values()}
    checkpoint = queue.best_checkpoint(jobs[best.job_id]) if best.job_id in jobs else None
    write_best(ctx.run_dir / BEST_JSON, best, spec.metric, spec.direction, checkpoint)
    ctx.output(ctx.run_dir / BEST_JSON, "report")
    if checkpoint is not None:
        ctx.output(checkpoint, "best_checkpoint")
    failed = sum(1 for r in rows if r.value is None)
    log.info("best trial: %s (#%s) %s = %.6g with %s%s", best.job, best.job_id, spec.metric, best.value, best.params,
             f"; {failed} trial(s) failed" if failed else "")  # fmt: skip


def _sleep(ctx: JobContext, seconds: float) -> None:
    """Wait, waking at once when a stop is requested."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not ctx.should_stop:
        time.sleep(0.1)


register(JobKind("sweep", SweepSpec, run, "a hyper-parameter sweep: trials of a base job queued as jobs"))
