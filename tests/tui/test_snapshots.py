"""SVG snapshots of the dashboard at 80×24 and 160×48 (fixed clock, time zone, machine figures and paths).

Update them after a deliberate change of the look with ``pytest tests/tui --snapshot-update`` and review the
SVGs in ``__snapshots__/`` before committing.
"""

from __future__ import annotations

import pytest

from tests.tui.conftest import loaded, until
from torchbearer.tui.screens import JobScreen

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


def open_job(job_id: int):
    """A ``run_before`` that opens a job's view and waits until its log and curves are drawn."""

    async def run_before(pilot) -> None:
        await loaded(pilot)
        pilot.app.open_job(job_id)
        screen = await until(pilot, lambda: isinstance(pilot.app.screen, JobScreen) and pilot.app.screen)
        await until(pilot, lambda: screen.ready and screen.detail is not None, what="the job drawn")
        await pilot.pause(0.2)

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_main_screen(seeded, make_app, snap_compare, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=loaded)


@pytest.mark.parametrize("size", SIZES)
def test_job_view_running(seeded, make_app, snap_compare, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=open_job(seeded["farseg"]))


@pytest.mark.parametrize("size", SIZES)
def test_job_view_failed(seeded, make_app, snap_compare, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=open_job(seeded["unet"]))
