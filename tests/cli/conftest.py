"""Running the ``torchbearer`` command as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def tb(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``torchbearer ARGS…`` in a child process (wide terminal, so messages are not wrapped)."""
    return subprocess.run(
        [sys.executable, "-m", "torchbearer", *map(str, args)],
        capture_output=True, text=True, timeout=120, cwd=cwd,
        env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1", **(env or {})},
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
