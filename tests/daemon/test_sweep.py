"""Sweeps through a real daemon, with the cheap ``probe`` kind as the base job (it logs ``probe/value`` =
0.5 × its last step index, so ``steps`` decides the metric): trials are ordinary jobs, the sweep holds no
device slot, a failed trial is recorded, cancelling cancels the trials, ``kill -9`` loses and repeats nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for, wait_state, write_job
from tests.daemon.conftest import completions, job_named, logged
from torchbearer import commands, runs
from torchbearer.daemon.scheduler import place_jobs
from torchbearer.ingest import job_row
from torchbearer.spec import parse_job_text
from torchbearer.store import TERMINAL_STATES

SWEEP = """name: sw
kind: sweep
base: {{kind: probe, step_s: {step_s}{base}}}
space:
{space}
metric: probe/value
parallel: {parallel}
"""


def sweep_yaml(space: str, *, parallel: int = 1, step_s: float = 0.02, base: str = "") -> str:
    return SWEEP.format(space=space, parallel=parallel, step_s=step_s, base=base)


def _trials(store, sweep_id: int):
    return sorted(commands.spawned_jobs(store, sweep_id), key=lambda job: job.id)


def _csv(job) -> list[dict[str, str]]:
    with open(Path(job.run_dir) / "sweep.csv", newline="") as file:
        return list(csv.DictReader(file))


def _never_more_open_than(store, trials, parallel: int) -> None:
    """At each trial's creation, at most ``parallel`` trials (it included) had been queued and not ended."""
    for trial in trials:
        open_then = [t for t in trials if t.created_at <= trial.created_at and t.finished_at > trial.created_at]
        assert len(open_then) <= parallel, [(t.name, t.created_at, t.finished_at) for t in open_then]


def test_grid_sweep_queues_its_trials_as_jobs_writes_csv_and_names_the_best(project, store, daemon):
    write_job(project.queue_dir, "bad.yaml", sweep_yaml("  stepz: [1, 2]"))  # refused, with the closest field
    write_job(project.queue_dir, "sw.yaml", sweep_yaml("  steps: [2, 4, 3]", parallel=2))
    sweep = wait_state(store, job_named(store, "sw").id, {"succeeded", "failed"}, timeout=60)
    assert sweep.state == "succeeded", (sweep.reason, Path(sweep.run_dir, "log.txt").read_text()[-2000:])
    # one slot, two trials at once and a sweep waiting on them: it holds no slot, or nothing could run
    assert f"started sw (#{sweep.id}) attempt 1 on no device slot" in logged(daemon)
    trials = _trials(store, sweep.id)
    assert [t.name for t in trials] == ["sw-1", "sw-2", "sw-3"]
    assert all(t.state == "succeeded" and t.kind == "probe" for t in trials)
    assert sorted(line.split()[1] for line in completions(project)) == ["sw-1", "sw-2", "sw-3"]  # each ran once
    _never_more_open_than(store, trials, 2)
    rows = _csv(sweep)
    assert [r["job"] for r in rows] == ["sw-1", "sw-2", "sw-3"]
    by_steps = {r["steps"]: float(r["probe/value"]) for r in rows}
    assert by_steps == {"2": 0.5, "3": 1.0, "4": 1.5}  # every grid point once, with its metric
    best = json.loads(Path(sweep.run_dir, "best.json").read_text())
    assert best["params"] == {"steps": 4} and best["value"] == 1.5 and best["direction"] == "maximize"
    assert best["job"] == next(r["job"] for r in rows if r["steps"] == "4")
    assert store.job(best["job_id"]).spec["steps"] == 4  # the trial job really ran with the parameter
    status = subprocess.run([sys.executable, "-m", "torchbearer", "status"], capture_output=True, text=True,
                            env=os.environ, cwd=project.project_dir, check=True).stdout  # fmt: skip
    assert all(name in status for name in ("sw-1", "sw-2", "sw-3"))
    error = (project.queue_dir / "rejected" / "bad.yaml.error.txt").read_text()
    assert "space.stepz: not a field of a probe job; did you mean 'steps'?" in error


