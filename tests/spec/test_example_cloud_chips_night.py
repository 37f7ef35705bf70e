"""The example night that prepares chips, trains a U-Net and a random forest on them and combines both is a
valid job file (it needs the ``prepare`` kind: skipped, saying so, where that kind is not registered)."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchbearer.jobs import kind_names
from torchbearer.spec import load_job_file

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "examples" / "cloud-chips-night.yaml"


def test_cloud_chips_night_is_a_valid_job_file() -> None:
    if "prepare" not in kind_names():
        pytest.skip("the prepare kind is not registered in this build: the example's first job needs it")
    jobs = {job.spec.name: job.spec for job in load_job_file(EXAMPLE)}
    assert [(name, spec.kind) for name, spec in jobs.items()] == [
        ("cloud-chips", "prepare"), ("chips-unet", "train"), ("chips-forest", "train"),
        ("unet-and-forest", "predict"), ("chips-plots", "plot"),
    ]  # fmt: skip
    assert jobs["chips-unet"].dataset == jobs["chips-forest"].dataset == "prepared/chips"
    assert jobs["chips-forest"].model.arch == "random-forest"
    assert set(jobs["unet-and-forest"].after) == {"chips-unet", "chips-forest"}
    assert set(jobs["chips-plots"].after) == {"chips-unet"}
