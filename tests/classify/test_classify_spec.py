"""Classify job files: the example night validates, nested fields override one by one, mistakes are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchbearer.spec import JobFileError, load_job_file, parse_job_text

REPO = Path(__file__).resolve().parents[2]


def test_example_classification_night_validates() -> None:
    jobs = load_job_file(REPO / "configs" / "examples" / "classify-night.yaml")
    assert [j.spec.kind for j in jobs] == ["prepare", "sweep", "predict", "predict"]
    patches, sweep, scene_map, table = (j.spec for j in jobs)
    assert (REPO / patches.steps[0].patches.labels).is_file()  # the SCL band of the committed product
    assert sweep.after == ["scl-patches"] and sweep.base["data"]["root"] == patches.steps[0].patches.output
    assert sweep.base["kind"] == "classify" and sweep.metric == "val/f1_macro"
    assert set(sweep.space) == {"train.lr", "model.backbone"}
    assert scene_map.after == ["scl-sweep"] and scene_map.stride == 8
    assert table.patches == patches.steps[0].patches.output and table.output.endswith(".csv")


def test_nested_fields_override_one_by_one_and_metrics_are_listed() -> None:
    text = (
        "defaults: {kind: classify, data: {root: p}, train: {lr: 0.01, epochs: 5}, model: {backbone: resnet18}}\n"
        "jobs:\n  - {name: a, train: {lr: 0.001}, model: {backbone: efficientnet_b0}}\n"
        "  - {name: b, data: {root: p, layout: bigearthnet}}\n"
    )
    a, b = (job.spec for job in parse_job_text(text))
    assert (a.train.lr, a.train.epochs, a.model.backbone) == (0.001, 5, "efficientnet_b0")
    assert a.logged_metrics() == ["val/loss", "val/accuracy", "val/f1_macro"]
    assert {"val/f1_micro", "val/map"} <= set(b.logged_metrics()) and b.task == "multilabel"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("train: {early_stopping: {monitor: val/iou}}", "early_stopping monitor val/iou: a multiclass job logs"),
        ("train: {epochs: 2, head_epochs: 2}", "head_epochs (2) must be fewer than epochs (2)"),
        ("train: {loss: bce}", "loss bce does not fit a multiclass task"),
        ("train: {unfreeze: 0}", "unfreeze is all or a number of blocks"),
        ("data: {root: p, val_fraction: 0.6, test_fraction: 0.5}", "must leave patches to train on"),
        ("train: {augment: {resized_crop: [0.9, 0.5]}}", "resized_crop is [smallest, largest]"),
    ],
)
def test_mistakes_are_refused(extra: str, message: str) -> None:
    text = "name: c\nkind: classify\ndata: {root: p}\n" if not extra.startswith("data") else "name: c\nkind: classify\n"
    with pytest.raises(JobFileError) as info:
        parse_job_text(text + extra + "\n")
    assert message in str(info.value)
