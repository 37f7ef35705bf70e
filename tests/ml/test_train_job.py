"""Train jobs end to end through a real daemon on the real sample scene (CPU, 2 epochs, small patches)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import wait_state, write_job
from tests.daemon.conftest import job_named
from tests.ml.conftest import constant_iou, train_yaml
from torchbearer.ml.members import load_member


def _finished(store, name: str, timeout: float = 300):
    job = wait_state(store, job_named(store, name).id, {"succeeded", "failed"}, timeout=timeout)
    assert job.state == "succeeded", (job.reason, (Path(job.run_dir) / "log.txt").read_text()[-3000:])
    return job


def _best_val_iou(store, job_id: int) -> float:
    return max(m["value"] for m in store.metrics(job_id, "val/iou"))


def test_fcn_train_job_runs_end_to_end(sample_project, store, daemon) -> None:
    write_job(sample_project.queue_dir, "fcn.yaml", train_yaml("fcn", epochs=2))
    job = _finished(store, "fcn")
    run_dir = Path(job.run_dir)
    for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "plot_0.png", "plot_1.png"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("logs/tensorboard/attempt-1/events.out.tfevents.*"))
    assert (run_dir / "logs" / "csv" / "attempt-1" / "metrics.csv").is_file()
    assert {"checkpoint", "best_checkpoint", "plot", "log"} <= {o["kind"] for o in store.outputs(job.id)}

    assert sorted(m["epoch"] for m in store.metrics(job.id, "val/iou")) == [0, 1]
    assert _best_val_iou(store, job.id) > constant_iou(sample_project)
    _, card = load_member(run_dir / "checkpoints" / "best.ckpt")
    assert (card.arch, card.task, card.classes, card.in_channels, card.resolution) == (
        "fcn", "binary", ["clear", "cloud"], 11, 60.0)  # fmt: skip
    assert card.bands[8] == "B09" and 0.0 < card.norm["mean"][3] < 1.0  # reflectance, not DN

    rows = store.query("SELECT stage, total, epoch, step, eta_s, fields FROM progress WHERE job_id = ?", [job.id])
    assert {"preparing data", "training", "validating"} <= {r["stage"] for r in rows}
    steps = [r for r in rows if r["stage"] == "training" and "loss" in json.loads(r["fields"] or "{}")]
    assert steps and steps[-1]["total"] == 2 * 4 and steps[-1]["eta_s"] is not None  # 2 epochs × 4 steps
    assert {"lr", "samples_per_s", "data_wait_share"} <= set(json.loads(steps[-1]["fields"]))
    epochs = [json.loads(r["fields"] or "{}") for r in rows if r["stage"] == "training"]
    assert any("val/iou" in fields for fields in epochs)
    names = set(store.metric_names(job.id))
    assert {"train/loss_step", "train/loss_epoch", "lr", "samples_per_s", "data_wait_share", "val/loss", "val/f1",
            "val/iou/cloud"} <= names  # fmt: skip
    assert "train/loss" not in names  # step and epoch values under one name made the curve zig-zag
    assert sorted(m["epoch"] for m in store.metrics(job.id, "train/loss_epoch")) == [0, 1]
    assert len(store.metrics(job.id, "train/loss_step")) >= 2

    log = (run_dir / "log.txt").read_text()  # each line once, no advertising, numbers as numbers
    lines = [line.split(" ", 2)[-1] for line in log.splitlines()]
    assert not any(line.startswith("INFO: ") for line in log.splitlines()), log
    assert "GPU available" in log and len([x for x in lines if "GPU available" in x]) == 1
    assert "Tip:" not in log and "litlogger" not in log and "tensor(" not in log
    assert re.search(r"best val/iou = 0\.\d+ at ", log), log


@pytest.mark.slow
@pytest.mark.parametrize("model", ["{arch: farseg, backbone: resnet18}", "{arch: unet, backbone: resnet18}"])
def test_each_architecture_beats_a_constant(sample_project, store, daemon, model: str) -> None:
    write_job(sample_project.queue_dir, "job.yaml", train_yaml("net", model=model, epochs=5, samples=64, patch=64))
    job = _finished(store, "net")
    assert _best_val_iou(store, job.id) > constant_iou(sample_project, patch_size=64)
    _, card = load_member(Path(job.run_dir) / "checkpoints" / "best.ckpt")
    assert card.backbone == "resnet18"
