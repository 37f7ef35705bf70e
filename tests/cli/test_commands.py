"""hold / release / pause / resume / priority / cancel / retry through the CLI, with and without a daemon."""

from __future__ import annotations

import json
import time

from tests.cli.conftest import flat, tb
from tests.conftest import wait_for, wait_state, write_job
from tests.daemon.conftest import job_named, probe


def _state(store, ref):
    return store.find_job(ref).state


def test_commands_without_a_daemon(project, store, night):
    assert tb("submit", night).returncode == 0
    for args, state_of_a in [
        (("hold", "a"), "held"),
        (("release", "1"), "queued"),
        (("priority", "a", "7"), "queued"),
        (("cancel", "#1"), "cancelled"),
        (("retry", "a"), "queued"),
    ]:
        result = tb(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert _state(store, "a") == state_of_a, args
    assert store.find_job("a").priority == 7
    assert tb("hold", "b").stdout.strip() == "b (#2): held"
    assert tb("release", "b").stdout.strip() == "b (#2): waiting"  # it still waits for a
    assert tb("pause").returncode == 0 and store.queue_paused()["reason"] == "paused on request"
    assert tb("resume").returncode == 0 and store.queue_paused() is None


def test_command_errors(project, store, night):
    assert tb("submit", night).returncode == 0
    cases = [
        (("hold", "nope"), "no job 'nope' (give an id such as 12 or a job name)"),
        (("release", "a"), "a (#1) is queued, not held"),
        (("priority", "a", "5000"), "priority 5000 is out of range -1000..1000"),
        (("retry", "a"), "a (#1) is queued; only failed, cancelled or dependency-failed jobs retry"),
    ]
    for args, message in cases:
        result = tb(*args)
        assert result.returncode == 1 and message in flat(result.stderr), (args, result.stderr)
    tb("cancel", "a")
    result = tb("cancel", "a")
    assert result.returncode == 1 and "a (#1) is cancelled; nothing to cancel" in flat(result.stderr)
    result = tb("hold", "a")
    assert result.returncode == 1 and "only queued, waiting or interrupted jobs can be held" in flat(result.stderr)


def _status() -> dict:
    result = tb("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_hold_release_with_a_daemon(project, store, daemon, night):
    assert tb("submit", "--held", night).returncode == 0
    write_job(project.queue_dir, "marker.yaml", probe("marker", priority=-100))
    wait_state(store, job_named(store, "marker").id, "succeeded")  # the daemon ran the lowest job, not the held
    assert [j.state for j in store.jobs(ids=[1, 2])] == ["held", "held"]
    assert tb("release", "a").returncode == 0 and tb("release", "b").returncode == 0
    wait_state(store, 2, "succeeded")


def test_pause_priority_resume_with_a_daemon(project, store, daemon):
    assert tb("pause").returncode == 0
    write_job(project.queue_dir, "one.yaml", probe("one"))
    write_job(project.queue_dir, "two.yaml", probe("two"))
    one, two = job_named(store, "one"), job_named(store, "two")
    time.sleep(0.5)  # a few scheduling passes of the daemon
    assert (store.job(one.id).state, store.job(two.id).state) == ("queued", "queued")
    document = _status()
    assert document["queue"]["paused"] is True and document["queue"]["pause_reason"] == "paused on request"
    assert document["daemon"]["alive"] is True and document["daemon"]["pid"] == daemon.process.pid
    assert tb("priority", "two", "3").returncode == 0
    assert tb("resume").returncode == 0
    one, two = wait_state(store, one.id, "succeeded"), wait_state(store, two.id, "succeeded")
    assert two.started_at < one.started_at


def test_cancel_running_through_the_cli(project, store, daemon):
    write_job(project.queue_dir, "long.yaml", probe("long", steps=400, step_s=0.05))
    job = wait_state(store, job_named(store, "long").id, "running")
    result = tb("cancel", "long")
    assert result.returncode == 0 and "cancel requested; the daemon stops it" in flat(result.stdout)
    wait_state(store, job.id, "cancelled")


def test_retry_a_failed_job_with_a_daemon(project, store, daemon):
    write_job(project.queue_dir, "boom.yaml", probe("boom", action="raise", steps=1))
    job = wait_state(store, job_named(store, "boom").id, "failed")
    assert tb("retry", "boom").returncode == 0
    wait_for(lambda: store.job(job.id).attempts == 2 and store.job(job.id).state == "failed", 30, what="re-run")


def test_release_during_a_retry_backoff_keeps_the_wait(project, store):
    from torchbearer import commands
    from torchbearer.store import NewJob

    (job_id,) = store.add_jobs([NewJob("r", "probe", {}, {"name": "r", "kind": "probe"}, retries=2)])
    store.transition(job_id, "running")  # its first attempt failed: waiting out the backoff
    store.transition(job_id, "waiting", reason="retry 1/2 in 600 s", next_try_at=time.time() + 600)
    commands.hold(store, job_id)
    assert commands.release(store, job_id).message == "r (#1): waiting"
    store.update_job(job_id, next_try_at=time.time() - 1)
    commands.hold(store, job_id)
    assert commands.release(store, job_id).message == "r (#1): queued"
