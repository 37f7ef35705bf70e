"""The dashboard against a real SQLite store: what it shows, and that its keys change the store as the CLI does."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from tests.conftest import write_job
from tests.tui.conftest import NOW, loaded, until
from torchbearer.store import JobState
from torchbearer.tui.screens import JobScreen, MainScreen, SummaryScreen
from torchbearer.tui.widgets.dialogs import ChoiceDialog, ConfirmDialog
from torchbearer.tui.widgets.header import HeaderBar

pytestmark = pytest.mark.anyio  # the pilot tests run on asyncio through the anyio plugin


def plain(renderable, width: int = 160) -> str:
    """What a Rich renderable reads as, without styles."""
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


async def select(pilot, job_id: int) -> None:
    main = pilot.app.main_screen
    assert main.table.select_job(job_id)
    await pilot.pause()


async def test_opens_without_a_daemon_and_shows_every_state(project, store, seeded, make_app):
    app = make_app()
    async with app.run_test(size=(120, 30)) as pilot:
        await loaded(pilot)
        table = app.main_screen.table
        assert {row.state for row in table.rows.values()} == set(JobState)
        header = app.screen.query_one(HeaderBar).text
        assert "daemon down" in header and "queue running" in header
        assert "NVIDIA RTX A6000" in header and "CPU 12%" in header
        assert table.selected_id == seeded["farseg"]  # the cursor starts on the running job
    assert store.meta("tui_last_opened") > NOW - 3600 * 24 * 365  # remembered for the next morning summary


async def test_filter_and_sort(seeded, make_app):
    app = make_app()
    async with app.run_test(size=(120, 30)) as pilot:
        await loaded(pilot)
        table = app.main_screen.table
        await pilot.press("f")
        assert isinstance(app.screen, ChoiceDialog)
        dialog = app.screen
        choice = [value for value, _ in dialog.choices].index("failed")
        dialog.query_one("#choices").highlighted = choice
        await pilot.press("enter")
        await pilot.pause()
        assert [table.rows[i].name for i in table.order] == ["unet"]

        table.set_filter(None)
        await pilot.press("s")
        sort_choices = [value for value, _ in app.screen.choices]
        app.screen.query_one("#choices").highlighted = sort_choices.index("name")
        await pilot.press("enter")
        await pilot.pause()
        names = [table.rows[i].name for i in table.order]
        assert names == sorted(names, key=str.lower)
        await pilot.press("s", "enter")  # the same column again: reversed
        await pilot.pause()
        assert [table.rows[i].name for i in table.order] == names[::-1]

        table.set_sort("priority", reverse=True)
        assert table.rows[table.order[0]].name == "night-2"
        table.set_filter(["queued", "held"])
        assert {table.rows[i].state for i in table.order} == {"queued", "held"}


async def test_actions_change_the_store_as_the_cli_does(project, store, seeded, make_app):
    app = make_app()
    async with app.run_test(size=(120, 30)) as pilot:
        await loaded(pilot)

        async def job_state(name: str, state: str) -> None:
            await until(pilot, lambda: store.job(seeded[name]).state == state, what=f"{name} {state}")

        await select(pilot, seeded["night-2"])
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")  # asked first: "no" leaves it alone
        await pilot.pause(0.2)
        assert store.job(seeded["night-2"]).state == JobState.QUEUED

        await pilot.press("h")
        await job_state("night-2", JobState.HELD)
        await pilot.press("h")
        await job_state("night-2", JobState.QUEUED)
        await pilot.press("plus")
        await until(pilot, lambda: store.job(seeded["night-2"]).priority == 6, what="priority 6")
        await pilot.press("minus", "minus")
        await until(pilot, lambda: store.job(seeded["night-2"]).priority == 4, what="priority 4")
        await pilot.press("c", "y")
        await job_state("night-2", JobState.CANCELLED)
        assert store.job(seeded["night-2"]).reason == "cancelled on request"

        await select(pilot, seeded["farseg"])  # running: cancelling flags it for the daemon
        await pilot.press("c", "y")
        await until(pilot, lambda: store.job(seeded["farseg"]).cancel_requested == 1, what="cancel requested")
        assert store.job(seeded["farseg"]).state == JobState.RUNNING

        await select(pilot, seeded["unet"])
        await pilot.press("r")
        await job_state("unet", JobState.QUEUED)
        assert [t["reason"] for t in store.transitions(seeded["unet"])][-1] == "retry on request"

        await select(pilot, seeded["fcn"])  # a command that does not apply says why and changes nothing
        await pilot.press("h")
        await until(pilot, lambda: any("only queued" in str(n.message) for n in app._notifications), what="warning")
        assert store.job(seeded["fcn"]).state == JobState.SUCCEEDED

        await pilot.press("p")
        await until(pilot, lambda: store.queue_paused() is not None, what="queue paused")
        assert store.queue_paused()["reason"] == "paused from the dashboard"
        await until(pilot, lambda: app.queue_info.paused, what="header: paused")
        await pilot.press("p")
        await until(pilot, lambda: store.queue_paused() is None, what="queue resumed")

        palette = {command.title: command for command in app.get_system_commands(app.screen)}
        assert {"Cancel fcn (#2)", "Retry fcn (#2)", "Hold fcn (#2)", "Release fcn (#2)"} <= set(palette)
        palette["Pause queue"].callback()
        await until(pilot, lambda: store.queue_paused() is not None, what="paused from the palette")
        palette["Resume queue"].callback()
        await until(pilot, lambda: store.queue_paused() is None, what="resumed from the palette")


async def test_submit_a_job_file_from_configs(project, store, seeded, make_app):
    configs = project.project_dir / "configs"
    configs.mkdir()
    (configs / "probe.yaml").write_text("name: from-configs\nkind: probe\nsteps: 2\n")
    (configs / "broken.yaml").write_text("name: broken\nkind: probe\nstepz: 2\n")
    app = make_app()
    async with app.run_test(size=(120, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the file picker")
        assert [label for _, label in app.screen.choices] == ["broken.yaml", "probe.yaml"]
        await pilot.press("down", "enter")
        await until(pilot, lambda: store.find_job("from-configs"), what="the submitted job")
        await until(pilot, lambda: any(r.name == "from-configs" for r in app.main_screen.table.rows.values()))
        assert list((project.queue_dir / "accepted").glob("*-probe.yaml"))  # a copy kept, as `submit` does

        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the file picker")
        await pilot.press("enter")
        await until(pilot, lambda: any("stepz" in str(n.message) for n in app._notifications), what="the refusal")
        assert store.find_job("broken") is None


async def test_failed_job_view_shows_reason_and_traceback_tail(seeded, make_app):
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        await loaded(pilot)
        await select(pilot, seeded["unet"])
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.detail, what="the job view")
        text = plain(app.screen.failure.content)
        assert "CUDA out of memory" in text and "failed: exit code 1" in text
        assert 'File "torchbearer/jobs/train.py", line 88' in text
        await pilot.press("l")
        log = app.screen.logs[1]
        assert any("OutOfMemoryError" in line.text for line in log.lines)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen) and app.poller.focus_job is None


async def test_running_job_view_shows_bars_curves_log_and_outputs(project, seeded, make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        app.open_job(seeded["farseg"])
        await until(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.detail, what="the job view")
        screen = app.screen
        progress = plain(screen.progress.content)
        assert "epoch 3/40  step 52/128" in progress and "ETA 1h33m" in progress
        assert "lr 8.50e-04" in progress and "samples/s 143" in progress
        metric = screen.metric_plot
        assert metric._shown[0][0] == "val/iou"
        log = screen.logs[0]
        await until(pilot, lambda: log.lines, what="log lines")
        warnings = [line for line in log.lines if "polygons outside" in line.text]
        assert warnings and any(seg.style and seg.style.color for seg in warnings[0])  # highlighted
        assert screen.previews[0].pixels is not None  # the plot PNG, drawn


async def test_follows_a_live_job(project, store, daemon, make_app):
    """A real worker writes progress and metrics; the open job view follows them to the end."""
    app = make_app(clock=time.time)
    async with app.run_test(size=(120, 36)) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: app.queue_info and app.queue_info.daemon_alive, what="header: daemon up")
        assert "daemon up" in app.screen.query_one(HeaderBar).text
        write_job(project.queue_dir, "live.yaml", "name: live\nkind: probe\nsteps: 30\nstep_s: 0.12\n")
        await until(pilot, lambda: app.main_screen.table.rows, what="the job in the table")
        job_id = next(iter(app.main_screen.table.rows))
        app.open_job(job_id)
        screen = await until(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.ready and app.screen)
        plot = screen.metric_plot
        seen_progress: set[float] = set()

        def moving() -> bool:
            detail = screen.detail
            if detail and detail.job.state == JobState.RUNNING and detail.progress:
                seen_progress.add(detail.progress["done"])
            return len(seen_progress) >= 2 and plot._shown and len(plot._shown[0][1]) >= 3

        await until(pilot, moving, timeout=30, what="progress and the curve to move")
        first_points = len(plot._shown[0][1])
        await until(pilot, lambda: screen.detail.job.state == JobState.SUCCEEDED, timeout=30, what="success")
        await until(pilot, lambda: len(plot._shown[0][1]) == 30, what="every point of the curve")
        assert len(plot._shown[0][1]) > first_points
        assert "100.0%" in plain(screen.progress.content)
        table = app.main_screen.table
        await until(pilot, lambda: table.rows[job_id].state == JobState.SUCCEEDED, what="the table row")


async def test_morning_summary(seeded, make_app):
    app = make_app(show_summary=None)  # opens by itself: jobs ended since the dashboard was last opened
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        screen = await until(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen, what="summary")
        body = screen.body
        await until(pilot, lambda: "ended" in plain(body.content), what="the summary drawn")
        text = plain(body.content)
        assert "2 succeeded" in text and "1 failed" in text and "1 cancelled" in text
        assert "val/iou 0.6" in text  # fcn's best epoch
        assert "runs/2-fcn/best.ckpt" in text
        assert "CUDA out of memory" in text
        rows = [line.split()[1] for line in text.splitlines() if line.split()[:1] and line.split()[0].isdigit()][
            1:
        ]  # [0]: "6 ended: …"
        assert rows[:2] == ["unet", "orphan"] and rows[-2:] == ["prepare", "fcn"]  # failures (and why) first
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_two_dashboards_at_once(project, store, seeded, make_app):
    first, second = make_app(), make_app()
    async with first.run_test(size=(100, 30)) as one, second.run_test(size=(100, 30)) as two:
        await loaded(one)
        await loaded(two)
        await select(one, seeded["night-2"])
        await one.press("h")
        await until(two, lambda: second.main_screen.table.rows[seeded["night-2"]].state == "held", what="seen")


async def test_ten_thousand_jobs_update_only_what_changed(project, store, make_app, monkeypatch):
    from torchbearer.store import NewJob

    with monkeypatch.context() as patch:  # submitted a while ago (rows written in the last seconds are re-read)
        patch.setattr("torchbearer.store._now", lambda: time.time() - 600)
        ids = store.add_jobs(NewJob(name=f"job-{i}", kind="train", spec_given={}, spec={}) for i in range(10_000))
    app = make_app()
    updates = []
    async with app.run_test(size=(120, 30)) as pilot:
        original = app.apply

        def counting(update):
            updates.append(len(update.rows or ()))
            original(update)

        app.apply = counting
        await loaded(pilot)
        table = app.main_screen.table
        assert len(table.rows) == 10_000 and len(table.order) == 10_000
        updates.clear()
        store.add_progress(ids[5000], stage="training", done=1, total=4, unit="steps")
        await until(pilot, lambda: table.rows[ids[5000]].progress == 0.25, what="the changed row")
        assert max(updates) < 10  # read incrementally, not the 10 000 rows again
        table.set_filter(["queued"])
        table.set_sort("name", reverse=True)
        assert table.rows[table.order[0]].name == "job-9999"
        await pilot.press("end")
        assert table.cursor == 9_999
