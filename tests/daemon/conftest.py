"""Daemon-test helpers: a daemon tuned for failure tests, and finding jobs by name."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import DaemonProcess, wait_for
from torchbearer.settings import Settings
from torchbearer.store import Job, Store


@pytest.fixture
def tolerant_daemon(project: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonProcess]:
    """A daemon with a 1 s kill grace whose crash-loop guard never trips (failure tests fail jobs on purpose)."""
    monkeypatch.setenv("TORCHBEARER_KILL_GRACE_S", "1")
    monkeypatch.setenv("TORCHBEARER_CRASH_LOOP_COUNT", "1000")
    process = DaemonProcess(project).start()
    yield process
    stop_daemon(process)


def stop_daemon(process: DaemonProcess) -> None:
    try:
        process.stop(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.process.pid, signal.SIGKILL)


def job_named(store: Store, name: str, timeout: float = 15.0) -> Job:
    """The newest job called ``name``, waiting until it has been ingested."""
    return wait_for(lambda: store.find_job(name), timeout, what=f"a job named {name!r}")


def probe(name: str, **fields: object) -> str:
    """The YAML of a single probe job."""
    lines = [f"name: {name}", "kind: probe"] + [f"{key}: {value}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


def completions(settings: Settings) -> list[str]:
    """Lines of completions.log: one per probe job that succeeded (``<id> <name> <pid>``)."""
    path = settings.project_dir / "completions.log"
    return path.read_text().splitlines() if path.exists() else []


def logged(process: DaemonProcess) -> str:
    """The daemon's log with whitespace collapsed (rich wraps long lines)."""
    return " ".join(process.log().split())
