"""sbatch failing: a controller out of reach is "try again later" (the job waits in the queue, saying why, with a
growing backoff); a refusal of the job itself (no such partition) fails it with sbatch's own message."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, wait_for, wait_state, write_job
from tests.daemon.conftest import job_named, probe, stop_daemon
from tests.slurm.conftest import HERE, INSTALL_HINT, controller_alive
from torchbearer.daemon.executors.slurm import SlurmError, SlurmExecutor, SlurmUnavailable, unreachable

pytestmark = pytest.mark.slurm

UNREACHABLE = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"


@pytest.mark.parametrize(
    ("message", "later"),
    [
        (f"sbatch failed: {UNREACHABLE}", True),
        ("sbatch failed: sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", True),
        ("sbatch did not answer within 30 s", True),
        ("sbatch failed: sbatch: error: invalid partition specified: gpu", False),
        ("sbatch failed: sbatch: error: Invalid generic resource (gres) specification", False),
    ],
)
def test_unreachable_controller_is_told_from_a_refusal(message, later):
    assert unreachable(SlurmError(message)) is later


def test_backoff_grows_while_the_controller_stays_out_of_reach(tmp_path):
    """The executor against a controller nobody listens to: each failed submission holds the next one back
    twice as long, and the job's reason names sbatch's message."""
    if shutil.which("sbatch") is None:
        pytest.skip(f"slurm packages absent: {INSTALL_HINT}")
    conf = tmp_path / "slurm.conf"  # a cluster whose controller is not running (MessageTimeout: give up at once)
    conf.write_text("ClusterName=none\nSlurmctldHost=localhost\nSlurmctldPort=9\nMessageTimeout=1\n"
                    "AuthType=auth/none\nNodeName=localhost CPUs=1\nPartitionName=debug Nodes=localhost\n")  # fmt: skip
    executor = SlurmExecutor()
    env = {"SLURM_CONF": str(conf), "PATH": os.environ["PATH"]}
    delays = []
    for _ in range(2):
        with pytest.raises(SlurmUnavailable) as raised:
            executor.start(["true"], env=env, log_path=tmp_path / "run" / "log.txt", cwd=tmp_path)
        assert executor.unavailable() == str(raised.value)
        delays.append(str(raised.value).rsplit("trying again in ", 1)[1])
    assert "sbatch failed: sbatch: error:" in str(raised.value)
    assert delays == ["2 s", "4 s"]


def test_no_such_partition_fails_the_job_with_sbatchs_message(slurm_project, store, monkeypatch):
    monkeypatch.setenv("TORCHBEARER_SLURM_PARTITION", "nosuchpartition")
    daemon = DaemonProcess(slurm_project).start()
    try:
        write_job(slurm_project.queue_dir, "lost.yaml", probe("lost"))
        job = wait_state(store, job_named(store, "lost").id, {"failed", "succeeded"})
    finally:
        stop_daemon(daemon)
    assert job.state == "failed" and job.reason.startswith("could not start the worker: sbatch failed: ")
    assert "invalid partition specified: nosuchpartition" in job.reason
    assert store.attempts(job.id)[0]["outcome"] == "failed"


def stop_controller(folder: Path) -> None:
    """SIGTERM the test cluster's slurmctld (by its pid file) and wait until it is gone."""
    pid = int((folder / "state" / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not controller_alive(folder), 30, what="slurmctld to stop")


@pytest.mark.slow
def test_job_waits_in_the_queue_while_the_controller_is_down(slurm_project, slurm_conf, store, slurm_daemon):
    folder = Path(slurm_conf).parent
    if not controller_alive(folder):
        pytest.skip("the cluster was not started by start-local-slurm.sh here: its controller is not ours to stop")
    stop_controller(folder)
    try:
        write_job(slurm_project.queue_dir, "patient.yaml", probe("patient"))
        job = job_named(store, "patient")
        # two tries while it is down: the second waits twice as long as the first
        wait_for(lambda: "trying again in 4 s" in (store.job(job.id).reason or ""), 90, what="a second try")
        job = store.job(job.id)
        assert job.state == "queued" and job.attempts == 0 and store.attempts(job.id) == []
        assert job.reason.startswith(f"Slurm cannot take jobs now (sbatch failed: {UNREACHABLE})")
    finally:
        env = {**os.environ, "SLURM_LOCAL_DIR": str(folder), "SLURM_CONF": slurm_conf}
        subprocess.run([HERE / "start-local-slurm.sh"], env=env, check=True, timeout=60)
    job = wait_state(store, job.id, "succeeded", timeout=120)
    assert job.attempts == 1 and len(store.attempts(job.id)) == 1
    reasons = [t["reason"] or "" for t in store.transitions(job.id)]
    assert sum("Unable to contact slurm controller" in r for r in reasons) >= 2
