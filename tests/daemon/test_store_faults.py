"""The state database's faults: damaged or read-only at start gives a clean ``error:`` from ``torchbearer daemon``
saying what to do; a database that refuses writes while the daemon runs (a real file system that filled up)
pauses starting jobs, keeps the running worker, and the job finishes once the store takes writes again.

The read-only and full-disk cases mount a small tmpfs (root only; skipped elsewhere). A tmpfs cannot be
remounted read-only while SQLite holds its files open for writing (EBUSY), so the mid-run fault is a full disk:
SQLite's ``database or disk is full`` takes the same path as ``attempt to write a readonly database``.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import flat, tb_process
from tests.conftest import DaemonProcess, wait_for, wait_state, write_job
from tests.daemon.conftest import completions, job_named, logged, probe, stop_daemon
from torchbearer import runs
from torchbearer.settings import Settings
from torchbearer.store import NewJob, Store, is_transient


def _filled_database(path: Path, jobs: int = 300) -> Path:
    store = Store(path)
    store.add_jobs(NewJob(f"job-{i}", "probe", {"note": "x" * 200}, {"note": "x" * 200}) for i in range(jobs))
    store.close()  # the last connection checkpoints and removes the -wal file
    assert not path.with_name(path.name + "-wal").exists()
    return path


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 3]))
    elif how == "bad header":
        data[:16] = b"NOT SQLITE HERE!"
        path.write_bytes(bytes(data))
    else:  # bad pages: garbage over pages 3 to 5 (4096-byte pages), the header left sound
        data[2 * 4096 : 5 * 4096] = os.urandom(3 * 4096)
        path.write_bytes(bytes(data))


def _daemon_error(project: Settings, *command: str | Path) -> str:
    result = tb_process(*(command or ["daemon"]), env={"TORCHBEARER_PROJECT": str(project.project_dir)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    return flat(result.stderr)


@pytest.mark.parametrize("how", ["truncated", "bad header", "bad pages"])
def test_a_damaged_database_gives_a_clean_error_from_daemon(project, how):
    _damage(_filled_database(project.state_path), how)
    error = _daemon_error(project)
    assert error.startswith(f"error: {project.state_path} is not a usable SQLite database"), error
    assert f"mv {project.state_path} {project.state_path}.broken" in error


def test_a_damaged_database_gives_a_clean_error_from_run_and_status_too(project, tmp_path):
    _damage(_filled_database(project.state_path), "bad pages")  # opens, but fails the daemon's check
    job = tmp_path / "one.yaml"
    job.write_text("name: one\nkind: probe\n")
    for command in (["run", job], ["status"]):
        result = tb_process(*command, env={"TORCHBEARER_PROJECT": str(project.project_dir)})
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "is not a usable SQLite database" in flat(result.stderr)


def test_the_damaged_database_error_names_the_migration_backup(project):
    _filled_database(project.state_path)
    backup = project.state_path.with_name(project.state_path.name + ".bak-v1")
    backup.write_bytes(project.state_path.read_bytes())
    _damage(project.state_path, "bad header")
    assert f"restore the copy the last schema upgrade kept ({backup})" in _daemon_error(project)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted at the end (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not permitted here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True, capture_output=True)


@pytest.mark.parametrize("existing", [True, False], ids=["database", "empty folder"])
def test_a_read_only_state_folder_says_read_only(project, tmpfs, existing):
    state = tmpfs / "state" / "torchbearer.db"
    state.parent.mkdir()
    if existing:
        _filled_database(state, jobs=3)
    _remount(tmpfs, "ro")
    result = tb_process("--state", state, "daemon", env={"TORCHBEARER_PROJECT": str(project.project_dir)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    error = flat(result.stderr)
    assert f"error: {state.parent} is read-only" in error, error
    assert "TORCHBEARER_STATE" in error and "not a usable" not in error


def _fill(mount: Path) -> Path:
    """Fill the file system to the last byte; returns the filler file (delete it to make room again)."""
    filler = mount / "filler"
    chunk = b"\0" * (64 * 1024)
    with open(filler, "wb", buffering=0) as file:
        while True:
            try:
                file.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                chunk = chunk[: len(chunk) // 2]
                if not chunk:
                    return filler


def test_a_store_that_refuses_writes_mid_run_pauses_and_the_job_still_finishes(project, tmpfs, monkeypatch):
    state = tmpfs / "torchbearer.db"
    monkeypatch.setenv("TORCHBEARER_STATE", str(state))
    settings = Settings.load(project.project_dir)
    store = Store(state)
    daemon = DaemonProcess(settings).start()
    try:
        write_job(settings.queue_dir, "long.yaml", probe("long", steps=40, step_s=0.1))
        job = wait_state(store, job_named(store, "long").id, "running")
        wait_for(lambda: ((store.latest_progress(job.id) or {}).get("step") or 0) >= 3, 30, what="step 3")
        # every later commit must grow the WAL file: empty it, then take the last free byte
        wait_for(lambda: store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0, 10)
        filler = _fill(tmpfs)
        wait_for(lambda: "refuses writes" in logged(daemon), 30, what="the daemon to log the fault")
        wait_for(lambda: completions(settings), 60, what="the worker to finish its steps meanwhile")
        running = store.job(job.id)
        # the worker never needed the store: its outcome waits in its run folder until the daemon can write
        assert running.state == "running"
        wait_for(lambda: runs.read_outcome(Path(running.run_dir), 1), 30, what="the worker's outcome file")
        assert daemon.process.poll() is None
        write_job(settings.queue_dir, "later.yaml", probe("later"))  # nothing starts while the store refuses
        filler.unlink()
        done = wait_state(store, job.id, "succeeded", timeout=60)
        assert done.attempts == 1
        wait_state(store, job_named(store, "later").id, "succeeded", timeout=60)
        assert [line.split()[1] for line in completions(settings)] == ["long", "later"]
        assert store.outputs(job.id, "result")  # recorded while refused, written later
        assert "writable again" in logged(daemon) and daemon.process.poll() is None
    finally:
        stop_daemon(daemon)
        store.close()


def test_real_refused_writes_are_transient_and_damage_is_not(tmp_path):
    path = _filled_database(tmp_path / "state.db")
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as refused:
        read_only.execute("UPDATE jobs SET priority = 1")
    read_only.close()
    assert is_transient(refused.value)  # "attempt to write a readonly database": waited out
    _damage(path, "bad pages")
    with pytest.raises(sqlite3.DatabaseError) as damaged:
        sqlite3.connect(path).execute("PRAGMA quick_check").fetchall()
    assert not is_transient(damaged.value)  # "database disk image is malformed": an error with what to do
