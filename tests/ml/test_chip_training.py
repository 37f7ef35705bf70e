"""Training from chip folders, the scaling guard, the random-forest baseline and the plot kind, through a real
daemon on chips cut from the real sample scene (``tests/ml/make_chips.py``)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import wait_state, write_job
from tests.daemon.conftest import job_named
from tests.ml.conftest import SAMPLE_NAME
from tests.ml.make_chips import make_chip_folder
from torchbearer.ml.members import load_member
from torchbearer.settings import Settings

TRAIN = (
    "train: {epochs: 2, batch_size: 8, patch_size: 32, lr: 0.003, samples_per_epoch: 32, plots: 2, "
    "early_stopping: null}"
)

NIGHT = f"""\
defaults:
  kind: train
  dataset: data/chips
  classes: [clear, cloud]
  {TRAIN}
jobs:
  - {{name: chips-fcn, model: {{arch: fcn}}}}
  - {{name: chips-rf, model: {{arch: random-forest, trees: 20, pixels: 20000}}}}
  - name: both
    kind: predict
    models: [{{job: chips-fcn}}, {{job: chips-rf}}]
    scenes: [data/{SAMPLE_NAME}]
    member_maps: true
    class_map: true
    output: outputs/both.tif
  - name: look
    kind: plot
    model: {{job: chips-rf}}
    input: data/chips
    count: 3
    curves: chips-fcn
