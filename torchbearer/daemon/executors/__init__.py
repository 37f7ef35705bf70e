"""Where a worker process runs: on this machine (:mod:`.local`) or on a Slurm cluster (:mod:`.slurm`)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class SubmitLater(OSError):
    """The executor cannot start workers now (a cluster's controller out of reach): nothing was started, and the
    job waits in the queue (its reason: this message) until the executor's :meth:`unavailable` says go."""


class WorkerHandle(Protocol):
    """A started worker, as the supervisor sees it."""

    pid: int | None
    external_id: str | None

    def poll(self) -> int | None:
        """The exit code once it ended (negative: killed by that signal), else None."""

    def terminate(self) -> None:
        """Ask it to stop at a safe point (SIGTERM to its whole process group)."""

    def kill(self) -> None:
        """Stop it now (SIGKILL to its whole process group)."""


class Executor(Protocol):
    name: str

    def start(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        log_path: Path,
        cwd: Path,
        devices: int = 1,
        nodes: int | None = None,
    ) -> WorkerHandle:
        """Start ``argv`` with output appended to ``log_path``; ``devices``: the job's device slots (GPUs).

        ``nodes``: None for a job of one process; a number for a kind that trains in parallel (its spec has
        ``num_nodes``): one process per device slot on each of ``nodes`` nodes, where the executor can."""
