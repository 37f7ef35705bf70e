"""The morning report: a night of succeeded, failed and cancelled jobs from a real daemon, listed correctly in
``reports/`` (Markdown and HTML); and the daemon's own report at ``TORCHBEARER_REPORT_AT``, sent with its file."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import tb
from tests.conftest import DaemonProcess, wait_for, wait_state, write_job
from tests.daemon.conftest import job_named, stop_daemon
from tests.daemon.test_notify import Receiver, _serve
from torchbearer import commands
from torchbearer.report import last_traceback_line
from torchbearer.settings import Settings
from torchbearer.store import Store

NIGHT = """\
defaults: {kind: probe, steps: 2}
jobs:
  - {name: fine}
  - {name: broken, action: raise, at_step: 1}
  - {name: endless, steps: 100000, step_s: 0.05}
"""


def _row(markdown: str, name: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {name} (#"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_report_lists_succeeded_failed_and_cancelled(project: Settings, store: Store, tolerant_daemon) -> None:
    write_job(project.queue_dir, "night.yaml", NIGHT)
    fine = wait_state(store, job_named(store, "fine").id, "succeeded")
    broken = wait_state(store, job_named(store, "broken").id, "failed")
    endless = wait_state(store, job_named(store, "endless").id, "running")
    commands.cancel(store, endless.id)
    wait_state(store, endless.id, "cancelled")

    result = tb("report", "--since", "1h")
    assert result.returncode == 0, result.stderr
    assert "3 jobs since" in result.stdout and "1 cancelled, 1 failed, 1 succeeded" in result.stdout
    reports = project.project_dir / "reports"
    markdown = next(reports.glob("report-*.md")).read_text()
    job, kind, state, duration, best, outputs, reason = _row(markdown, "fine")
    assert (job, kind, state) == (f"fine (#{fine.id})", "probe", "succeeded") and duration.endswith("s")
    assert best == "probe/value 0.5" and outputs == f"result: runs/{fine.id}-fine/result.txt" and reason == ""
    job, kind, state, _, best, outputs, reason = _row(markdown, "broken")
    assert state == "failed" and best == "probe/value 0" and outputs == ""
    assert reason == f"{broken.reason}" and "RuntimeError: probe broken failed on purpose" in reason
    _, _, state, _, _, _, reason = _row(markdown, "endless")
    assert state == "cancelled" and reason == "cancelled on request"
    assert "0.00 GPU-hours" in markdown  # a CPU slot holds no GPU
    page = next(reports.glob("report-*.html")).read_text()
    assert page.count("<tr class=") == 3 and '<tr class="failed">' in page and "broken (#" in page
    # the next report starts where this one ended: nothing new since
    assert "0 jobs since" in tb("report").stdout


def test_last_traceback_line() -> None:
    tail = 'Traceback (most recent call last):\n  File "x.py", line 3\n    raise KeyError("b")\nKeyError: \'b\'\n\n'
    assert last_traceback_line(tail) == "KeyError: 'b'"
    assert last_traceback_line("all fine\n") is None


@pytest.mark.slow  # up to a minute: the report's cron fires on the next whole minute
def test_daemon_sends_the_report_at_its_time(project: Settings, store: Store) -> None:
    receiver = _serve(Receiver())
    server = next(receiver)
    env = {"TORCHBEARER_REPORT_AT": "* * * * *", "TORCHBEARER_NOTIFY_URLS": f"json://127.0.0.1:{server.port}/r",
           "TORCHBEARER_NOTIFY_EVENTS": "report"}  # fmt: skip
    daemon = DaemonProcess(project, extra_env=env).start()
    try:
        write_job(project.queue_dir, "one.yaml", "name: fine\nkind: probe\nsteps: 1\n")
        wait_state(store, job_named(store, "fine").id, "succeeded")
        body = wait_for(lambda: server.requests and json.loads(server.requests[-1]["body"]), 90, what="the report")
    finally:
        stop_daemon(daemon)
        next(receiver, None)
    assert "morning report" in body["title"] and "| fine (#" in body["message"]
    assert next(a["filename"] for a in body["attachments"]).endswith(".html")
    assert list((project.project_dir / "reports").glob("report-*.html"))
