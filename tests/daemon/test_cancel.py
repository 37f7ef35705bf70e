"""Cancel: a queued job at once, a running one by SIGTERM to its process group, SIGKILL after the grace."""

from __future__ import annotations

from tests.conftest import wait_for, wait_state, write_job
from tests.daemon.conftest import completions, job_named, logged, probe
from torchbearer import commands


def _running_with_progress(store, name):
    job = job_named(store, name)
    wait_state(store, job.id, "running")
    wait_for(lambda: (store.latest_progress(job.id) or {}).get("step"), 15, what=f"{name} to make progress")
    return job


def test_cancel_running_job_stops_at_a_safe_point(project, store, tolerant_daemon):
    write_job(project.queue_dir, "long.yaml", probe("long", steps=400, step_s=0.05))
    job = _running_with_progress(store, "long")
    result = commands.cancel(store, job.id)
    assert "cancel requested" in result.message
    job = wait_state(store, job.id, "cancelled")
    assert job.reason == "cancelled on request" and job.exit_code == 75  # the worker saved and exited
    assert store.attempts(job.id)[0]["outcome"] == "cancelled"
    assert completions(project) == []


def test_cancel_running_job_that_ignores_sigterm(project, store, tolerant_daemon):
    write_job(project.queue_dir, "deaf.yaml", probe("deaf", steps=400, step_s=0.05, ignore_sigterm="true"))
    job = _running_with_progress(store, "deaf")
    commands.cancel(store, job.id)
    job = wait_state(store, job.id, "cancelled")
    assert job.exit_code == -9
    assert "ignored SIGTERM for 1 s: SIGKILL" in logged(tolerant_daemon)
    assert completions(project) == []


def test_cancel_queued_job_never_runs(project, store, tolerant_daemon):
    write_job(project.queue_dir, "first.yaml", probe("first", steps=400, step_s=0.05))
    first = _running_with_progress(store, "first")
    write_job(project.queue_dir, "second.yaml", probe("second"))
    second = wait_state(store, job_named(store, "second").id, "queued")
    assert commands.cancel(store, second.id).message == f"second (#{second.id}): cancelled"
    assert store.job(second.id).state == "cancelled"
    commands.cancel(store, first.id)
    wait_state(store, first.id, "cancelled")
    second = store.job(second.id)
    assert second.attempts == 0 and second.started_at is None
    assert not (project.runs_dir / f"{second.id}-second").exists()
