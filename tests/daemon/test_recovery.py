"""Recovery: kill -9 of the daemon (and of its worker), a clean stop, files left half-ingested, the lock,
the crash-loop guard. Nothing is lost, nothing runs twice to success."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import DaemonProcess, wait_for, wait_state, write_job
from tests.daemon.conftest import completions, job_named, logged, probe
from torchbearer import commands, runs
from torchbearer.ingest import INGESTING_PREFIX, ingest_queue_file, recover_claimed
from torchbearer.store import NewJob, pid_alive


def _running_at_step(store, name, step):
    job = wait_state(store, job_named(store, name).id, "running")
    wait_for(lambda: ((store.latest_progress(job.id) or {}).get("step") or 0) >= step, 20, what=f"{name} step")
    return store.job(job.id)


def _drop_night(project):
    write_job(project.queue_dir, "night.yaml", (
        "defaults: {kind: probe, steps: 2}\njobs:\n"
        "  - {name: long, steps: 40, step_s: 0.05, priority: 5}\n  - {name: next1}\n  - {name: next2}\n"
    ))  # fmt: skip


def _assert_each_succeeded_once(project, store, names):
    jobs = [wait_state(store, job_named(store, name).id, "succeeded") for name in names]
    lines = completions(project)
    assert sorted(line.split()[1] for line in lines) == sorted(names), lines
    return jobs


def _first_step_after(store, job_id, moment):
    return min(p["step"] for p in store.query("SELECT step FROM progress WHERE job_id = ? AND time > ?",
                                                [job_id, moment]))  # fmt: skip


def test_kill9_daemon_mid_job_then_restart(project, store, daemon):
    _drop_night(project)
    long = _running_at_step(store, "long", 3)
    daemon.kill9()
    # the worker got SIGTERM (parent death signal), saved its step and recorded an interrupted attempt
    wait_for(lambda: not pid_alive(long.pid), 20, what="the orphaned worker to stop")
    assert store.job(long.id).state == "running"  # nobody was left to record more
    assert store.daemon_info()["alive"] is False  # its pid is gone: status says so at once
    # … into its run folder: the worker never writes the store, the restarted daemon reads it there
    assert store.attempts(long.id)[0]["outcome"] is None
    assert runs.read_outcome(Path(long.run_dir), 1)["outcome"] == "interrupted"
    # what the worker wrote (the restarted daemon removes the file once it has read it all)
    written = [json.loads(line) for line in runs.events_path(Path(long.run_dir), 1).read_text().splitlines()]
    daemon.start()
    jobs = _assert_each_succeeded_once(project, store, ["long", "next1", "next2"])
    long = jobs[0]
    assert long.attempts == 2 and store.attempts(long.id)[0]["outcome"] == "interrupted"
    # the restarted daemon read attempt 1's events on from where it was: each metric once, none lost
    assert not runs.events_path(Path(long.run_dir), 1).exists()
    steps = [e["step"] for e in written if e["type"] == "metrics"]
    stored = [(m["attempt"], m["step"]) for m in store.metrics(long.id, "probe/value")]
    assert [step for attempt, step in stored if attempt == 1] == steps and len(set(stored)) == len(stored)
    states = [t["to_state"] for t in store.transitions(long.id)]
    assert states == ["queued", "running", "interrupted", "running", "succeeded"]
    second = store.attempts(long.id)[1]
    assert _first_step_after(store, long.id, second["started_at"]) > 3  # resumed, not redone from 0


def test_kill9_daemon_and_worker_then_restart(project, store, daemon):
    _drop_night(project)
    long = _running_at_step(store, "long", 2)
    os.killpg(long.pid, signal.SIGSTOP)  # frozen, it cannot act on the parent-death SIGTERM: both die unwarned
    daemon.kill9()
    os.killpg(long.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(long.pid), 10, what="the worker to die")
    daemon.start()
    (long, *_) = _assert_each_succeeded_once(project, store, ["long", "next1", "next2"])
    first, second = store.attempts(long.id)
    assert first["outcome"] == "interrupted" and "the daemon stopped while it ran" in first["reason"]
    assert second["outcome"] == "succeeded"


def test_job_that_finished_while_the_daemon_was_down_is_not_run_again(project, store, daemon):
    write_job(project.queue_dir, "deaf.yaml", probe("deaf", steps=20, step_s=0.05, ignore_sigterm="true"))
    deaf = _running_at_step(store, "deaf", 2)
    daemon.kill9()  # the worker ignores the parent-death SIGTERM and finishes on its own
    wait_for(lambda: completions(project), 20, what="the orphan to finish")
    wait_for(lambda: not pid_alive(deaf.pid), 10, what="the orphan to exit")
    daemon.start()
    deaf = wait_state(store, deaf.id, "succeeded")
    assert deaf.attempts == 1 and deaf.reason == "finished while the daemon was down"
    assert len(completions(project)) == 1


def test_clean_stop_interrupts_and_restart_resumes(project, store, daemon):
    write_job(project.queue_dir, "long.yaml", probe("long", steps=40, step_s=0.05))
    long = _running_at_step(store, "long", 3)
    assert daemon.stop() == 0
    long = store.job(long.id)
    assert long.state == "interrupted" and long.reason == "stopped at a safe point; runs again"
    assert store.daemon_info()["alive"] is False
    daemon.start()
    _assert_each_succeeded_once(project, store, ["long"])
    assert store.job(long.id).attempts == 2


def test_files_dropped_while_down_and_half_ingested_files_are_picked_up(project, store, daemon):
    daemon.stop()
    write_job(project.queue_dir, "while-down.yaml", probe("while-down"))
    # a daemon died between claiming a file and queueing it: the claimed file is ingested at the next start
    accepted = project.queue_dir / "accepted"
    accepted.mkdir(exist_ok=True)
    (accepted / f"{INGESTING_PREFIX}aaaa-claimed.yaml").write_text(probe("claimed"))
    # … or after queueing it but before filing it away: the jobs exist, the file is only renamed
    (accepted / f"{INGESTING_PREFIX}bbbb-queued.yaml").write_text(probe("queued"))
    (queued_id,) = store.add_jobs([NewJob("queued", "probe", {}, {"name": "queued", "kind": "probe"},
                                          source="queued.yaml#bbbb")])  # fmt: skip
    daemon.start()
    _assert_each_succeeded_once(project, store, ["while-down", "claimed", "queued"])
    assert len(store.jobs()) == 3
    names = sorted(p.name for p in accepted.iterdir())
    assert f"{queued_id}-queued.yaml" in names and not any(n.startswith(INGESTING_PREFIX) for n in names)


def test_recover_claimed_is_idempotent(project, store):
    path = project.queue_dir / "one.yaml"
    path.write_text(probe("one"))
    result = ingest_queue_file(path, project.queue_dir, store)
    assert result.accepted and recover_claimed(project.queue_dir, store) == []
    assert len(store.jobs()) == 1


def test_second_daemon_refuses_with_a_clear_message(project, store, daemon):
    second = subprocess.run([sys.executable, "-m", "torchbearer", "daemon"], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert second.returncode == 1
    message = "".join(second.stderr.split())  # rich wraps long paths anywhere
    expected = f"another torchbearer daemon (pid {daemon.process.pid}) is already serving the state database"
    assert "".join(f"{expected} {project.state_path}".split()) in message
    assert daemon.process.poll() is None and store.daemon_info()["pid"] == daemon.process.pid


def test_second_daemon_refused_even_without_the_first_ones_record(project, store, daemon):
    """The lock, not the store's heartbeat record, keeps a second daemon off the queue."""
    store.set_meta("daemon", None)
    other = DaemonProcess(project)
    other.log_path = project.project_dir / "second.log"
    other.start(wait=False)
    assert other.process.wait(60) == 1
    assert "already serving" in other.log()
    assert daemon.process.poll() is None


