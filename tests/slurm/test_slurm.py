"""The daemon with the Slurm executor on a real one-node cluster: success, failure, cancel, kill -9 recovery."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import DaemonProcess, wait_for, wait_state, write_job
from tests.daemon.conftest import completions, job_named, probe, stop_daemon
from torchbearer import commands
from torchbearer.daemon.executors.slurm import SlurmError, SlurmExecutor, parse_scontrol, query_active

pytestmark = pytest.mark.slurm


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True)
    return parse_scontrol(out.stdout)


def running_with_progress(store, name):
    job = job_named(store, name)
    wait_state(store, job.id, "running")
    wait_for(lambda: (store.latest_progress(job.id) or {}).get("step"), 30, what=f"{name} to make progress")
    return store.job(job.id)


def test_probe_job_succeeds_as_a_slurm_job(slurm_project, store, slurm_daemon):
    write_job(slurm_project.queue_dir, "ok.yaml", probe("ok", steps=3))
    job = wait_state(store, job_named(store, "ok").id, "succeeded")
    assert job.executor == "slurm" and job.external_id.isdigit() and job.exit_code == 0
    slurm = scontrol_job(job.external_id)
    assert slurm["JobName"] == f"tb-{job.id}-ok" and slurm["JobState"] == "COMPLETED"
    run_dir = slurm_project.runs_dir / f"{job.id}-ok"
    assert (run_dir / "result.txt").read_text() == f"{job.id} ok attempt 1\n"
    assert f"[torchbearer] Slurm job {job.external_id} on " in (run_dir / "log.txt").read_text()
    assert len(completions(slurm_project)) == 1


@pytest.mark.parametrize(
    ("action", "reason"),
    [("raise", "RuntimeError: probe bad failed on purpose"), ("exit3", "the worker exited with code 3")],
)
def test_failing_job_is_failed_with_its_reason(slurm_project, store, slurm_daemon, action, reason):
    write_job(slurm_project.queue_dir, "bad.yaml", probe("bad", steps=2, action=action, at_step=1))
    job = wait_state(store, job_named(store, "bad").id, "failed")
    assert job.reason == reason and store.attempts(job.id)[0]["outcome"] == "failed"
    if action == "raise":
        assert "RuntimeError: probe bad failed on purpose" in job.error_tail
    assert scontrol_job(job.external_id)["JobState"] == "FAILED"


def test_cancel_running_job_stops_it_at_a_safe_point(slurm_project, store, slurm_daemon):
    write_job(slurm_project.queue_dir, "long.yaml", probe("long", steps=600, step_s=0.05))
    job = running_with_progress(store, "long")
    commands.cancel(store, job.id)
    job = wait_state(store, job.id, "cancelled")
    assert job.reason == "cancelled on request" and job.exit_code == 75  # SIGTERM reached the worker: it saved
    assert store.attempts(job.id)[0]["outcome"] == "cancelled"
    assert scontrol_job(job.external_id)["ExitCode"] == "75:0"  # the batch step is the worker itself
    assert completions(slurm_project) == []


def test_cancel_job_waiting_in_the_slurm_queue(project, slurm_conf, store, monkeypatch):
    """A job Slurm holds never runs: its timeout does not tick while it waits, cancel withdraws it, and a daemon
    that stops withdraws its waiting jobs as interrupted (they run again), not failed."""
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    daemon = DaemonProcess(project, {"TORCHBEARER_EXECUTOR": "slurm", "TORCHBEARER_SLURM_ARGS": "--hold"}).start()
    try:
        write_job(project.queue_dir, "held.yaml", probe("held", timeout=1))
        job = wait_state(store, job_named(store, "held").id, "running")
        wait_for(lambda: store.job(job.id).external_id, 10, what="the Slurm job id")
        job = store.job(job.id)
        wait_for(lambda: query_active([job.external_id]).get(job.external_id) == "PENDING", 10, what="pending")
        subprocess.run(["sleep", "3"], check=True)  # past its 1 s timeout, still waiting in Slurm's queue
        assert store.job(job.id).state == "running"
        commands.cancel(store, job.id)
        job = wait_state(store, job.id, "cancelled")
        assert scontrol_job(job.external_id)["JobState"] == "CANCELLED"
        assert not (project.runs_dir / f"{job.id}-held" / "result.txt").exists()
        write_job(project.queue_dir, "later.yaml", probe("later"))
        later = wait_state(store, job_named(store, "later").id, "running")
        wait_for(lambda: store.job(later.id).external_id, 10, what="the Slurm job id")
    finally:
        stop_daemon(daemon)
    later = store.job(later.id)
    assert later.state == "interrupted" and scontrol_job(later.external_id)["JobState"] == "CANCELLED"


@pytest.mark.parametrize("ends_while_down", [False, True], ids=["runs-on", "ends-while-down"])
def test_daemon_killed_while_a_slurm_job_runs_reattaches_to_it(slurm_project, store, slurm_daemon, ends_while_down):
    write_job(slurm_project.queue_dir, "steady.yaml", probe("steady", steps=30, step_s=0.1))
    job = running_with_progress(store, "steady")
    slurm_daemon.kill9()
    assert query_active([job.external_id])[job.external_id] == "RUNNING"  # a cluster job outlives the daemon
    if ends_while_down:
        wait_for(lambda: query_active([job.external_id])[job.external_id] == "COMPLETED", 30, what="its end")
    restarted = DaemonProcess(slurm_project).start()
    try:
        done = wait_state(store, job.id, "succeeded", timeout=60)
    finally:
        stop_daemon(restarted)
    assert done.attempts == 1 and done.external_id == job.external_id
    assert f"re-attached steady (#{job.id}) to its slurm job {job.external_id}" in restarted.log()
    assert len(completions(slurm_project)) == 1  # ran once, not twice


def test_sbatch_refusal_is_a_clear_error(slurm_conf, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    executor = SlurmExecutor(gres="nosuchgres")
    with pytest.raises(SlurmError, match=r"^sbatch failed: sbatch: error: Invalid generic resource \(gres\)"):
        executor.start(["true"], env={"SLURM_CONF": slurm_conf, "PATH": "/usr/bin:/bin"},
                       log_path=tmp_path / "run" / "log.txt", cwd=tmp_path, devices=1)  # fmt: skip


@pytest.mark.slow
def test_time_limit_warns_the_worker_which_saves_and_runs_again(project, slurm_conf, store, monkeypatch):
    """``--signal=B:TERM@60`` with a 1 min ``--time``: SIGTERM comes at once, the attempt is interrupted."""
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    daemon = DaemonProcess(project, {"TORCHBEARER_EXECUTOR": "slurm", "TORCHBEARER_SLURM_ARGS": "--time=1"}).start()
    try:
        write_job(project.queue_dir, "chained.yaml", probe("chained", steps=3000, step_s=0.05))
        job = job_named(store, "chained")
        wait_for(lambda: store.job(job.id).attempts >= 2, 150, interval=0.5, what="a second attempt")
        first = store.attempts(job.id)[0]
        assert first["outcome"] == "interrupted" and first["exit_code"] == 75
        commands.cancel(store, job.id)
        wait_state(store, job.id, "cancelled")
    finally:
        stop_daemon(daemon)
    assert completions(project) == []