def test_failed_trial_is_recorded_and_the_sweep_still_ends(project, store, daemon):
    base = ", retries: 1, retry_backoff: 0"  # a trial retries like any job before it counts as failed
    write_job(project.queue_dir, "sw.yaml", sweep_yaml("  action: [succeed, raise]\n  steps: [2]", base=base))
    sweep = wait_state(store, job_named(store, "sw").id, {"succeeded", "failed"}, timeout=60)
    assert sweep.state == "succeeded", sweep.reason
    rows = {r["action"]: r for r in _csv(sweep)}
    assert store.job(int(rows["raise"]["job_id"])).attempts == 2
    assert rows["raise"]["state"] == "failed" and rows["raise"]["probe/value"] == ""
    assert "failed on purpose" in rows["raise"]["note"]
    assert rows["succeed"]["state"] == "succeeded" and float(rows["succeed"]["probe/value"]) == 0.5
    assert json.loads(Path(sweep.run_dir, "best.json").read_text())["params"]["action"] == "succeed"


def test_a_sweep_whose_every_trial_fails_fails_with_the_reason(project, store, daemon):
    write_job(project.queue_dir, "sw.yaml", sweep_yaml("  action: [raise]"))
    sweep = wait_state(store, job_named(store, "sw").id, {"succeeded", "failed"}, timeout=60)
    assert sweep.state == "failed" and "no trial of sw gave probe/value" in sweep.reason
    assert _csv(sweep)[0]["state"] == "failed"


def test_cancelling_a_sweep_cancels_its_pending_trials(project, store, daemon):
    write_job(project.queue_dir, "sw.yaml", sweep_yaml("  steps: [400, 401, 402]", parallel=2, step_s=0.05))
    sweep = job_named(store, "sw")
    wait_for(lambda: len(_trials(store, sweep.id)) == 2, 30, what="two trials queued")
    first, second = _trials(store, sweep.id)
    wait_state(store, first.id, "running")
    assert store.job(second.id).state == "queued"  # one slot: the second waits
    commands.cancel(store, "sw")
    assert wait_state(store, sweep.id, TERMINAL_STATES).state == "cancelled"
    assert wait_state(store, second.id, TERMINAL_STATES).state == "cancelled"
    assert wait_state(store, first.id, TERMINAL_STATES).state == "cancelled"
    assert len(_trials(store, sweep.id)) == 2  # the third was never queued
    assert completions(project) == []


@pytest.mark.slow
def test_sweep_survives_kill9_of_the_daemon_without_rerunning_finished_trials(project, store, daemon):
    write_job(project.queue_dir, "sw.yaml", sweep_yaml("  steps: [40, 41, 42]", step_s=0.05))
    sweep = job_named(store, "sw")
    wait_for(lambda: len(_trials(store, sweep.id)) == 2, 30, what="the second trial")
    first, second = _trials(store, sweep.id)
    assert wait_state(store, first.id, TERMINAL_STATES).state == "succeeded"
    wait_for(lambda: (store.latest_progress(second.id) or {}).get("step", 0) >= 3, 30, what="trial 2 under way")
    run_dir = Path(store.job(sweep.id).run_dir)
    daemon.kill9()
    # the daemon is down, so the store learns nothing: the controller's outcome file says how it stopped
    wait_for(lambda: (runs.read_outcome(run_dir, 1) or {}).get("outcome") == "interrupted", 20,
             what="the sweep to stop")  # fmt: skip
    daemon.start()
    sweep = wait_state(store, sweep.id, {"succeeded", "failed"}, timeout=60)
    assert store.attempts(sweep.id)[0]["outcome"] == "interrupted"  # read from that file at the restart
    assert sweep.state == "succeeded", sweep.reason
    trials = _trials(store, sweep.id)
    assert [t.name for t in trials] == ["sw-1", "sw-2", "sw-3"]  # nothing queued twice
    assert sorted(line.split()[1] for line in completions(project)) == ["sw-1", "sw-2", "sw-3"]
    assert store.job(first.id).attempts == 1  # the finished trial did not run again
    assert store.job(second.id).attempts == 2  # the interrupted one resumed
    assert sweep.attempts == 2
    assert sorted(float(r["probe/value"]) for r in _csv(sweep)) == [19.5, 20.0, 20.5]