def test_crash_loop_guard_pauses_the_queue(project, store, daemon):
    write_job(project.queue_dir, "crashy.yaml", (
        "defaults: {kind: probe, action: exit3, priority: 1}\njobs:\n"
        "  - {name: c1}\n  - {name: c2}\n  - {name: c3}\n  - {name: c4}\n"
        "  - {name: fine, action: succeed, priority: 0}\n"
    ))  # fmt: skip
    paused = wait_for(store.queue_paused, 30, what="the queue to pause")
    assert paused["reason"].startswith("crash loop: 3 jobs in a row died within 10 s of starting")
    states = {j.name: j.state for j in store.jobs()}
    assert states == {"c1": "failed", "c2": "failed", "c3": "failed", "c4": "queued", "fine": "queued"}
    wait_for(lambda: "queue paused: crash loop" in logged(daemon), 10, what="the pause logged")
    commands.cancel(store, "c4")
    commands.resume(store)
    wait_state(store, job_named(store, "fine").id, "succeeded")


def test_one_job_retrying_is_not_a_crash_loop(project, store, daemon):
    """The guard counts jobs, not attempts: one broken job with retries must not pause the whole night."""
    write_job(project.queue_dir, "flaky.yaml", probe("flaky", action="exit3", retries=3, retry_backoff=0, priority=1))
    write_job(project.queue_dir, "fine.yaml", probe("fine"))
    flaky = wait_state(store, job_named(store, "flaky").id, "failed")
    assert flaky.attempts == 4
    wait_state(store, job_named(store, "fine").id, "succeeded")
    assert store.queue_paused() is None


def test_clean_stop_with_a_job_ignoring_sigterm_interrupts_it(project, store, tolerant_daemon):
    """Stopping the daemon kills a worker that ignores SIGTERM after the grace: the job was not at fault, so it
    is interrupted and runs again, not failed."""
    write_job(project.queue_dir, "deaf.yaml", probe("deaf", steps=40, step_s=0.05, ignore_sigterm="true"))
    deaf = _running_at_step(store, "deaf", 2)
    assert tolerant_daemon.stop() == 0
    deaf = store.job(deaf.id)
    assert deaf.state == "interrupted", deaf.reason
    assert completions(project) == []
