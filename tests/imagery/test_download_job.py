"""The ``download`` kind run by the real daemon and worker against the fake CDSE, and the secrets log scan."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import wait_state, write_job
from tests.imagery.conftest import SAMPLE_AOI
from tests.imagery.fake_services import PASSWORD, USER

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
