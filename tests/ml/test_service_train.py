"""``daemon --detach`` then ``stop`` mid-training: the job leaves ``last.ckpt``, is re-queued, and resumes from
it under the next detached daemon (the real train kind on the sample scene)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import tb_process
from tests.conftest import write_job
from tests.daemon.test_service import _stop_leftover
from tests.ml.conftest import train_yaml
from tests.ml.test_resume import _check_resumed, _running_in, _saved_step


@pytest.mark.slow  # trains twice (about a minute on a quiet 2-core machine)
def test_detach_stop_mid_training_leaves_a_checkpoint_and_resumes(sample_project, store) -> None:
    try:
        assert tb_process("daemon", "--detach").returncode == 0
        # three epochs: the stop lands in the second with a whole epoch to go, whatever the ingestion lag
        write_job(sample_project.queue_dir, "long.yaml", train_yaml("long", epochs=3, samples=64))
        job = _running_in(store, "long", 1, 9)  # early in the second epoch of 8 steps
        stopped = tb_process("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert store.job(job.id).state == "interrupted"
        assert (Path(job.run_dir) / "checkpoints" / "last.ckpt").is_file()
        saved = _saved_step(Path(job.run_dir))
        assert tb_process("daemon", "--detach").returncode == 0
        _check_resumed(store, job.id, Path(job.run_dir), epochs=3, per_epoch=8, saved_step=saved)
        assert tb_process("stop").returncode == 0
    finally:
        _stop_leftover(sample_project)
