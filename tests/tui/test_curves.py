"""Honest curves (log axis over decades, step and epoch series, smoothing, best point) and the running panels."""

from __future__ import annotations

import itertools
import re

import pytest
from textual.app import App, ComposeResult

from tests.tui.conftest import loaded, until
from torchbearer.tui.data import Curve, curve_from_points, curves_by_role, smoothed, wants_log_axis
from torchbearer.tui.screens import JobScreen
from torchbearer.tui.widgets.job_parts import MetricPlot
from torchbearer.tui.widgets.panels import JobPanel, sparkline

pytestmark = pytest.mark.anyio


class PlotApp(App):
    """One plot filling an 80×24 screen."""

    def compose(self) -> ComposeResult:
        yield MetricPlot("loss", id="plot")


def y_ticks(plot: MetricPlot) -> list[float]:
    """The numbers on the plot's y axis, top to bottom, as plotext draws them."""
    width, height = plot.size
    plot.plt.plotsize(width, height)
    text = re.sub(r"\x1b\[[0-9;]*m", "", plot.plt.build())
    return [float(m.group(1)) for line in text.splitlines() if (m := re.match(r"^\s*([\d.]+)\s*┤", line))]


async def test_a_curve_spanning_four_decades_is_drawn_on_a_log_axis():
    steps = [float(s) for s in range(0, 400, 10)]
    values = [11269.0 * 0.79 ** (s / 10) + 1.0 for s in steps]  # 11 270 down to ~1.0: four decades
    curve = Curve("val/rmse", tuple(steps), tuple(values), by_epoch=False, steps=tuple(steps))
    app = PlotApp()
    async with app.run_test(size=(80, 24)) as pilot:
        plot = app.query_one(MetricPlot)
        plot.show([curve])
        await pilot.pause()
        assert plot.log_axis  # not a loss by name: chosen because the values span > 2 decades
        ticks = y_ticks(plot)
        assert len(ticks) >= 4 and ticks[0] > 5000 and ticks[-1] < 3
        ratios = [a / b for a, b in itertools.pairwise(ticks)]
        assert all(r > 2 for r in ratios) and max(ratios) / min(ratios) < 1.2  # evenly spaced decades: log

        narrow = Curve("val/iou", (0.0, 1.0, 2.0), (0.41, 0.47, 0.52), by_epoch=True)
        plot.show([narrow])
        await pilot.pause()
        assert not plot.log_axis  # an IoU between 0.4 and 0.6 keeps a linear axis
        ticks = y_ticks(plot)
        steps_between = [a - b for a, b in itertools.pairwise(ticks)]
        assert max(steps_between) - min(steps_between) < 0.01


def test_step_and_epoch_series_stay_apart_and_are_drawn_together():
    step = curve_from_points("train/loss_step", [(0, 1, 2.0), (0, 2, 1.5), (1, 3, 1.0), (1, 4, 0.8)])
    epoch = curve_from_points("train/loss_epoch", [(0, 2, 1.7), (1, 4, 0.9)])
    val = curve_from_points("val/loss", [(0, 2, 1.6), (1, 4, 1.1)])
    assert not step.by_epoch and step.x == (1.0, 2.0, 3.0, 4.0)  # every step kept, not one per epoch
    assert epoch.by_epoch and epoch.x == (0.0, 1.0) and epoch.steps == (2.0, 4.0)
    losses, _ = curves_by_role({"val/loss": val, "train/loss_epoch": epoch, "train/loss_step": step})
    assert [c.name for c in losses] == ["train/loss_step", "train/loss_epoch", "val/loss"]
    assert wants_log_axis(losses)  # losses: log axis
    assert smoothed([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # debiased: no pull towards 0
    assert smoothed([0.0, 10.0], weight=0.5)[1] == pytest.approx(10 * 0.5 / 0.75)
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█" and sparkline([1, 2, 3], 2) == "▁█"


async def test_smoothing_toggle_and_best_point_in_the_job_view(seeded, make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        app.open_job(seeded["farseg"])
        screen = await until(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.detail and app.screen)
        assert not screen.loss_plot.smooth
        await pilot.press("s")
        assert screen.smooth and screen.loss_plot.smooth
        await pilot.press("s")
        assert not screen.loss_plot.smooth


@pytest.mark.parametrize(("size", "compact"), [((80, 24), True), ((160, 48), False)])
async def test_running_jobs_get_a_panel_that_folds_to_one_line_when_small(seeded, make_app, size, compact):
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await loaded(pilot)
        main = app.main_screen
        panel = await until(pilot, lambda: main.running.query(JobPanel).first() if main.running.children else None)
        await pilot.pause()
        assert panel.panel.id == seeded["farseg"] and panel.compact is compact
        assert (panel.size.height == 1) is compact
        assert panel.panel.curve is not None and panel.panel.curve.name == "val/iou"
        assert any("epoch 2" in line for line in panel.panel.log_tail)
