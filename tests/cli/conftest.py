"""Running the ``torchbearer`` command: in this process (most commands) or as a real child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchbearer.cli import app

#: A wide terminal and no colour, so messages are neither wrapped nor full of escape codes.
TERMINAL = {"COLUMNS": "250", "NO_COLOR": "1"}


def tb(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``torchbearer ARGS…`` run in this process (fast); the result looks like :func:`tb_process`'s."""
    result = CliRunner(env={**TERMINAL, **(env or {})}).invoke(app, [str(a) for a in args], catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def tb_process(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``torchbearer ARGS…`` in a child process: for ``run``, which serves a queue and installs signal handlers."""
    return subprocess.run(
        [sys.executable, "-m", "torchbearer", *map(str, args)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **TERMINAL, **(env or {})},
    )  # fmt: skip


def flat(text: str) -> str:
    """Whitespace collapsed: what a message says, however the terminal wrapped it."""
    return " ".join(text.split())


@pytest.fixture
def night(tmp_path: Path) -> Path:
    """A valid two-job file (b after a) outside the queue folder."""
    path = tmp_path / "night.yaml"
    path.write_text("defaults: {kind: probe, steps: 2}\njobs:\n  - {name: a}\n  - {name: b, after: [a]}\n")
    return path
