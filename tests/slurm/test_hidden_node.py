"""Jobs on a Slurm node that cannot see the state database, as on a cluster whose nodes share only the project.

The node of the tests' one-node cluster hides a folder from its jobs (an empty tmpfs over it in slurmd's mount
namespace, see ``start-local-slurm.sh``); the ``node_*`` fixtures keep the state database there. Only the
daemon, on the host, reads and writes it: a worker reports through its run folder, and what it reports must
still reach the store and ``status --json``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import tb
from tests.conftest import DaemonProcess, wait_state, write_job
from tests.daemon.conftest import completions, job_named, probe, stop_daemon
from tests.ml.make_chips import make_chip_folder
from tests.ml.test_chip_training import TRAIN as CHIP_TRAIN
from tests.slurm.conftest import db_shown
from tests.slurm.test_slurm import running_with_progress, scontrol_job
from torchbearer import commands
from torchbearer.daemon.executors.slurm import query_active

pytestmark = pytest.mark.slurm

#: A worker on this node can only work if it never opens the store (the worker contract, ``torchbearer/runs.py``);
#: before that contract is in, these tests run only with ``TB_TEST_SLURM_SHOW_DB=1`` (the Slurm side alone).
needs_contract = pytest.mark.skipif(
    importlib.util.find_spec("torchbearer.runs") is None and not db_shown(),
    reason="workers still open the state database (no torchbearer/runs.py): set TB_TEST_SLURM_SHOW_DB=1",
)


def status_job(job_id: int) -> dict:
    """The job as ``torchbearer status --json --all`` shows it (read by the CLI from the store)."""
    document = json.loads(tb("status", "--json", "--all").stdout)
    return next(job for job in document["jobs"] if job["id"] == job_id)


def test_the_node_cannot_see_the_state_database(node_project, node_store, hidden_dir, tmp_path):
    """A Slurm job lists the folder holding the database: on the node it is empty; on the host it holds it."""
    if db_shown():
        pytest.skip("TB_TEST_SLURM_SHOW_DB=1 keeps the database where the node sees it")
    db = node_project.state_path
    assert db.is_file() and db.is_relative_to(hidden_dir)  # the daemon's side: the database is there
    out = tmp_path / "seen.txt"
    script = f"ls -A {hidden_dir} | wc -l; test -e {db} && echo visible || echo hidden\n"
    subprocess.run(["sbatch", "--wait", "--quiet", f"--output={out}", "--wrap", script], check=True, timeout=60)
    seen = out.read_text().split()
    assert seen == ["0", "hidden"], f"the node sees {seen}: is slurmd in a mount namespace of its own?"
    assert any(hidden_dir.iterdir())


@needs_contract
def test_failing_job_on_the_node_is_failed_with_its_reason(node_project, node_store, node_daemon):
    write_job(node_project.queue_dir, "bad.yaml", probe("bad", steps=2, action="raise", at_step=1))
    job = wait_state(node_store, job_named(node_store, "bad").id, "failed")
    assert job.reason == "RuntimeError: probe bad failed on purpose"
    assert node_store.attempts(job.id)[0]["outcome"] == "failed"
    assert "RuntimeError: probe bad failed on purpose" in job.error_tail
    shown = status_job(job.id)
    assert (shown["state"], shown["reason"]) == ("failed", "RuntimeError: probe bad failed on purpose")


@needs_contract
def test_cancel_on_the_node_stops_the_job_at_a_safe_point(node_project, node_store, node_daemon):
    write_job(node_project.queue_dir, "long.yaml", probe("long", steps=600, step_s=0.05))
    job = running_with_progress(node_store, "long")
    commands.cancel(node_store, job.id)
    job = wait_state(node_store, job.id, "cancelled")
    assert job.reason == "cancelled on request" and job.exit_code == 75  # the worker saved and stopped
    assert node_store.attempts(job.id)[0]["outcome"] == "cancelled"
    assert completions(node_project) == []


@needs_contract
def test_daemon_killed_reattaches_to_its_job_on_the_node(node_project, node_store, node_daemon):
    """The worker goes on while no daemon runs; the next daemon watches it again and ingests what it reported."""
    write_job(node_project.queue_dir, "steady.yaml", probe("steady", steps=40, step_s=0.1))
    job = running_with_progress(node_store, "steady")
    node_daemon.kill9()
    assert query_active([job.external_id])[job.external_id] == "RUNNING"
    restarted = DaemonProcess(node_project).start()
    try:
        done = wait_state(node_store, job.id, "succeeded", timeout=60)
    finally:
        stop_daemon(restarted)
    assert done.attempts == 1 and done.external_id == job.external_id
    assert f"re-attached steady (#{job.id}) to its slurm job {job.external_id}" in restarted.log()
    assert len(completions(node_project)) == 1  # ran once
    steps = [row["step"] for row in node_store.metrics(job.id, "probe/value")]
    assert steps == list(range(1, 41))  # every step's value, once, those made while no daemon ran included


@needs_contract
@pytest.mark.slow
def test_time_limit_hit_on_the_node_fails_the_job_saying_so(node_project, node_store):
    """A worker that ignores the warning is ended by Slurm at its ``--time``: the reason says so."""
    daemon = DaemonProcess(node_project, {"TORCHBEARER_SLURM_ARGS": "--time=1"}).start()
    try:
        write_job(node_project.queue_dir, "deaf.yaml", probe("deaf", steps=100_000, step_s=0.05, ignore_sigterm="true"))
        job = wait_state(node_store, job_named(node_store, "deaf").id, {"failed", "succeeded"}, timeout=200)
    finally:
        stop_daemon(daemon)
    assert job.state == "failed" and job.reason.startswith("Slurm ended it at its time limit (TIMEOUT)")
    assert (node_store.latest_progress(job.id) or {}).get("step")  # it ran, and its progress reached the store
    assert status_job(job.id)["reason"] == job.reason


@pytest.fixture
def node_chips(node_project):
    """The node project with ``data/chips/``: chips cut from the real sample scene (``tests/ml/make_chips.py``)."""
    make_chip_folder(node_project.project_dir / "data" / "chips")
    return node_project


@needs_contract
@pytest.mark.slow
def test_two_srun_tasks_train_one_model_with_ddp(node_chips, node_store, node_daemon):
    """A training job on the node, with ``devices: 2``: two srun tasks, one DDP run over gloo; rank 0 alone
    reports (one set of curves, one checkpoint, one outcome), and what it reports reaches ``status --json``."""
    job_file = f"name: ddp\nkind: train\ndataset: data/chips\nclasses: [clear, cloud]\n{CHIP_TRAIN}\ndevices: 2\n"
    write_job(node_chips.queue_dir, "ddp.yaml", job_file)
    job = wait_state(node_store, job_named(node_store, "ddp").id, {"succeeded", "failed"}, timeout=300)
    run_dir = Path(job.run_dir)
    log = (run_dir / "log.txt").read_text()
    assert job.state == "succeeded", (job.reason, log[-3000:])
    slurm = scontrol_job(job.external_id)
    assert (slurm["NumTasks"], slurm["NumNodes"]) == ("2", "1")
    for rank in (0, 1):  # both processes joined one process group
        assert f"distributed data parallel: 2 processes (2 a node on 1 nodes), rank {rank}" in log
    assert sorted(m["epoch"] for m in node_store.metrics(job.id, "val/iou")) == [0, 1]  # one set of curves
    assert sorted(m["epoch"] for m in node_store.metrics(job.id, "train/loss_epoch")) == [0, 1]
    kinds = [o["kind"] for o in node_store.outputs(job.id)]
    assert kinds.count("checkpoint") == 1 and kinds.count("best_checkpoint") == 1 and kinds.count("plot") == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not list(run_dir.glob("targets*"))
    assert [a["outcome"] for a in node_store.attempts(job.id)] == ["succeeded"]
    shown = status_job(job.id)
    assert (shown["state"], shown["progress"], shown["attempts"]) == ("succeeded", 1.0, 1)
