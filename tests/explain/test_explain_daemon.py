"""``explain`` through a real daemon, on the checkpoint and validation patches of a real ``train`` job and of a
real ``classify`` job."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.classify.conftest import classify_yaml
from tests.conftest import wait_state, write_job
from tests.daemon.conftest import job_named
from tests.ml.conftest import train_yaml
from torchbearer.ml.patches import load_patch_set
from torchbearer.tui.data import preview_candidate


def _finished(store, name: str, timeout: float = 300):
    job = wait_state(store, job_named(store, name).id, {"succeeded", "failed"}, timeout=timeout)
    assert job.state == "succeeded", (job.reason, (Path(job.run_dir) / "log.txt").read_text()[-3000:])
    return job


@pytest.mark.slow  # about 2 min on the loaded 2-core machine: a train job, then the explain job
def test_explain_a_train_jobs_checkpoint_through_the_daemon(sample_project, store, daemon) -> None:
    # One tiny epoch on the committed crop, logging sample predictions to TensorBoard; then its explanation.
    train = train_yaml("fcn", epochs=1, samples=16, train="log_images: 2")
    explain = (
        "name: why\nkind: explain\nmodel: {job: fcn}\npatches: {job: fcn, count: 4}\ntarget_class: cloud\n"
        "methods: [gradcam, gradcam++]\nattributions: {steps: 4}\nembeddings: {k_range: [2, 3]}\n"
    )
    write_job(sample_project.queue_dir, "night.yaml", f"jobs:\n  - {train.replace(chr(10), chr(10) + '    ')}\n"
              f"  - {explain.replace(chr(10), chr(10) + '    ')}\n")  # fmt: skip
    trained = _finished(store, "fcn")
    events = list(Path(trained.run_dir).glob("logs/tensorboard/attempt-1/events.out.tfevents.*"))
    assert events and b"val/sample_1" in events[0].read_bytes(), "sample predictions logged as images"

    job = _finished(store, "why")
    outputs = store.outputs(job.id, "explanation")
    names = [Path(o["path"]).name for o in outputs]
    assert len([o for o in outputs if Path(o["path"]).parent.name == "cams" and o["path"].endswith(".png")]) == 4
    assert {"band_importance.csv", "embeddings.parquet", "clusters.gpkg", "explain.md"} <= set(names)
    summary = (Path(job.run_dir) / "explain.md").read_text()
    assert "class 'cloud' of best.ckpt (fcn), layer backbone" in summary and "predicted" in summary
    assert preview_candidate(store.outputs(job.id)).suffix == ".png"  # the dashboard's Outputs tab shows one


@pytest.mark.slow  # about 2 min on the loaded 2-core machine: a classify job, then the explain job
def test_explain_a_classify_jobs_checkpoint_through_the_daemon(patch_project, store, daemon) -> None:
    # One epoch from random weights on the real SCL patches, logging sample classifications to TensorBoard; then
    # its best checkpoint explained on 4 of its validation patches.
    train = classify_yaml("scl", train="epochs: 1, early_stopping: null, log_images: 2")
    explain = (
        "name: why-scl\nkind: explain\nmodel: {job: scl}\npatches: {job: scl, count: 4}\n"
        "target_class: water\nmethods: [gradcam, guided]\nattributions: {steps: 2, patches: 4}\n"
        "embeddings: {k: 2, tensorboard: false}\ndevice: cpu\n"
    )
    night = "jobs:\n- " + train.replace("\n", "\n  ").rstrip() + "\n- " + explain.replace("\n", "\n  ").rstrip() + "\n"
    write_job(patch_project.queue_dir, "scl.yaml", night)
    trained = _finished(store, "scl")
    events = list(Path(trained.run_dir).glob("logs/tensorboard/attempt-1/events.out.tfevents.*"))
    assert events and b"val/sample_1" in events[0].read_bytes(), "sample classifications logged as images"

    job = _finished(store, "why-scl")
    names = [Path(o["path"]).name for o in store.outputs(job.id, "explanation")]
    cams = {Path(o["path"]).stem for o in store.outputs(job.id, "explanation") if Path(o["path"]).parent.name == "cams"}
    # The classify job's split (val_fraction 0.2, seed 0), from its patch cache: 4 of its validation patches.
    patch_set = load_patch_set(patch_project.project_dir / "data" / "patches" / "t29unu-scl",
                               patch_project.data_dir / "cache")  # fmt: skip
    split = patch_set.split(0.2, 0.2, 0)
    val = {str(Path(patch_set.paths[i]).with_suffix("")).replace("/", "_") for i in split["val"]}
    assert len(cams) == 4 and cams <= val, (cams, sorted(val))
    assert {"band_importance.csv", "embeddings.parquet", "clusters.gpkg", "explain.md"} <= set(names)
    summary = (Path(job.run_dir) / "explain.md").read_text()
    assert "class 'water' of best.ckpt (classifier), layer layer4" in summary
