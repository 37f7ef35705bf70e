"""One daemon per state database: a second daemon on the same database never runs a job a second time,
whichever queue folder it watches, and deleting ``queue/`` (and its lock file) does not free the database."""

from __future__ import annotations

import shutil

from tests.conftest import DaemonProcess, wait_for, wait_state, write_job
from tests.daemon.conftest import completions, job_named, probe
from torchbearer.daemon.engine import state_lock_path


def _long_job_running(project, store):
    write_job(project.queue_dir, "long.yaml", probe("long", steps=30, step_s=0.1))
    job = wait_state(store, job_named(store, "long").id, "running")
    wait_for(lambda: (store.latest_progress(job.id) or {}).get("step"), 20, what="a first step")
    return job


def _second_daemon_refused(project, extra_env: dict[str, str]) -> str:
    second = DaemonProcess(project, {**extra_env, "COLUMNS": "400"})
    second.log_path = project.project_dir / "second-daemon.log"
    second.start(wait=False)
    assert second.process.wait(60) == 1
    return " ".join(second.log().split())


def _ran_once(project, store, job):
    done = wait_state(store, job.id, "succeeded", timeout=60)
    assert done.attempts == 1
    assert [t["to_state"] for t in store.transitions(job.id)] == ["queued", "running", "succeeded"]
    assert [line.split()[1] for line in completions(project)] == ["long"]


def test_a_daemon_on_another_queue_folder_but_the_same_database_is_refused(project, store, daemon, tmp_path):
    job = _long_job_running(project, store)
    log = _second_daemon_refused(project, {"TORCHBEARER_QUEUE": str(tmp_path / "other-queue")})
    assert f"already serving the state database {project.state_path}" in log
    assert "recovered" not in log and "started long" not in log
    assert state_lock_path(project.state_path).exists()
    _ran_once(project, store, job)


def test_a_daemon_started_after_the_queue_folder_was_recreated_is_refused(project, store, daemon):
    job = _long_job_running(project, store)
    shutil.rmtree(project.queue_dir)  # takes queue/.torchbearer.lock with it
    project.queue_dir.mkdir()
    log = _second_daemon_refused(project, {})
    assert "already serving the state database" in log
    _ran_once(project, store, job)