"""


@pytest.fixture
def chip_project(sample_project: Settings) -> Settings:
    """The sample project with ``data/chips/``: 4-band DN chips of 64 px (train and val) from the sample."""
    make_chip_folder(sample_project.project_dir / "data" / "chips")
    return sample_project


def _ended(store, name: str, timeout: float = 300):
    return wait_state(store, job_named(store, name).id, {"succeeded", "failed"}, timeout=timeout)


def _succeeded(store, name: str):
    job = _ended(store, name)
    assert job.state == "succeeded", (job.reason, (Path(job.run_dir) / "log.txt").read_text()[-3000:])
    return job


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_night_on_chip_folders_fcn_forest_ensemble_and_plots(chip_project, store, daemon) -> None:
    """A network and a random forest trained on a chip folder, combined into one map, drawn by a plot job."""
    write_job(chip_project.queue_dir, "night.yaml", NIGHT)

    fcn = _succeeded(store, "chips-fcn")
    _, card = load_member(Path(fcn.run_dir) / "checkpoints" / "best.ckpt")
    assert (card.in_channels, card.bands, card.resolution) == (4, ["B02", "B03", "B04", "B8A"], 60.0)
    assert card.value_domain == "dn" and 0.0 < card.norm["mean"][0] < 1.5  # reflectance units, not DN
    assert sorted(m["epoch"] for m in store.metrics(fcn.id, "val/iou")) == [0, 1]
    assert (Path(fcn.run_dir) / "plot_1.png").is_file()

    rf = _succeeded(store, "chips-rf")
    forest = Path(rf.run_dir) / "checkpoints" / "forest.joblib"
    assert {o["path"] for o in store.outputs(rf.id, "best_checkpoint")} == {str(forest)}
    _, rf_card = load_member(forest)
    assert (rf_card.arch, rf_card.classes, rf_card.bands) == ("random-forest", ["clear", "cloud"], card.bands)
    names = set(store.metric_names(rf.id))
    assert {"val/loss", "val/iou", "val/f1", "val/accuracy", "val/iou/cloud", "val/f1/clear"} <= names
    assert store.metrics(rf.id, "val/iou")[0]["value"] > 0.5  # cloud is bright: pixels separate it well
    with open(Path(rf.run_dir) / "logs" / "csv" / "attempt-1" / "metrics.csv") as handle:
        assert "val/iou" in next(csv.DictReader(handle))
    assert (Path(rf.run_dir) / "plot_0.png").is_file()

    both = _succeeded(store, "both")
    output = chip_project.project_dir / "outputs" / "both.tif"
    with rasterio.open(chip_project.project_dir / "masks" / "t29unu_cloud.tif") as ds:
        truth, transform, crs = ds.read(1), ds.transform, ds.crs
    with rasterio.open(output) as ds:
        assert (ds.crs, ds.transform, ds.shape) == (crs, transform, truth.shape)
    forest_map = output.with_name("both.chips-rf.tif")
    with rasterio.open(forest_map) as ds:
        probability = ds.read(1)
    labelled = truth != 255
    # The forest's own map finds the clouds of the scene (chips were cut from it; val columns included).
    assert _iou((probability >= 100) & labelled, (truth == 1) & labelled) > 0.7
    assert {str(output), str(forest_map)} <= {o["path"] for o in store.outputs(both.id, "map")}

    look = _succeeded(store, "look")
    plots = sorted(Path(look.run_dir).glob("plot_*.png"))
    assert [p.name for p in plots] == ["plot_0.png", "plot_1.png", "plot_2.png"]
    curves = {p.name for p in Path(look.run_dir).glob("curves_*.png")}
    assert {"curves_loss.png", "curves_metrics.png", "curves_lr.png"} <= curves
    assert len(store.outputs(look.id, "plot")) == 3 + len(curves)

    # The same curves in the foreground, from the store (the daemon may be running).
    args = [sys.executable, "-m", "torchbearer", "plot", "curves", "chips-fcn", "--out", "curves"]
    done = subprocess.run(args, cwd=chip_project.project_dir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (chip_project.project_dir / "curves").iterdir()} == curves


def test_scaling_guard_refuses_a_chip_set_scaled_twice(sample_project, store, daemon) -> None:
    """Reflectance chips divided by 10 000 once more: the job fails at once, saying why."""
    make_chip_folder(sample_project.project_dir / "data" / "twice", domain="reflectance", rescale=1e-4)
    write_job(sample_project.queue_dir, "twice.yaml",
              f"name: twice\nkind: train\ndataset: data/twice\nclasses: [clear, cloud]\n{TRAIN}\n")  # fmt: skip
    job = _ended(store, "twice")
    assert job.state == "failed"
    assert "double-scaled" in job.reason and "B04" in job.reason, job.reason
    assert not (Path(job.run_dir) / "checkpoints").exists()


def test_foreground_plot_command_on_a_chip_folder(chip_project, tmp_path) -> None:
    """``torchbearer plot CKPT CHIPS N``: N plots, validation chips first, in the foreground."""
    root = chip_project.project_dir
    ckpt = _made_checkpoint(tmp_path / "fcn.ckpt")
    args = [sys.executable, "-m", "torchbearer", "plot", str(ckpt), "data/chips", "2", "--out", "shots"]
    done = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (root / "shots").iterdir()) == ["plot_0.png", "plot_1.png"]
    assert done.stdout.split() == ["shots/plot_0.png", "shots/plot_1.png"]

    args = [sys.executable, "-m", "torchbearer", "plot", str(ckpt), "data/nowhere", "2"]
    done = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "input data/nowhere does not exist" in " ".join(done.stderr.split())


def _made_checkpoint(path: Path) -> Path:
    """An untrained FCN on the chips' four bands, saved with its card (the plots need a model, not a good one)."""
    from torchbearer.ml.checkpoint import ModelCard, save_checkpoint
    from torchbearer.ml.models import build_model

    card = ModelCard("fcn", None, 4, 2, ["clear", "cloud"], "binary", ["B02", "B03", "B04", "B8A"], 60.0,
                     {"mean": [0.1] * 4, "std": [0.1] * 4})  # fmt: skip
    return save_checkpoint(build_model("fcn", None, 4, 1), card, path)


def test_plot_job_writes_n_pngs(chip_project, store, daemon) -> None:
    """A plot job draws ``count`` chips of a chip folder with a checkpoint file (a network the test made)."""
    _made_checkpoint(chip_project.project_dir / "fcn.ckpt")
    write_job(chip_project.queue_dir, "look.yaml",
              "name: look\nkind: plot\nmodel: {checkpoint: fcn.ckpt}\ninput: data/chips\ncount: 3\n")  # fmt: skip
    job = _succeeded(store, "look")
    plots = sorted(p.name for p in Path(job.run_dir).glob("plot_*.png"))
    assert plots == ["plot_0.png", "plot_1.png", "plot_2.png"]
    assert sorted(Path(o["path"]).name for o in store.outputs(job.id, "plot")) == plots
