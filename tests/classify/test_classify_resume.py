"""A classify job stopped by SIGTERM (daemon stop) in its second phase resumes from last.ckpt like a train job:
no epoch validated twice, no step lost, the phase schedule carried on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.classify.conftest import classify_yaml
from tests.conftest import wait_for, wait_state, write_job
from tests.daemon.conftest import job_named


@pytest.mark.slow  # two worker starts and three epochs of training
def test_classify_resumes_after_sigterm(patch_project, store, daemon) -> None:
    train = "epochs: 3, head_epochs: 1, head_lr: 0.003, lr: 0.001, early_stopping: null"
    write_job(patch_project.queue_dir, "long.yaml", classify_yaml("long", train=train))
    job = wait_state(store, job_named(store, "long").id, "running", timeout=60)
    wait_for(lambda: (p := store.latest_progress(job.id)) and (p["epoch"] or 0) >= 1 and (p["step"] or 0) >= 5,
             240, 0.02, what="long to reach epoch 1, step 5")  # fmt: skip
    assert daemon.stop() == 0
    assert store.job(job.id).state == "interrupted"
    daemon.start()
    job = wait_state(store, job.id, {"succeeded", "failed"}, timeout=300)
    run_dir = Path(job.run_dir)
    assert job.state == "succeeded", (job.reason, (run_dir / "log.txt").read_text()[-3000:])
    first, _second = store.attempts(job.id)
    assert first["outcome"] == "interrupted"
    assert sorted(m["epoch"] for m in store.metrics(job.id, "val/f1_macro")) == [0, 1, 2]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3 * 5  # 154 training patches: 5 batches of 32 an epoch
    assert last["epoch"] == 2  # last.ckpt is the last epoch's, whether or not it improved the best score
    assert "resuming from" in (run_dir / "log.txt").read_text()
    assert (run_dir / "report.json").is_file()
