"""The ``predict`` kind: its job-file model, members from train jobs, and a real worker stopped by SIGTERM
mid-scene that resumes to the same bytes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import rasterio

from tests.conftest import DaemonProcess, wait_for, wait_state, write_job
from tests.contract import ingest, job_context
from tests.daemon.conftest import stop_daemon
from tests.inference.conftest import CROP, card_for, save_checkpoint
from torchbearer.context import JobContext
from torchbearer.inference.ensemble import PredictOptions, predict_scene
from torchbearer.inference.members import Member
from torchbearer.jobs import get_kind
from torchbearer.jobs.predict import ModelRef
from torchbearer.ml.checkpoint import CheckpointError
from torchbearer.ml.members import load_member
from torchbearer.spec import JobFileError, parse_job_text
from torchbearer.store import JobState, NewJob


def parse(text: str):
    (job,) = parse_job_text(text, "job.yaml")
    return job


def test_spec_runs_after_the_train_jobs_it_takes_models_from() -> None:
    job = parse("name: ens\nkind: predict\nmodels: [{job: fcn}, {job: unet, weight: 2}, {checkpoint: a.ckpt}]\n"
                "scenes: [s.tif]\noutput: out/ens.tif\ncombine: weighted\n")  # fmt: skip
    spec = job.spec
    assert set(spec.after) >= {"fcn", "unet"}
    assert [m.weight for m in spec.models] == [1.0, 2.0, 1.0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("models: [{checkpoint: a.ckpt, job: fcn}]\nscenes: [s.tif]\noutput: o.tif", "exactly one of checkpoint"),
        ("models: [{checkpoint: a.ckpt}]\noutput: o.tif", "either scenes"),
        ("models: [{checkpoint: a.ckpt}]\nscenes: [s.tif]\noutput: o.png", "must be a GeoTIFF"),
        ("models: [{checkpoint: a.ckpt}]\nscenes: [s.tif]\noutput: o.tif\ncombine: median", "combine"),
        ("models: []\nscenes: [s.tif]\noutput: o.tif", "models"),
    ],
)
def test_bad_predict_jobs_are_refused(body: str, message: str) -> None:
    with pytest.raises(JobFileError, match=message):
        parse(f"name: ens\nkind: predict\n{body}\n")


def _context(project, store, name: str, spec=None) -> JobContext:
    (job_id,) = store.add_jobs([NewJob(name=name, kind="predict", spec_given={}, spec={})])
    run_dir = project.runs_dir / f"{job_id}-{name}"
    run_dir.mkdir(parents=True)
    return job_context(store, job_id, run_dir, project, spec=spec.model_dump(mode="json") if spec else None)


def _project_scene(project) -> Path:
    scene = project.project_dir / "scenes" / CROP.name
    if not scene.exists():
        shutil.copytree(CROP, scene)
    return scene


def test_members_from_a_train_job_and_a_corrupt_checkpoint(project, store, stack60) -> None:
    models = project.project_dir / "models"
    models.mkdir()
    best = save_checkpoint(models / "best.ckpt", card_for(stack60, "unet", "resnet18"))
    (train_id,) = store.add_jobs([NewJob(name="unet", kind="train", spec_given={}, spec={})])
    store.transition(train_id, JobState.RUNNING)
    store.transition(train_id, JobState.SUCCEEDED)
    store.add_output(train_id, best, "best_checkpoint")
    _project_scene(project)
    kind = get_kind("predict")
    spec = kind.spec.model_validate({
        "name": "ens", "models": [{"job": "unet"}], "scenes": [f"scenes/{CROP.name}"], "output": "out/ens.tif",
        "window": 128, "optimize": False, "runtime": "torch",
    })  # fmt: skip
    ctx = _context(project, store, "ens", spec)
    kind.run(spec, ctx)
    ingest(store, ctx)
    maps = [Path(o["path"]) for o in store.outputs(ctx.job_id, "map")]
    assert maps == [project.project_dir / "out" / "ens.tif"] and maps[0].is_file()
    assert (project.data_dir / "cache").is_dir(), "the SAFE folder was stacked into the scene cache"

    broken = models / "broken.ckpt"
    broken.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    spec = spec.model_copy(update={"models": [ModelRef(checkpoint="models/broken.ckpt")]})
    with pytest.raises(CheckpointError, match=r"broken\.ckpt: not a readable checkpoint"):
        kind.run(spec, _context(project, store, "ens2"))


@pytest.fixture
def patient_daemon(project, monkeypatch):
    """A daemon that waits up to 60 s for a worker to stop after SIGTERM (a batch is slow on a busy CPU)."""
    monkeypatch.setenv("TORCHBEARER_KILL_GRACE_S", "60")
    process = DaemonProcess(project).start()
    yield process
    stop_daemon(process)


@pytest.mark.slow  # two prediction attempts of a scene: about 30 s on a quiet 2-core machine
def test_sigterm_mid_scene_resumes_to_the_same_bytes(project, store, patient_daemon, part60) -> None:
    daemon = patient_daemon
    ckpt = save_checkpoint(project.project_dir / "a.ckpt", card_for(part60, "unet", "resnet18"), seed=5)
    scene = shutil.copy(part60, project.project_dir / "part_60m.tif")
    # 12 windows of 64 pixels in 4 strips of 32 rows, one window a batch, 3-fold test-time augmentation: a few
    # seconds on a CPU, stopped after the first strip.
    write_job(project.queue_dir, "ens.yaml", (
        "name: ens\nkind: predict\nmodels: [{checkpoint: a.ckpt}]\nscenes: [part_60m.tif]\n"
        "output: outputs/ens.tif\nwindow: 64\nbatch_size: 1\ntta: flips\noptimize: false\nruntime: torch\n"
    ))  # fmt: skip
    job = wait_state(store, wait_for(lambda: store.find_job("ens"), 15).id, "running", timeout=60)
    wait_for(lambda: ((store.latest_progress(job.id) or {}).get("done") or 0) > 0, 120, what="a strip done")
    assert daemon.stop() == 0
    assert store.job(job.id).state == "interrupted"
    output = project.project_dir / "outputs" / "ens.tif"
    record = json.loads(output.with_name("ens.tif.resume.json").read_text())
    assert 0 < record["rows_done"] < 128, "stopped mid-scene"
    daemon.start()
    job = wait_state(store, job.id, "succeeded", timeout=120)
    assert job.attempts == 2
    progress = store.query("SELECT * FROM progress WHERE job_id = ? AND stage = 'predicting'", [job.id])
    assert progress[-1]["unit"] == "windows" and progress[-1]["total"] == 3 * 4
    assert json.loads(progress[-1]["fields"])["mpx_per_s"] > 0

    model, card = load_member(ckpt)
    reference = predict_scene(
        [Member("a", model, card, source=str(ckpt.resolve()))], [Path(scene)], project.project_dir / "whole.tif",
        PredictOptions(window=64, batch_size=1, tta="flips", optimize=False), created=record["started"],
    )  # fmt: skip
    assert hashlib.sha256(output.read_bytes()).digest() == hashlib.sha256(reference.output.read_bytes()).digest()


def test_scenes_from_an_imagery_block(project, store, small60) -> None:
    save_checkpoint(project.project_dir / "a.ckpt", card_for(small60, "unet", "resnet18"))
    (project.project_dir / "scenes").mkdir()
    shutil.copy(small60, project.project_dir / "scenes" / "small_60m.tif")
    kind = get_kind("predict")
    spec = kind.spec.model_validate({
        "name": "ens", "models": [{"checkpoint": "a.ckpt"}], "output": "out/ens.tif", "window": 64,
        "optimize": False, "runtime": "torch", "imagery": {"source": "local", "paths": ["scenes"], "resolution": 20},
    })  # fmt: skip
    kind.run(spec, _context(project, store, "ens"))  # the members' resolution (60 m) wins over the block's
    with rasterio.open(project.project_dir / "out" / "ens.tif") as out, rasterio.open(small60) as scene:
        assert (out.transform, out.shape) == (scene.transform, scene.shape)
