"""The run comparison from the queue: pick jobs with `v`, see curves overlaid and a side-by-side table."""

from __future__ import annotations

import pytest

from tests.tui.conftest import loaded, until
from tests.tui.test_dashboard import plain
from torchbearer.tui.compare import CompareDialog, CompareScreen, comparison_table, flatten

pytestmark = pytest.mark.anyio


def test_flatten_spec_keeps_settings_and_leaves_out_names():
    spec = {"name": "a", "kind": "train", "model": {"arch": "unet", "backbone": "resnet18"}, "train": {"lr": 0.01}}
    assert flatten(spec) == {"model.arch": "unet", "model.backbone": "resnet18", "train.lr": 0.01}


async def test_pick_two_jobs_and_compare(seeded, make_app, store):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        app.main_screen.table.select_job(seeded["fcn"])
        await pilot.press("v")
        dialog = await until(pilot, lambda: isinstance(app.screen, CompareDialog) and app.screen)
        offered = [job_id for job_id, _ in dialog.choices]
        assert set(offered) == {seeded["fcn"], seeded["farseg"]}  # the jobs with validation metrics
        choices = dialog.query_one("#compare-choices")
        assert choices.selected == [seeded["fcn"]]  # the highlighted job is marked already
        choices.select(seeded["farseg"])
        await pilot.press("enter")
        screen = await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comparison
                             and app.screen)  # fmt: skip
        names = [shown[0] for shown in screen.key_plot._shown]
        assert names == [f"#{seeded['fcn']} fcn", f"#{seeded['farseg']} farseg"]
        table = plain(comparison_table(screen.comparison))
        assert "best val/iou" in table and "0.61 (ep 7)" in table and "0.51 (ep 2)" in table
        assert "succeeded" in table and "running" in table
