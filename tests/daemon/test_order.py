"""What runs when: priority then submission order, `after` chains, failed dependencies, not_before, cron."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, wait_for, wait_state, write_job
from tests.daemon.conftest import job_named, logged, stop_daemon
from torchbearer import commands
from torchbearer.daemon.scheduler import CronSchedules
from torchbearer.ingest import submit_file


def _started_order(store, ids):
    jobs = store.jobs(ids=ids)
    return [j.name for j in sorted(jobs, key=lambda j: j.started_at)]


def test_priority_then_submission_order(project, store, daemon):
    commands.pause(store)
    write_job(project.queue_dir, "night.yaml", (
        "defaults: {kind: probe, steps: 1, step_s: 0}\njobs:\n"
        "  - {name: low, priority: -1}\n  - {name: first-plain}\n  - {name: urgent, priority: 10}\n"
        "  - {name: second-plain}\n  - {name: high, priority: 5}\n"
    ))  # fmt: skip
    jobs = wait_for(lambda: len(store.jobs()) == 5 and store.jobs(), what="five jobs queued")
    ids = [j.id for j in jobs]
    assert {j.state for j in jobs} == {"queued"}
    commands.set_priority(store, "low", -2)
    commands.resume(store)
    for job_id in ids:
        wait_state(store, job_id, "succeeded")
    assert _started_order(store, ids) == ["urgent", "high", "first-plain", "second-plain", "low"]


def test_after_chain_in_file_and_across_files(project, store, daemon):
    write_job(project.queue_dir, "chain.yaml", (
        "defaults: {kind: probe, steps: 2}\njobs:\n"
        "  - {name: c, after: [b]}\n  - {name: a}\n  - {name: b, after: [a], priority: 50}\n"
    ))  # fmt: skip
    a = job_named(store, "a")
    write_job(project.queue_dir, "later.yaml", f"name: d\nkind: probe\nafter: [c, {a.id}]\npriority: 100\n")
    d = wait_state(store, job_named(store, "d").id, "succeeded")
    jobs = {j.name: j for j in store.jobs()}
    assert jobs["d"].after == [jobs["c"].id, a.id]
    for later, earlier in [("b", "a"), ("c", "b"), ("d", "c")]:
        assert jobs[later].state == "succeeded"
        assert jobs[later].started_at >= jobs[earlier].finished_at
    assert [t["to_state"] for t in store.transitions(d.id)] == ["waiting", "queued", "running", "succeeded"]


def test_failed_dependency_fails_dependents_transitively(project, store, daemon):
    write_job(project.queue_dir, "broken.yaml", (
        "defaults: {kind: probe, steps: 1}\njobs:\n"
        "  - {name: x, action: raise}\n  - {name: y, after: [x]}\n  - {name: z, after: [y]}\n"
        "  - {name: free}\n"
    ))  # fmt: skip
    x = wait_state(store, job_named(store, "x").id, "failed")
    y = wait_state(store, job_named(store, "y").id, "dependency-failed")
    z = wait_state(store, job_named(store, "z").id, "dependency-failed")
    assert y.reason == f"dependency did not succeed: x (#{x.id}) failed"
    assert z.reason == f"dependency did not succeed: y (#{y.id}) dependency-failed"
    assert y.attempts == 0 and z.attempts == 0
    wait_state(store, job_named(store, "free").id, "succeeded")
    # retrying the failed root does not revive its dependents by itself; retrying them does
    commands.retry(store, y.id)
    assert store.job(y.id).state == "waiting"


def test_not_before(project, store, daemon):
    start = float(int(time.time()) + 3)
    moment = datetime.fromtimestamp(start, UTC).isoformat()
    write_job(project.queue_dir, "later.yaml", f"name: later\nkind: probe\nnot_before: '{moment}'\n")
    job = wait_state(store, job_named(store, "later").id, "succeeded")
    assert job.not_before == pytest.approx(start, abs=1e-3) and job.started_at >= start - 1e-3
    assert [t["to_state"] for t in store.transitions(job.id)] == ["waiting", "queued", "running", "succeeded"]


def test_cron_schedule_is_armed_and_a_firing_enqueues_a_job_the_daemon_runs(project, store, daemon):
    """The trigger's next fire time is checked on APScheduler; the firing itself is called directly, so the
    test need not wait for a minute boundary (what the trigger calls is the same `_fire`)."""
    write_job(project.queue_dir, "nightly.yaml", "name: nightly\nkind: probe\nschedule: '*/5 * * * *'\n")
    (schedule,) = wait_for(store.schedules, what="the schedule in the store")
    assert schedule["cron"] == "*/5 * * * *" and store.jobs() == []
    assert wait_for(lambda: "schedule nightly (*/5 * * * *) armed" in logged(daemon), what="armed in the daemon")

    fired: list[int] = []
    cron = CronSchedules(store, on_fire=lambda: fired.append(1))
    cron.start()
    try:
        trigger_job = cron.scheduler.get_job(f"schedule-{schedule['id']}")
        next_run = trigger_job.next_run_time
        assert next_run.minute % 5 == 0 and next_run.second == 0
        assert 0 < next_run.timestamp() - time.time() <= 300
        cron._fire(schedule["id"])
    finally:
        cron.shutdown()
    assert fired == [1]
    job = wait_state(store, job_named(store, "nightly").id, "succeeded")
    assert job.schedule_id == schedule["id"] and job.source == f"schedule #{schedule['id']}"
    assert store.schedules()[0]["last_fired_at"] is not None


def test_schedule_submitted_without_daemon_is_kept(project, store, tmp_path):
    path = tmp_path / "weekly.yaml"
    path.write_text("name: weekly\nkind: probe\nschedule: '0 3 * * 1'\n")
    assert submit_file(path, project.queue_dir, store) == []
    assert [s["name"] for s in store.schedules()] == ["weekly"]


def _visible_devices(pid: int) -> str | None:
    """CUDA_VISIBLE_DEVICES as a running process sees it."""
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"CUDA_VISIBLE_DEVICES="):
            return item.split(b"=", 1)[1].decode()
    return None


def _running(store, name):
    """A job once running with its worker's pid recorded (the pid is written just after the claim)."""
    job = job_named(store, name)
    return wait_for(lambda: (j := store.job(job.id)).state == "running" and j.pid and j, what=f"{name} running")


