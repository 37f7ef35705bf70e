"""Workers as child processes of the daemon, each in its own process group (session).

The group makes cancel reach every process a job started (DataLoader workers included). Linux's
``PR_SET_PDEATHSIG`` sends the worker SIGTERM if the daemon dies, even by ``kill -9``: the worker then saves
at its next safe point and exits, and the restarted daemon re-runs the job from there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """Runs in the child between fork and exec: new session, and SIGTERM when the parent dies."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the daemon's recovery handles orphans
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalWorker:
    """A worker started by :class:`LocalExecutor`."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.pid: int | None = process.pid
        self.external_id: str | None = None

    def poll(self) -> int | None:
        return self.process.poll()

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def terminate(self) -> None:
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)


class LocalExecutor:
    """Starts workers on this machine."""

    name = "local"

    def start(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        log_path: Path,
        cwd: Path,
        devices: int = 1,
        nodes: int | None = None,
    ) -> LocalWorker:
        """Start ``argv`` here, as one process; its GPUs are already named in ``env`` (``CUDA_VISIBLE_DEVICES``),
        so ``devices`` is not needed. A job spread over several ``nodes`` is refused: that needs Slurm."""
        if nodes is not None and nodes > 1:
            raise OSError(f"num_nodes: {nodes} needs the Slurm executor (TORCHBEARER_EXECUTOR=slurm); "
                          "the local executor runs a job on this machine only")  # fmt: skip
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:  # O_APPEND: the log can be cut back while the child writes
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                preexec_fn=_child_setup,
                close_fds=True,
            )
        return LocalWorker(process)


def signal_process_group(pid: int, signum: int) -> bool:
    """Signal the process group led by ``pid``; False if it is gone."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True
