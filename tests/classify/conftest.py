"""Fixtures for classification tests: the T29UNU SCL patch set and BigEarthNet patches in a test project."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from torchbearer.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PATCHES = REPO / "data" / "patches" / "t29unu-scl"
BIGEARTHNET = REPO / "tests" / "data" / "bigearthnet"
SAMPLE_NAME = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"


@pytest.fixture
def patch_project(project: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The temp project with ``data/patches/t29unu-scl`` (4 classes of 16 × 16 patches at 60 m, 11 bands)
    and the sample SAFE product they were cut from."""
    shutil.copytree(PATCHES, project.project_dir / "data" / "patches" / "t29unu-scl")
    shutil.copytree(REPO / "data" / SAMPLE_NAME, project.project_dir / "data" / SAMPLE_NAME)
    # One thread a worker: on a small shared test machine, two spinning threads each are many times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return project


def classify_yaml(name: str, *, train: str = "", model: str = "{backbone: resnet18}", data: str = "") -> str:
    """A classify job on the T29UNU patch set."""
    return (
        f"name: {name}\nkind: classify\n"
        f"data: {{root: data/patches/t29unu-scl, val_fraction: 0.2, test_fraction: 0.2{', ' + data if data else ''}}}\n"
        f"model: {model}\n"
        f"train: {{batch_size: 32, {train}}}\ndevice: cpu\n"
    )
