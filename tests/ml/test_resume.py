"""A train job stopped by SIGTERM (daemon stop) or killed with kill -9 resumes from last.ckpt: epochs already
done are not redone, the step count and the best score carry on; last.ckpt is written at every epoch's end,
atomically, whether or not the monitored metric improved."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import wait_for, wait_state, write_job
from tests.daemon.conftest import job_named
from tests.ml.conftest import train_yaml
from torchbearer.store import pid_alive


def _running_in(store, name: str, epoch: int, step: int):
    job = wait_state(store, job_named(store, name).id, "running", timeout=60)
    wait_for(lambda: (p := store.latest_progress(job.id)) and (p["epoch"] or 0) >= epoch and (p["step"] or 0) >= step,
             180, 0.02, what=f"{name} to reach epoch {epoch}, step {step}")  # fmt: skip
    return store.job(job.id)


def _saved_step(run_dir: Path) -> int:
    """The step last.ckpt holds (read while no worker runs: before the restart)."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


def _check_resumed(store, job_id: int, run_dir: Path, epochs: int, per_epoch: int, saved_step: int) -> None:
    """The job succeeded on its second attempt, which redid no epoch last.ckpt held (``saved_step``, read
    before the restart) and went on from its step; every epoch was validated."""
    job = wait_state(store, job_id, {"succeeded", "failed"}, timeout=300)
    assert job.state == "succeeded", (job.reason, (run_dir / "log.txt").read_text()[-3000:])
    first, second = store.attempts(job_id)
    assert first["outcome"] == "interrupted"
    validated = [(m["attempt"], m["epoch"]) for m in store.metrics(job_id, "val/iou")]
    saved_epochs = saved_step // per_epoch
    assert saved_epochs >= 1, saved_step  # the stop came after the first epoch's end: there was one to keep
    # Epochs the checkpoint held are not redone; the one it stopped in is. A kill may land after that epoch's
    # validation was logged but before its end was saved: the resumed attempt supersedes that value (the store
    # drops it), so each epoch has one value, from the attempt whose weights went on.
    assert sorted(e for a, e in validated if a == 2) == list(range(saved_epochs, epochs)), validated
    assert sorted(e for a, e in validated if a == 1) == list(range(saved_epochs)), validated
    resumed = store.query("SELECT MIN(step) AS step FROM progress WHERE job_id = ? AND time > ? AND step > 0",
                          [job_id, second["started_at"]])[0]["step"]  # fmt: skip
    assert resumed > per_epoch  # the step count went on from the checkpoint
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == epochs * per_epoch  # no step lost or done twice
    best = max(m["value"] for m in store.metrics(job_id, "val/iou"))
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert float(state["best_model_score"]) == pytest.approx(best)
    assert "resuming from" in (run_dir / "log.txt").read_text()


@pytest.mark.slow  # two worker starts and a whole training: about 40 s on a quiet 2-core machine
def test_resume_after_sigterm(sample_project, store, daemon) -> None:
    write_job(sample_project.queue_dir, "long.yaml", train_yaml("long", epochs=2, samples=64))
    job = _running_in(store, "long", 1, 9)  # early in the second epoch of 8 steps: it stops within it
    assert daemon.stop() == 0
    assert store.job(job.id).state == "interrupted"
    stopped = (Path(job.run_dir) / "log.txt").read_text()
    saved = _saved_step(Path(job.run_dir))
    daemon.start()
    _check_resumed(store, job.id, Path(job.run_dir), epochs=2, per_epoch=8, saved_step=saved)
    # The stop message claims only what the file held: the resumed attempt read that epoch and step back.
    claimed = re.search(r"last\.ckpt saved at epoch (\d+), step (\d+)", stopped)
    assert claimed, stopped[-2000:]
    assert f"(epoch {claimed[1]}, step {claimed[2]})" in (Path(job.run_dir) / "log.txt").read_text()


@pytest.mark.slow  # two more worker starts; the SIGTERM test above covers resuming in the default run
def test_resume_after_kill9(sample_project, store, daemon) -> None:
    # four epochs of four steps, like the test below: the kill lands in the third epoch or the fourth despite
    # the ingestion lag, never after the job ended
    write_job(sample_project.queue_dir, "long.yaml", train_yaml("long", epochs=4, samples=32))
    job = _running_in(store, "long", 2, 9)  # in the third epoch: last.ckpt holds the second
    daemon.kill9()
    os.killpg(job.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(job.pid), 10, what="the worker to die")
    saved = _saved_step(Path(job.run_dir))
    daemon.start()
    _check_resumed(store, job.id, Path(job.run_dir), epochs=4, per_epoch=4, saved_step=saved)


@pytest.mark.slow  # two worker starts and three epochs: about a minute on a loaded 2-core machine
def test_kill9_after_an_epoch_that_did_not_improve(sample_project, store, daemon) -> None:
    """With a learning rate too small to change a prediction, val/iou is flat: no epoch after the first improves
    it, yet a kill -9 in the third epoch resumes from the end of the second, not from the first."""
    # four epochs of four steps: progress reaches the store within a fraction of a second, so the kill lands in
    # the third epoch or the fourth, after at least one epoch that did not improve, never after the job ended
    write_job(sample_project.queue_dir, "flat.yaml",
              train_yaml("flat", epochs=4, samples=32, lr=1e-12, train="scheduler: none"))  # fmt: skip
    job = _running_in(store, "flat", 2, 0)  # in the third epoch: the second one ended with its checkpoint
    os.killpg(job.pid, signal.SIGSTOP)  # frozen: the SIGTERM the daemon's death sends is never handled
    daemon.kill9()
    os.killpg(job.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(job.pid), 10, what="the worker to die")
    ious = [m["value"] for m in sorted(store.metrics(job.id, "val/iou"), key=lambda m: m["epoch"])]
    assert len(ious) >= 2 and len(set(ious)) == 1, ious  # the second epoch did not improve the first
    saved = _saved_step(Path(job.run_dir))
    assert saved >= 2 * 4  # the end of the second epoch, which did not improve: saved all the same
    daemon.start()
    _check_resumed(store, job.id, Path(job.run_dir), epochs=4, per_epoch=4, saved_step=saved)


_SAVE_THEN_DIE = """
import os, signal, sys, torch
from torchbearer.ml.callbacks import AtomicCheckpointIO

class DieWhileWriting:
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)  # a kill -9 in the middle of torch.save

io = AtomicCheckpointIO()
io.save_checkpoint({"global_step": 1, "weights": torch.arange(1000.0)}, sys.argv[1])
io.save_checkpoint({"global_step": 2, "weights": torch.zeros(1000), "then": DieWhileWriting()}, sys.argv[1])
"""


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    done = subprocess.run([sys.executable, "-c", _SAVE_THEN_DIE, str(path)], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    held = torch.load(path, map_location="cpu", weights_only=True)
    assert held["global_step"] == 1 and torch.equal(held["weights"], torch.arange(1000.0))
