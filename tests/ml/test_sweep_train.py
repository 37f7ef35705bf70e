"""A sweep over the real ``train`` kind, through a real daemon on the real sample scene: two 1-epoch trials on
tiny patches; a predict job's member ``{job: <sweep>}`` is its best trial's checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import wait_state, write_job
from tests.contract import job_context
from tests.daemon.conftest import job_named
from tests.ml.conftest import SAMPLE_NAME, train_yaml
from torchbearer import commands
from torchbearer.jobs.predict import load_members
from torchbearer.spec import parse_job_text
from torchbearer.store import NewJob


def _sweep() -> str:
    base = train_yaml("unused", epochs=1, samples=16, patch=32).replace("name: unused\n", "")
    base = base.replace("plots: 2", "plots: 0")
    indented = "".join(f"  {line}\n" for line in base.splitlines())
    return f"name: lr\nkind: sweep\nbase:\n{indented}space:\n  train.lr: [0.0003, 0.01]\nmetric: val/iou\n"


@pytest.mark.slow
def test_train_sweep_names_the_best_trial_and_predict_takes_its_checkpoint(sample_project, store, daemon):
    write_job(sample_project.queue_dir, "lr.yaml", _sweep())
    sweep = wait_state(store, job_named(store, "lr").id, {"succeeded", "failed"}, 600)
    assert sweep.state == "succeeded", (sweep.reason, Path(sweep.run_dir, "log.txt").read_text()[-3000:])
    trials = commands.spawned_jobs(store, sweep.id)
    assert sorted(t.name for t in trials) == ["lr-1", "lr-2"] and {t.kind for t in trials} == {"train"}
    assert sorted(t.spec["train"]["lr"] for t in trials) == [0.0003, 0.01]
    with open(Path(sweep.run_dir) / "sweep.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    ious = {r["job"]: float(r["val/iou"]) for r in rows}
    for trial in trials:  # each row's value is the trial's best val/iou as it logged it
        assert ious[trial.name] == max(m["value"] for m in store.metrics(trial.id, "val/iou"))
    best = json.loads(Path(sweep.run_dir, "best.json").read_text())
    assert best["value"] == max(ious.values()) and best["job"] == max(ious, key=ious.get)
    best_trial = next(t for t in trials if t.name == best["job"])
    (trial_ckpt,) = store.outputs(best_trial.id, "best_checkpoint")
    (sweep_ckpt,) = store.outputs(sweep.id, "best_checkpoint")
    assert sweep_ckpt["path"] == trial_ckpt["path"] == best["checkpoint"]
    # a predict job's member {job: lr} is that checkpoint (resolved as the predict kind does it)
    predict = parse_job_text(f"name: map\nkind: predict\nmodels: [{{job: lr}}]\nscenes: [data/{SAMPLE_NAME}]\n"
                             "output: outputs/lr.tif\n", "map.yaml")[0].spec  # fmt: skip
    assert predict.after == ["lr"]
    (job_id,) = store.add_jobs([NewJob(name="map", kind="predict", spec_given={}, spec={})])
    ctx = job_context(store, job_id, sample_project.runs_dir / "map", sample_project,
                      spec=predict.model_dump(mode="json"))  # fmt: skip
    (member,) = load_members(predict, ctx, "cpu")
    assert member.source == best["checkpoint"] and member.card.in_channels == 11
