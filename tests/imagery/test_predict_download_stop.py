"""A predict job stopped while it downloads its imagery is interrupted (no retry spent), not failed.

Real daemon and worker, the real sample product served slowly by the local fake CDSE (tests/imagery/conftest.py).
"""

from __future__ import annotations

import pytest

from tests.conftest import wait_for, wait_state, write_job
from tests.imagery.conftest import SAMPLE_AOI
from tests.imagery.test_copernicus import needed_sizes
from tests.imagery.test_download_job import write_env_file
from torchbearer import commands
from torchbearer.imagery.spec import BANDS_BY_RESOLUTION

JOB = f"""\
name: mapped
kind: predict
models: [{{checkpoint: models/fcn.ckpt}}]
imagery: {{aoi: {SAMPLE_AOI}, dates: 2022-10-01/2022-10-10, max_cloud: 80}}
output: outputs/mapped.tif
device: cpu
optimize: false
runtime: torch
retries: 2
"""


def save_fcn(path) -> None:
    """An untrained 60 m FCN checkpoint (the members' resolution decides which stacks are fetched)."""
    import torch

    from torchbearer.ml.checkpoint import ModelCard, save_checkpoint
    from torchbearer.ml.models import build_model

    bands = list(BANDS_BY_RESOLUTION[60])
    card = ModelCard(arch="fcn", backbone=None, in_channels=len(bands), num_classes=2, classes=["clear", "cloud"],
                     task="binary", bands=bands, resolution=60.0,
                     norm={"mean": [0.1] * len(bands), "std": [0.05] * len(bands)})  # fmt: skip
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(build_model(card.arch, card.backbone, card.in_channels, card.out_channels), card, path)


def start_slow_download(project, services, sample_safe) -> None:
    """Queue the predict job and wait until a quarter of its imagery has been served."""
    write_env_file(project, services.env)
    save_fcn(project.project_dir / "models" / "fcn.ckpt")
    services.faults.bandwidth = 250_000  # bytes/s per connection: the stop lands mid-download
    write_job(project.queue_dir, "mapped.yaml", JOB)
    needed = sum(needed_sizes(sample_safe).values())
    wait_for(lambda: sum(services.bytes_served.values()) > needed / 4, 60, what="a quarter of the bytes")


@pytest.mark.slow  # 40 s quiet, 3 min loaded: two workers import torch, the second predicts the scene
def test_predict_stopped_while_downloading_is_interrupted_then_resumes(project, store, daemon, services, sample_safe):
    start_slow_download(project, services, sample_safe)
    assert daemon.stop() == 0
    job = store.job(1)
    assert job.state == "interrupted", job.reason
    assert [a["outcome"] for a in store.attempts(1)] == ["interrupted"]
    assert list(project.data_dir.rglob("*.jp2.part"))  # kept for the next attempt
    services.faults.bandwidth = None
    daemon.start()
    job = wait_state(store, 1, "succeeded", timeout=240)
    assert [a["outcome"] for a in store.attempts(1)] == ["interrupted", "succeeded"]
    assert store.outputs(job.id, "map")


def test_predict_cancelled_while_downloading_is_cancelled_not_failed(project, store, daemon, services, sample_safe):
    """About 20 s (the worker imports torch and loads the member before it downloads)."""
    start_slow_download(project, services, sample_safe)
    commands.cancel(store, 1)
    wait_state(store, 1, "cancelled", timeout=60)
    assert [a["outcome"] for a in store.attempts(1)] == ["cancelled"]
    log = (project.runs_dir / "1-mapped" / "log.txt").read_text()
    # the worker took the stop as a safe point (not a failure: no traceback, no retry)
    assert "interrupted: stopped while getting the scenes" in log and "Traceback" not in log, log[-2000:]