def test_one_job_per_device_slot(project, store, monkeypatch):
    """Two GPU slots: two jobs run side by side, each seeing only its own GPU; a two-slot job waits for both;
    a job needing more slots than the daemon has fails at once, with the reason."""
    monkeypatch.setenv("TORCHBEARER_DEVICES", "0,1")
    commands.pause(store)
    write_job(project.queue_dir, "slots.yaml", (
        "defaults: {kind: probe, steps: 20, step_s: 0.05}\njobs:\n"
        "  - {name: one, priority: 3}\n  - {name: two, priority: 2}\n  - {name: both, devices: 2, priority: 1}\n"
        "  - {name: greedy, devices: 3, priority: 9}\n"
    ))  # fmt: skip
    daemon = DaemonProcess(project).start()
    try:
        wait_for(lambda: len(store.jobs()) == 4, what="four jobs")
        commands.resume(store)
        one, two = _running(store, "one"), _running(store, "two")
        assert {(one.slot, _visible_devices(one.pid)), (two.slot, _visible_devices(two.pid))} == {
            ("0", "0"),
            ("1", "1"),
        }
        both = _running(store, "both")
        assert both.slot == "0,1" and _visible_devices(both.pid) == "0,1"
        jobs = {name: wait_state(store, job_named(store, name).id, {"succeeded", "failed"}) for name in
                ("one", "two", "both", "greedy")}  # fmt: skip
    finally:
        stop_daemon(daemon)
    assert jobs["greedy"].state == "failed" and jobs["greedy"].reason == "needs 3 device slots; this daemon has 2"
    assert jobs["two"].started_at < jobs["one"].finished_at  # side by side
    assert jobs["both"].started_at >= max(jobs["one"].finished_at, jobs["two"].finished_at)


def test_unschedule_disarms_the_trigger_and_schedules_lists_it(project, store, daemon):
    from typer.testing import CliRunner

    from torchbearer.cli import app

    write_job(project.queue_dir, "nightly.yaml", "name: nightly\nkind: probe\nschedule: '0 3 * * *'\n")
    (schedule,) = wait_for(store.schedules, what="the schedule in the store")
    assert wait_for(lambda: "schedule nightly (0 3 * * *) armed" in logged(daemon), what="armed in the daemon")
    runner = CliRunner()
    listing = runner.invoke(app, ["schedules"])
    assert listing.exit_code == 0 and "nightly" in listing.output and "0 3 * * *" in listing.output
    result = runner.invoke(app, ["unschedule", str(schedule["id"])])
    assert result.exit_code == 0 and "disabled" in result.output
    assert store.schedules() == []
    assert wait_for(lambda: f"schedule #{schedule['id']} disarmed" in logged(daemon), what="disarmed in the daemon")
    assert runner.invoke(app, ["unschedule", "999"]).exit_code == 1
    assert runner.invoke(app, ["unschedule", str(schedule["id"]), "--enable"]).exit_code == 0
    assert wait_for(lambda: logged(daemon).count("schedule nightly (0 3 * * *) armed") == 2, what="re-armed")