def test_unknown_metric_and_empty_space_are_refused_before_anything_runs(project):
    text = sweep_yaml("  steps: [1]").replace("probe/value", "val/iou")
    try:
        parse_job_text(text, "sw.yaml")
    except ValueError as exc:
        assert "a probe job does not log 'val/iou'" in str(exc) and "probe/value" in str(exc)
    else:
        raise AssertionError("a metric the base kind does not log was accepted")
    try:
        parse_job_text(SWEEP.format(space="  {}", parallel=1, step_s=0.1, base=""), "sw.yaml")
    except ValueError as exc:
        assert "space is empty" in str(exc)
    else:
        raise AssertionError("an empty space was accepted")


def test_a_sweep_starts_without_a_free_slot_and_does_not_jump_the_queue(store):
    """The scheduler: a devices: 0 job is placed with no slot even when every slot is busy."""
    sweep = parse_job_text(sweep_yaml("  steps: [1]"), "sw.yaml")[0]
    probe = parse_job_text("name: p\nkind: probe\npriority: 5\n", "p.yaml")[0]
    probe_id, sweep_id = store.add_jobs([job_row(probe.spec, probe.given, "t"), job_row(sweep.spec, sweep.given, "t")])
    assert [(p.job_id, p.slots) for p in place_jobs(store, [], [""])] == [(sweep_id, ())]
    assert [(p.job_id, p.slots) for p in place_jobs(store, [""], [""])] == [(probe_id, ("",)), (sweep_id, ())]


def test_foreground_run_also_runs_the_trials(project, store, tmp_path):
    path = tmp_path / "sw.yaml"
    path.write_text(sweep_yaml("  steps: [2, 3]"))
    result = subprocess.run([sys.executable, "-m", "torchbearer", "run", str(path)], capture_output=True,
                            text=True, env=os.environ, cwd=project.project_dir, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    sweep = store.find_job("sw")
    assert sweep.state == "succeeded" and [t.state for t in _trials(store, sweep.id)] == ["succeeded"] * 2


def test_a_trial_asked_but_never_queued_is_queued_by_the_restarted_sweep(project, store):
    """The sweep died between Optuna's ask and queueing the trial: the next attempt queues it, once."""
    from tests.contract import ingest, job_context
    from torchbearer.jobs.sweep import _settle
    from torchbearer.sweeps.space import distributions
    from torchbearer.sweeps.study import open_study
    from torchbearer.sweeps.trials import TrialQueue

    parsed = parse_job_text(sweep_yaml("  steps: [7, 8]"), "sw.yaml")[0]
    (sweep_id,) = store.add_jobs([job_row(parsed.spec, parsed.given, "t")])
    run_dir = project.runs_dir / f"{sweep_id}-sw"
    store.transition(sweep_id, "running")  # the daemon queues what a running job asks for
    ctx = job_context(store, sweep_id, run_dir, project, attempt=2)
    spec = parsed.spec
    study = open_study(run_dir, "sw", "grid", spec.direction, spec.dimensions, spec.seed)
    asked = study.ask(distributions(spec.dimensions, "grid"))  # … and the sweep was killed here
    queue = TrialQueue(ctx, "sw")
    again = open_study(run_dir, "sw", "grid", spec.direction, spec.dimensions, spec.seed)
    _settle(spec, ctx, again, queue)
    _settle(spec, ctx, again, queue)  # submitted, not queued yet: not asked for twice
    ingest(store, ctx)  # the daemon queues it and lists it in children.json
    _settle(spec, ctx, again, TrialQueue(ctx, "sw"))  # a sweep started afresh finds it there
    ingest(store, ctx)
    (trial,) = _trials(store, sweep_id)
    assert trial.name == "sw-1" and trial.state == "queued" and trial.source == f"spawned by #{sweep_id}"
    assert trial.spec["steps"] == asked.params["steps"] and trial.spec["step_s"] == 0.02
