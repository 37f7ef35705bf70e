"""The ``download`` kind run by the real daemon and worker against the fake CDSE, and the secrets log scan."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import wait_for, wait_state, write_job
from tests.imagery.conftest import ROOT, SAMPLE_AOI
from tests.imagery.fake_services import PASSWORD, USER
from tests.imagery.test_copernicus import needed_sizes

JOB = f"""\
name: scenes
kind: download
imagery: {{aoi: {SAMPLE_AOI}, dates: 2022-10-01/2022-10-10, max_cloud: 80, resolution: 60}}
"""


def write_env_file(project, values: dict[str, str]) -> None:
    (project.project_dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def test_download_job_fills_the_cache_and_never_writes_secrets(project, store, daemon, services, capfd):
    write_env_file(project, services.env)
    write_job(project.queue_dir, "scenes.yaml", JOB)
    job = wait_state(store, 1, "succeeded", timeout=60)
    [output] = store.outputs(job.id, "scene")
    assert Path(output["path"]).parent == project.data_dir / "cache"
    stages = {row["stage"] for row in store.query("SELECT stage FROM progress WHERE job_id = ?", [job.id])}
    assert {"downloading", "preparing data"} <= stages
    assert services.logins == 1

    secrets = [PASSWORD, USER, *services.issued_tokens()]
    assert len(secrets) >= 4
    written = [p for p in project.project_dir.rglob("*") if p.is_file() and p.name != ".env"]
    assert any(p.suffix == ".db" for p in written) and any(p.name == "log.txt" for p in written)
    captured = capfd.readouterr()
    for secret in secrets:
        for path in written:
            assert secret.encode() not in path.read_bytes(), f"a secret ({secret[:3]}…) is in {path}"
        assert secret not in captured.out + captured.err, f"a secret ({secret[:3]}…) is in the test's output"


def test_download_job_without_credentials_fails_naming_the_variables(project, store, daemon, services):
    write_env_file(project, {k: v for k, v in services.env.items() if not k.startswith("COPERNICUS_")})
    write_job(project.queue_dir, "scenes.yaml", JOB)
    job = wait_state(store, 1, "failed", timeout=60)
    assert "COPERNICUS_USER and COPERNICUS_PASSWORD" in (job.reason or "")
    assert services.requests == []


def test_download_job_stopped_midway_resumes_its_partial_files(project, store, daemon, services, sample_safe):
    """Daemon stop during the download: the job is interrupted, then resumes from its .part files."""
    write_env_file(project, services.env)
    services.faults.bandwidth = 250_000  # bytes/s per connection: the stop lands mid-download
    write_job(project.queue_dir, "scenes.yaml", JOB)
    needed = sum(needed_sizes(sample_safe).values())
    wait_for(lambda: sum(services.bytes_served.values()) > needed / 4, 30, what="a quarter of the bytes")
    assert daemon.stop() == 0
    job = store.job(1)
    assert job.state == "interrupted", job.reason
    assert list(project.data_dir.rglob("*.jp2.part"))
    services.faults.bandwidth = None
    daemon.start()
    wait_state(store, 1, "succeeded", timeout=60)
    refetched = sum(services.bytes_served.values()) - services.bytes_served["manifest.safe"] - needed
    assert 0 <= refetched < 0.1 * needed
    assert [a["outcome"] for a in store.attempts(1)] == ["interrupted", "succeeded"]


@pytest.mark.slow  # about 20 s: a worker imports torch and trains one epoch
def test_train_job_fetches_its_scene_then_trains_on_it(project, store, daemon, services, sample_safe):
    """search → pick → fetch only the needed files → cache → the train job reads the stack."""
    write_env_file(project, services.env)
    masks = project.project_dir / "masks"
    masks.mkdir()
    shutil.copy(ROOT / "masks" / "t29unu_cloud.tif", masks)
    write_job(
        project.queue_dir,
        "train.yaml",
        f"""\
name: fcn-fetched
kind: train
imagery: {{aoi: {SAMPLE_AOI}, dates: 2022-10-01/2022-10-10, max_cloud: 80, resolution: 60}}
masks: masks/t29unu_cloud.tif
classes: [clear, cloud]
model: {{arch: fcn}}
device: cpu
train: {{epochs: 1, batch_size: 4, patch_size: 64, samples_per_epoch: 8, plots: 0, early_stopping: null}}
""",
    )
    job = wait_state(store, 1, "succeeded", timeout=240)
    assert store.outputs(job.id, "best_checkpoint")
    served = {k: v for k, v in services.bytes_served.items() if k != "manifest.safe"}
    assert served == needed_sizes(sample_safe)
    stages = [row["stage"] for row in store.query("SELECT stage FROM progress WHERE job_id = ? ORDER BY id", [job.id])]
    assert stages.index("downloading") < stages.index("training")
