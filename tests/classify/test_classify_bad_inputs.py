"""Bad patch sets and models fail a classify job before any training, with a message naming what and where; the
daemon goes on."""

from __future__ import annotations

import shutil

import rasterio

from tests.classify.conftest import PATCHES
from tests.conftest import DaemonProcess, wait_state, write_job
from tests.daemon.conftest import job_named, stop_daemon


def test_bad_patch_sets_fail_clearly_before_training(project, store, monkeypatch) -> None:
    root = project.project_dir / "data"
    for name in ("empty", "cut", "bands", "good"):
        shutil.copytree(PATCHES, root / name)
    (root / "empty" / "water").mkdir(exist_ok=True)
    for tif in (root / "empty" / "water").glob("*.tif"):
        tif.unlink()
    victim = sorted((root / "cut" / "shadow").glob("*.tif"))[3]
    victim.write_bytes(victim.read_bytes()[:300])  # a truncated download
    odd = sorted((root / "bands" / "cloud").glob("*.tif"))[7]
    with rasterio.open(odd) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(odd, "w", **{**profile, "count": 4}) as dst:
        dst.write(data[:4])
    (root / "empty" / "notes.txt").write_text("not a patch")

    jobs = "".join(
        f"  - {{name: {name}, data: {{root: data/{folder}}}{extra}}}\n"
        for name, folder, extra in (
            ("empty", "empty", ""), ("cut", "cut", ""), ("bands", "bands", ""),
            ("backbone", "good", ", model: {backbone: resnet181}"),
        )
    )  # fmt: skip
    write_job(project.queue_dir, "bad.yaml", f"defaults: {{kind: classify, device: cpu}}\njobs:\n{jobs}")
    expected = {
        "empty": f"class folder {root / 'empty' / 'water'} holds no images",
        "cut": f"patch {victim} is not a readable image",
        "bands": f"patch {odd} has 4 bands",
        "backbone": "unknown backbone 'resnet181' (not a timm model); did you mean 'resnet18'",
    }
    monkeypatch.setenv("TORCHBEARER_CRASH_LOOP_COUNT", "1000")  # four quick failures are what is tested
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    daemon = DaemonProcess(project).start()
    try:
        for name, message in expected.items():
            job = wait_state(store, job_named(store, name).id, {"failed", "succeeded"}, timeout=120)
            assert job.state == "failed" and message in job.reason, (name, job.reason)
            assert not list(project.runs_dir.glob(f"*-{name}/checkpoints"))  # failed before training
            assert "training" not in {p["stage"] for p in store.query(
                "SELECT stage FROM progress WHERE job_id = ?", [job.id])}  # fmt: skip
    finally:
        stop_daemon(daemon)
