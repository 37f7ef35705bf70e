"""Sweep job files: the search space, the checks made at queue time (against the base kind's model and its
metrics), and the Optuna study each method makes (asked and re-opened from its journal file, as a restarted
sweep does)."""

from __future__ import annotations

import math

import pytest

from torchbearer.spec import JobFileError, parse_job_text
from torchbearer.sweeps import space
from torchbearer.sweeps.study import open_study, open_trials

TRAIN_BASE = """name: lr
kind: sweep
base:
  kind: train
  scenes: [data/scene.SAFE]
  resolution: 60
  masks: masks/t29unu_cloud.tif
  classes: [clear, cloud]
  train: {epochs: 1, patch_size: 32}
"""


def sweep(body: str):
    return parse_job_text(TRAIN_BASE + body, "lr.yaml")[0].spec


def refused(body: str) -> str:
    with pytest.raises(JobFileError) as caught:
        sweep(body)
    return str(caught.value)


def test_a_valid_sweep_resolves_direction_and_trial_count():
    spec = sweep("space: {train.lr: [0.001, 0.003, 0.01], model.arch: [fcn, unet]}\nmetric: val/loss\n")
    assert (spec.direction, spec.method, spec.trial_count, spec.devices) == ("minimize", "grid", 6, 0)
    assert sweep("space: {train.lr: [0.001, 0.01]}\nmetric: val/iou\nmax_trials: 1\n").trial_count == 1
    spec = sweep(
        "space: {train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}\nmethod: tpe\nmax_trials: 9\nmetric: val/iou"
    )
    assert (spec.direction, spec.trial_count) == ("maximize", 9)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("space: {train.lr: [0.001]}\nmetric: val/f1_macro\n",
         "metric: Value error, a train job does not log 'val/f1_macro'; did you mean 'val/f1'?"),
        ("space: {train.lrr: [0.001]}\nmetric: val/iou\n",
         "space.train.lrr: not a field of a train job; did you mean 'train.lr'?"),
        ("space: {backbone: [resnet18]}\nmetric: val/iou\n",
         "space.backbone: not a field of a train job; did you mean 'model.backbone'?"),
        ("space: {resolution.x: [1]}\nmetric: val/iou\n",
         "space.resolution.x: not a field of a train job: resolution has no fields"),
        ("space: {}\nmetric: val/iou\n", "space is empty"),
        ("space: {train.lr: []}\nmetric: val/iou\n", "space.train.lr: no values to choose from"),
        ("space: {train.lr: [0.001, 20]}\nmetric: val/iou\n",
         "with train.lr = 20 the trial is not a valid train job: base.train.lr: Input should be less than or equal"),
        ("space: {train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}\nmetric: val/iou\n",
         "space.train.lr: a log range has no grid"),
        ("space: {train.lr: {low: 0, high: 1, log: true}}\nmethod: random\nmax_trials: 2\nmetric: val/iou\n",
         "space.train.lr: a log range needs low > 0"),
        ("space: {train.lr: {lo: 1, high: 2}}\nmetric: val/iou\n",
         "space.train.lr: unknown key 'lo'; did you mean 'low'?"),
        ("space: {train: {lr: [1]}}\nmetric: val/iou\n", "nested fields are written as dotted keys: train.lr"),
        ("space: {train.lr: [0.001]}\nmethod: tpe\nmetric: val/iou\n", "a tpe sweep needs a number of trials"),
        ("space: {name: [a, b]}\nmetric: val/iou\n", "space.name: name is set by the sweep, not swept"),
        ("space: {train.lr: [0.001]}\nmetric: val/iou\ndevices: 1\n",
         "devices: Input should be less than or equal to 0"),
    ],
)  # fmt: skip
def test_bad_sweeps_are_refused_before_anything_runs(body, message):
    assert message in refused(body)


def test_bad_base_jobs_are_refused_with_their_path():
    text = TRAIN_BASE.replace("kind: train\n", "kind: trian\n") + "space: {train.lr: [1]}\nmetric: val/iou\n"
    with pytest.raises(JobFileError, match=r"base.kind: unknown job kind 'trian'; did you mean 'train'\?"):
        parse_job_text(text, "lr.yaml")
    text = TRAIN_BASE.replace("  train: {", "  trian: {") + "space: {model.arch: [fcn]}\nmetric: val/iou\n"
    with pytest.raises(JobFileError, match=r"base.trian: unknown key 'trian'; did you mean 'train'\?"):
        parse_job_text(text, "lr.yaml")
    with pytest.raises(JobFileError, match=r"base.after: not allowed in a sweep's base \(put after: on the sweep\)"):
        parse_job_text(TRAIN_BASE + "  after: [x]\nspace: {train.lr: [1]}\nmetric: val/iou\n", "lr.yaml")


def test_grid_values_of_stepped_ranges():
    assert space.parse_dimension("e", {"low": 1, "high": 7, "step": 3}).grid() == [1, 4, 7]
    assert space.parse_dimension("f", {"low": 0.1, "high": 0.3, "step": 0.1}).grid() == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="a grid needs a step for a float range"):
        space.parse_dimension("f", {"low": 0.1, "high": 0.3}).grid()
    assert space.set_path({"kind": "train"}, "train.lr", 0.1) == {"kind": "train", "train": {"lr": 0.1}}


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_random_and_tpe_studies_ask_within_the_space_and_reopen_from_their_journal(tmp_path, method):
    dims = space.parse_space({"train.lr": {"low": 1e-4, "high": 1e-1, "log": True}, "model.arch": ["fcn", "unet"],
                              "train.batch_size": {"low": 4, "high": 32, "step": 4}})  # fmt: skip
    study = open_study(tmp_path, "s", method, "maximize", dims, seed=1)
    distributions = space.distributions(dims, method)
    asked = [study.ask(distributions) for _ in range(4)]
    for trial in asked:
        assert 1e-4 <= trial.params["train.lr"] <= 1e-1 and isinstance(trial.params["train.batch_size"], int)
        assert trial.params["train.batch_size"] % 4 == 0 and trial.params["model.arch"] in ("fcn", "unet")
    study.tell(asked[0].number, 0.5)
    lrs = sorted(math.log10(t.params["train.lr"]) for t in asked)
    assert lrs[-1] - lrs[0] > 0.1  # not one value asked four times
    again = open_study(tmp_path, "s", method, "maximize", dims, seed=1)  # what a restarted sweep sees
    assert [t.params for t in again.trials] == [t.params for t in asked]
    assert [t.number for t in open_trials(again)] == [1, 2, 3] and again.best_value == 0.5


def test_grid_study_gives_every_point_once(tmp_path):
    dims = space.parse_space({"a": [1, 2, 3], "b": ["x", "y"]})
    study = open_study(tmp_path, "g", "grid", "minimize", dims, seed=0)
    distributions = space.distributions(dims, "grid")
    points = set()
    for _ in range(6):
        trial = study.ask(distributions)
        points.add((trial.params["a"], trial.params["b"]))
        study.tell(trial.number, 1.0)  # Optuna's grid would call study.stop() here: it must not raise
    assert points == {(a, b) for a in (1, 2, 3) for b in ("x", "y")}


def test_the_example_sweep_night_is_valid():
    from pathlib import Path

    from torchbearer.spec import load_job_file

    sweep_job, predict = load_job_file(Path(__file__).parents[2] / "configs" / "examples" / "sweep.yaml")
    assert (sweep_job.spec.kind, sweep_job.spec.method, sweep_job.spec.trial_count) == ("sweep", "tpe", 8)
    assert predict.spec.after == ["lr"]  # the map waits for the sweep and takes its best checkpoint
