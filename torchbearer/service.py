"""Running the daemon unattended: detached (``daemon --detach``), stopped cleanly (``stop``), or as a systemd
user service (``service install``).

A detached daemon runs in its own session with its output in ``state/daemon.log`` and its pid in
``state/daemon.pid``; ``--detach`` returns once the daemon's heartbeat is in the store (it answers), or fails
with the end of its log. ``stop`` sends it SIGTERM: running jobs are stopped at a safe point (training saves
``last.ckpt``) and recorded ``interrupted``, so they run again, resuming, at the next start; it waits up to the
kill grace (plus a margin for the daemon's own exit).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from torchbearer.settings import Settings
from torchbearer.store import Store, pid_alive

#: Seconds ``--detach`` waits for the daemon's first heartbeat.
START_TIMEOUT_S = 60.0
#: Seconds ``stop`` waits beyond the kill grace (the daemon's own shutdown: notifications, the store).
STOP_MARGIN_S = 20.0


class ServiceError(RuntimeError):
    """The daemon could not be started or stopped; the message says why and where to look."""


def pid_path(settings: Settings) -> Path:
    return settings.state_path.parent / "daemon.pid"


def log_path(settings: Settings) -> Path:
    return settings.state_path.parent / "daemon.log"


def running_pid(settings: Settings) -> int | None:
    """The pid of the live daemon on this state database (its store record, else the pid file)."""
    info = Store(settings.state_path).daemon_info()
    if info["alive"]:
        return int(info["pid"])
    try:
        pid = int(pid_path(settings).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and _is_daemon(pid) else None


def _is_daemon(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"torchbearer" in command and b"daemon" in command


def detach(settings: Settings, args: list[str] | None = None, *, timeout_s: float = START_TIMEOUT_S) -> int:
    """Start ``torchbearer daemon ARGS`` in the background; returns its pid once it answers."""
    settings.ensure_dirs()
    pid = running_pid(settings)
    if pid is not None:
        raise ServiceError(f"a daemon already serves {settings.state_path} (pid {pid}); `torchbearer stop` it first")
    with open(log_path(settings), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "torchbearer", "daemon", *(args or [])],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **settings.as_environ()}, cwd=settings.project_dir,
        )  # fmt: skip
    pid_path(settings).write_text(f"{process.pid}\n")
    store = Store(settings.state_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = store.daemon_info()
        if info["alive"] and int(info["pid"]) == process.pid:
            return process.pid
        if process.poll() is not None:
            break
        time.sleep(0.2)
    else:
        process.terminate()
    pid_path(settings).unlink(missing_ok=True)
    tail = "\n".join(log_path(settings).read_text(errors="replace").splitlines()[-15:])
    raise ServiceError(f"the daemon did not come up (exit {process.poll()}); the end of {log_path(settings)}:\n{tail}")


def stop(settings: Settings, *, timeout_s: float | None = None) -> int | None:
    """SIGTERM the daemon and wait for it to exit (running jobs save and are re-queued); returns its pid.

    None when no daemon runs. Raises :class:`ServiceError` if it is still alive after ``timeout_s`` (default: the
    kill grace plus :data:`STOP_MARGIN_S`).
    """
    pid = running_pid(settings)
    if pid is None:
        pid_path(settings).unlink(missing_ok=True)
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + (settings.kill_grace_s + STOP_MARGIN_S if timeout_s is None else timeout_s)
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise ServiceError(f"the daemon (pid {pid}) is still stopping; see {log_path(settings)}")
        time.sleep(0.1)
    pid_path(settings).unlink(missing_ok=True)
    return pid


def unit_name(settings: Settings) -> str:
    return f"torchbearer-{settings.project_dir.name or 'project'}.service"


def unit_text(settings: Settings) -> str:
    """A systemd user unit running this project's daemon (SIGTERM to the daemon only: it stops the jobs)."""
    env = "".join(f'Environment="{key}={value}"\n' for key, value in sorted(settings.as_environ().items()))
    return f"""\
[Unit]
Description=torchbearer job queue daemon ({settings.project_dir})
After=network-online.target

[Service]
Type=simple
WorkingDirectory={settings.project_dir}
{env}ExecStart={sys.executable} -m torchbearer daemon
# SIGTERM to the daemon alone: it stops each job at a safe point (training saves), waits the kill grace, exits.
KillMode=mixed
TimeoutStopSec={int(settings.kill_grace_s + STOP_MARGIN_S)}
Restart=on-failure
RestartSec=10

[Install]
WantedBy=default.target
"""


def install_unit(settings: Settings, config_home: Path | None = None) -> Path:
    """Write the unit into ``$XDG_CONFIG_HOME/systemd/user/`` (``~/.config``); returns its path."""
    home = config_home or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = home / "systemd" / "user" / unit_name(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(unit_text(settings), encoding="utf-8")
    return path
