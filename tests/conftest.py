"""Fixtures shared by every test: a temporary project, its store, and a real daemon process on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from torchbearer.settings import Settings
from torchbearer.store import Job, Store

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


def wait_state(store: Store, job_id: int, states: str | set[str], timeout: float = 30.0) -> Job:
    """Wait until a job is in one of ``states``; returns it."""
    wanted = {states} if isinstance(states, str) else set(states)

    def reached() -> Job | None:
        job = store.job(job_id)
        return job if job is not None and job.state in wanted else None

    try:
        return wait_for(reached, timeout, what=f"job {job_id} to be {sorted(wanted)}")
    except AssertionError:
        job = store.job(job_id)
        raise AssertionError(
            f"job {job_id} is {job.state if job else 'missing'} ({job.reason if job else ''}), wanted {sorted(wanted)}"
        ) from None


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh project folder (queue/, runs/, data/, state/) whose settings every child process inherits."""
    root = tmp_path / "project"
    env = {
        "TORCHBEARER_PROJECT": str(root),
        "TORCHBEARER_PLUGINS": "tests.kinds",
        "TORCHBEARER_KILL_GRACE_S": "5",
        "TORCHBEARER_ENV_FILE": str(root / ".env"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    for key in ("TORCHBEARER_QUEUE", "TORCHBEARER_RUNS", "TORCHBEARER_DATA", "TORCHBEARER_STATE",
                "TORCHBEARER_DEVICES"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.load(root)
    settings.ensure_dirs()
    return settings


@pytest.fixture
def store(project: Settings) -> Iterator[Store]:
    store = Store(project.state_path)
    yield store
    store.close()


class DaemonProcess:
    """``torchbearer daemon`` as a real child process; its output goes to ``daemon.log`` in the project."""

    def __init__(self, settings: Settings, extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.extra_env = extra_env or {}
        self.log_path = settings.project_dir / "daemon.log"
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> DaemonProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "torchbearer", "daemon"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.extra_env},
            cwd=self.settings.project_dir, start_new_session=True,
        )  # fmt: skip
        log.close()
        if wait:
            store = Store(self.settings.state_path)
            wait_for(lambda: store.daemon_info()["alive"] or self.process.poll() is not None, 30, what="daemon up")
            store.close()
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: running jobs are interrupted at a safe point."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill9(self) -> None:
        """``kill -9`` the daemon (its workers get SIGTERM through PR_SET_PDEATHSIG)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def daemon(project: Settings) -> Iterator[DaemonProcess]:
    """A started daemon on the project; stopped (or killed) at the end of the test."""
    process = DaemonProcess(project).start()
    yield process
    try:
        process.stop(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.process.pid, signal.SIGKILL)


def write_job(queue_dir: Path, name: str, text: str) -> Path:
    """Drop a job file the way a user's ``cp`` would: write it, close it."""
    path = queue_dir / name
    path.write_text(text)
    return path
