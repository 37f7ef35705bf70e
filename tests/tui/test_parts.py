"""The dashboard's pieces on their own: following a log, reading progress events, curves, previews."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from tests.tui.conftest import write_plot
from torchbearer.tui.data import Curve, LogFollower, curve_from_points, curves_by_role, key_metric
from torchbearer.tui.widgets.job_parts import ProgressFigures, log_text
from torchbearer.tui.widgets.preview import HalfBlockImage, load_preview


def test_log_follower_reads_the_end_then_only_what_was_appended(tmp_path):
    log = tmp_path / "log.txt"
    log.write_bytes(b"".join(f"line {i}\n".encode() for i in range(20_000)))  # ~200 KB: not read whole
    follower = LogFollower(log, max_bytes=4096)
    lines, reset = follower.read_new()
    assert reset and lines[-1] == "line 19999" and len(lines) < 600 and lines[0].startswith("line ")
    assert follower.read_new() == ([], False)
    with open(log, "ab") as file:
        file.write(b"epoch 1 done\npartial")
    assert follower.read_new() == (["epoch 1 done"], False)  # "partial" waits for its newline
    with open(log, "ab") as file:
        file.write(b" line\n")
    assert follower.read_new() == (["partial line"], False)
    log.write_text("cut back by the log cap\n")  # shorter than before: start over
    assert follower.read_new() == (["cut back by the log cap"], True)


def test_log_follower_waits_for_a_missing_file(tmp_path):
    follower = LogFollower(tmp_path / "log.txt")
    assert follower.read_new() == ([], False)
    (tmp_path / "log.txt").write_text("started\n")
    assert follower.read_new() == (["started"], True)


def test_log_lines_are_highlighted():
    assert log_text("RuntimeError: boom").style == "bold red"
    assert log_text("UserWarning: odd").style == ""  # a word ending in Warning is not a warning level
    assert log_text("[12:00] WARNING slow disk").style == "yellow"
    assert log_text("epoch 3 done").style == ""


def test_progress_figures_of_a_training_event():
    fields = {"epochs": 40, "epoch_step": 52, "epoch_steps": 128, "lr": 8.5e-4, "samples_per_s": 143.2}
    event = {"stage": "training", "done": 436, "total": 5120, "unit": "steps", "epoch": 3, "eta_s": 5580.0,
             "fields": fields}  # fmt: skip
    figures = ProgressFigures.from_event(event)
    assert figures.job_fraction == 436 / 5120 and figures.job_label == "436/5120 steps"
    assert figures.epoch_fraction == 52 / 128 and figures.epoch_label == "epoch 3/40  step 52/128"
    assert figures.eta_s == 5580.0
    assert dict(figures.figures) == {"lr": "8.50e-04", "samples/s": "143"}


def test_progress_figures_without_fields_fall_back_to_the_job_row_and_metrics():
    figures = ProgressFigures.from_event(None, job_progress=0.25)
    assert figures.job_fraction == 0.25 and figures.epoch_fraction is None and figures.figures == ()
    figures = ProgressFigures.from_event({"fields": {"lr": 1e-3}}, latest_metrics={"lr": 5e-4, "samples_per_s": 90})
    assert dict(figures.figures) == {"lr": "1.00e-03", "samples/s": "90"}  # the event wins over the metric


def test_curves_per_epoch_keep_the_last_value_and_mark_the_best():
    curve = curve_from_points("val/iou", [(0, 10, 0.2), (0, 20, 0.3), (1, 40, 0.5), (2, 60, 0.4)])
    assert curve.by_epoch and curve.x == (0.0, 1.0, 2.0) and curve.y == (0.3, 0.5, 0.4)
    assert curve.best() == (1.0, 0.5)
    loss = curve_from_points("val/loss", [(None, 1, 0.9), (None, 2, 0.7), (None, 3, 0.8)])
    assert not loss.by_epoch and loss.best() == (2.0, 0.7)
    losses, key = curves_by_role({"val/loss": loss, "val/iou": curve, "lr": Curve("lr", (), (), False)})
    assert losses == [loss] and key is curve
    assert key_metric({"val/loss", "val/f1", "val/iou"}) == "val/iou"
    assert key_metric({"val/loss", "val/dice"}) == "val/dice"


def test_preview_of_a_png_and_a_geotiff(tmp_path):
    import rasterio

    png = tmp_path / "plot_0.png"
    write_plot(png)
    pixels = load_preview(png, max_size=(32, 32))
    assert pixels.shape == (24, 32, 3) and pixels.dtype == np.uint8

    tif = tmp_path / "map.tif"
    probability = np.tile(np.arange(0, 250, 2, dtype=np.uint8), (500, 8))  # 500 × 1000, a left-to-right ramp
    grid = {"crs": "EPSG:32629", "transform": rasterio.Affine(60, 0, 500_000, 0, -60, 5_900_000)}
    with rasterio.open(tif, "w", driver="GTiff", width=1000, height=500, count=1, dtype="uint8", **grid) as dst:
        dst.write(probability, 1)
    pixels = load_preview(tif, max_size=(100, 100))
    assert pixels.shape == (50, 100, 3)
    assert pixels[0, 0, 0] < 20 < 230 < pixels[0, -1, 0]  # the ramp, read as written (uint8: no stretch)
    assert (pixels[..., 0] == pixels[..., 2]).all()  # grey
    assert load_preview(tmp_path / "missing.png") is None


def test_half_blocks_fit_the_cells_and_keep_the_aspect():
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:20] = (255, 0, 0)
    console = Console(width=40, file=io.StringIO(), color_system="truecolor")
    lines = console.render_lines(HalfBlockImage(pixels, 40, 20), console.options.update_width(40), pad=False)
    assert len(lines) == 10 and all(sum(len(seg.text) for seg in line) == 40 for line in lines)
    top = lines[0][0].style
    assert top.color.triplet == (255, 0, 0) and top.bgcolor.triplet == (255, 0, 0)
    assert lines[-1][0].style.color.triplet == (0, 0, 0)
