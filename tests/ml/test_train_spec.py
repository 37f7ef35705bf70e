"""Train job files: the example night validates; mistakes are refused with the field and the reason."""

from __future__ import annotations

import pytest

from tests.ml.conftest import REPO, SAMPLE_NAME
from torchbearer.spec import JobFileError, load_job_file, parse_job_text

BASE = "name: t\nkind: train\nscenes: [data/x.SAFE]\nmasks: masks/m.tif\n"


def test_example_night_validates() -> None:
    jobs = load_job_file(REPO / "configs" / "examples" / "night.yaml")
    kinds = [(j.spec.name, j.spec.kind) for j in jobs]
    assert kinds == [("fcn", "train"), ("farseg", "train"), ("unet", "train"), ("cloud-ensemble", "predict")]
    farseg = jobs[1].spec
    assert farseg.model.backbone == "resnet18" and farseg.train.patch_size == 64 and farseg.resolution == 60


def test_defaults_of_a_train_job() -> None:
    (job,) = parse_job_text(BASE)
    spec = job.spec
    assert spec.class_names == ["background", "target"] and spec.loss_name == "bce"
    assert spec.backbone is None and spec.train.early_stopping.direction == "max"
    (job,) = parse_job_text(BASE + "task: multiclass\nclasses: [a, b, c]\nmodel: {arch: farseg}\n")
    assert job.spec.loss_name == "ce" and job.spec.backbone == "resnet50"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("train: {patch_size: 100}", "multiple of 32"),
        ("model: {arch: fcn, backbone: resnet18}", "fcn has no backbone"),
        ("model: {arch: farseg, backbone: vgg16}", "farseg backbone must be one of"),
        ("model: {arch: deeplab}", "model.arch"),
        ("classes: [a, b, c]", "a binary task has 2 classes"),
        ("loss: ce", "loss ce does not fit a binary task"),
        ("class_weights: [1.0]", "class_weights has 1 values for 2 classes"),
        ("loss: dice\nclass_weights: [1.0, 3.0]", "class_weights work with the ce and bce losses"),
        ("train: {early_stopping: {monitor: val/iou/cloud}}", "no such class"),
        ("train: {early_stopping: {monitor: train/loss}}", "use one of val/loss"),
        ("imagery: {source: local, paths: [data]}", "either scenes (paths) or an imagery block"),
        ("train: {epoch: 3}", "did you mean 'epochs'"),
        ("train: {split: {test_regions: masks/t.geojson}}", "test_regions needs val_regions"),
        ("train: {split: {val_regions: masks/v.geojson, block_size: 64}}", "either regions or blocks"),
    ],
)
def test_mistakes_are_refused(extra: str, message: str) -> None:
    with pytest.raises(JobFileError) as info:
        parse_job_text(BASE + extra + "\n", "night.yaml")
    assert message in str(info.value), str(info.value)


def test_scenes_globs_and_the_imagery_block_give_the_same_stack(sample_project, store, tmp_path) -> None:
    from tests.contract import job_context
    from torchbearer.jobs.train import scene_stacks
    from torchbearer.store import NewJob

    (by_glob,) = parse_job_text(BASE.replace("data/x.SAFE", "data/S2A_*_T29UNU_*.SAFE") + "resolution: 60\n")
    (job_id,) = store.add_jobs([NewJob("t", "train", by_glob.given, by_glob.resolved)])
    ctx = job_context(store, job_id, tmp_path, sample_project)
    (by_block,) = parse_job_text(BASE.replace("scenes: [data/x.SAFE]\n", "")
                                 + "imagery: {source: local, paths: [data], resolution: 60}\n")  # fmt: skip
    stacks, resolution = scene_stacks(by_glob.spec, ctx)
    assert resolution == 60 and [p.name for p in stacks] == [SAMPLE_NAME.replace(".SAFE", "_60m.tif")]
    assert scene_stacks(by_block.spec, ctx) == (stacks, 60)
    (nothing,) = parse_job_text(BASE.replace("data/x.SAFE", "data/S2B_*.SAFE"))
    with pytest.raises(FileNotFoundError, match="matches nothing"):
        scene_stacks(nothing.spec, ctx)
