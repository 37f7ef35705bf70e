"""Unattended running: ``daemon --detach`` returns once the daemon answers, ``stop`` stops it cleanly (the
running job saves and is re-queued, and resumes at the next start), ``service install`` writes a systemd unit."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.cli.conftest import tb, tb_process
from tests.conftest import wait_for, wait_state, write_job
from tests.daemon.conftest import completions, job_named
from torchbearer.service import pid_path, running_pid
from torchbearer.settings import Settings
from torchbearer.store import Store, pid_alive


def _stop_leftover(project: Settings) -> None:
    pid = running_pid(project)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


def test_detach_then_stop_requeues_the_running_job_which_resumes(project: Settings, store: Store) -> None:
    try:
        started = tb_process("daemon", "--detach")
        assert started.returncode == 0, started.stderr
        pid = int(pid_path(project).read_text())
        assert "daemon started" in started.stdout and store.daemon_info()["alive"] and store.daemon_info()["pid"] == pid
        assert tb_process("daemon", "--detach").returncode == 1  # one daemon per state database

        write_job(project.queue_dir, "long.yaml", "name: long\nkind: probe\nsteps: 40\nstep_s: 0.1\n")
        job = wait_state(store, job_named(store, "long").id, "running")
        wait_for(lambda: (p := store.latest_progress(job.id)) and p["done"] >= 3, what="a few steps done")
        stopped = tb_process("stop")
        assert stopped.returncode == 0 and f"daemon (pid {pid}) stopped" in stopped.stdout, stopped.stderr
        assert not pid_alive(pid) and not pid_path(project).exists()
        job = store.job(job.id)
        assert job.state == "interrupted" and store.attempts(job.id)[0]["outcome"] == "interrupted"
        saved = json.loads((Path(job.run_dir) / "probe-state.json").read_text())["done"]
        assert 3 <= saved < 40

        assert tb_process("daemon", "--detach").returncode == 0
        wait_state(store, job.id, "succeeded", timeout=60)
        first_step = min(row["step"] for row in store.metrics(job.id) if row["attempt"] == 2)
        assert first_step == saved + 1  # the second attempt went on where the first saved
        assert [line.split()[1] for line in completions(project)] == ["long"]
        assert tb_process("stop").returncode == 0
        assert "no daemon is running" in tb_process("stop").stdout
    finally:
        _stop_leftover(project)


def test_service_install_writes_a_user_unit(project: Settings, tmp_path: Path) -> None:
    config = tmp_path / "config"
    result = tb("service", "install", env={"XDG_CONFIG_HOME": str(config)})
    assert result.returncode == 0, result.stderr
    unit = config / "systemd" / "user" / "torchbearer-project.service"
    text = unit.read_text()
    assert f"WorkingDirectory={project.project_dir}" in text and "-m torchbearer daemon" in text
    assert f'Environment="TORCHBEARER_STATE={project.state_path}"' in text and "KillMode=mixed" in text
    assert "WantedBy=default.target" in text
    assert "loginctl enable-linger" in result.stdout and "systemctl --user enable --now" in result.stdout
