"""The sweep's trials table in the job view: read from the sweep's sweep.csv, best first, hidden for others."""

from __future__ import annotations

import re

import pytest

from tests.tui.conftest import loaded, until
from tests.tui.test_dashboard import plain
from torchbearer.store import JobState, NewJob
from torchbearer.sweeps.report import TrialRow, write_csv
from torchbearer.tui.screens import JobScreen
from torchbearer.tui.widgets.sweep_trials import sorted_trials

ROWS = [
    TrialRow(1, "lr-1", 2, "succeeded", {"train.lr": 0.001}, 0.61),
    TrialRow(2, "lr-2", 3, "failed", {"train.lr": 0.1}, None, "failed: CUDA out of memory"),
    TrialRow(3, "lr-3", 4, "succeeded", {"train.lr": 0.01}, 0.74),
    TrialRow(4, "lr-4", 5, "running", {"train.lr": 0.003}),
]


def test_trials_are_sorted_by_the_metric_in_its_direction():
    rows = [{"trial": str(r.trial), "job": r.job, "m": "" if r.value is None else str(r.value)} for r in ROWS]
    assert [r["job"] for r in sorted_trials(rows, "m", "maximize")] == ["lr-3", "lr-1", "lr-2", "lr-4"]
    assert [r["job"] for r in sorted_trials(rows, "m", "minimize")] == ["lr-1", "lr-3", "lr-2", "lr-4"]


@pytest.mark.anyio
async def test_sweep_job_view_shows_its_trials_best_first(project, store, seeded, make_app):
    spec = {"name": "lr", "kind": "sweep", "metric": "val/iou", "direction": "maximize"}
    (sweep_id,) = store.add_jobs([NewJob(name="lr", kind="sweep", spec_given=spec, spec=spec, devices=0)])
    run_dir = project.runs_dir / f"{sweep_id}-lr"
    run_dir.mkdir(parents=True)
    store.transition(sweep_id, JobState.RUNNING, run_dir=str(run_dir), started_at=0.0)
    write_csv(run_dir / "sweep.csv", ROWS, ["train.lr"], "val/iou")
    app = make_app()
    async with app.run_test(size=(140, 48)) as pilot:
        await loaded(pilot)
        app.open_job(sweep_id)
        screen = await until(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.detail and app.screen)
        await until(pilot, lambda: screen.trials.display and "lr-3" in plain(screen.trials.content), what="trials")
        text = plain(screen.trials.content)
        assert "trials 3/4 ended · sorted by val/iou ↑" in text
        lines = [line for line in text.splitlines() if "lr-" in line]
        assert [re.search(r"lr-\d", line).group() for line in lines] == ["lr-3", "lr-1", "lr-2", "lr-4"]
        assert "0.74" in lines[0] and "0.01" in lines[0] and "CUDA out of memory" in lines[2]
        write_csv(run_dir / "sweep.csv", [*ROWS[:3], TrialRow(4, "lr-4", 5, "succeeded", {"train.lr": 0.003}, 0.8)],
                  ["train.lr"], "val/iou")  # fmt: skip
        store.add_progress(sweep_id, stage="sweeping", done=4, total=4)  # what the sweep writes with it
        await until(pilot, lambda: plain(screen.trials.content).split("lr-", 1)[1].startswith("4"), what="re-sort")
        await pilot.press("escape")
        app.open_job(seeded["fcn"])
        await until(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.detail, what="a train job")
        assert not app.screen.trials.display
