"""How the CLI and the dashboard write states, times, durations and sizes, so both read the same."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from torchbearer.store import JobState

#: Rich styles of job states, shared by ``status``, ``show`` and the dashboard.
STATE_STYLES = {
    JobState.QUEUED: "cyan",
    JobState.WAITING: "blue",
    JobState.HELD: "magenta",
    JobState.RUNNING: "bold yellow",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "bold red",
    JobState.CANCELLED: "dim",
    JobState.INTERRUPTED: "yellow",
    JobState.DEPENDENCY_FAILED: "red",
}


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; empty for None."""
    if seconds is None:
        return ""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_when(ts: float | None, fmt: str = "%m-%d %H:%M:%S") -> str:
    """A UNIX time (seconds) as local time; empty for None."""
    return datetime.fromtimestamp(ts).strftime(fmt) if ts else ""


def format_bytes(size: float | None) -> str:
    """``512 B``, ``3.4 MB``, ``1.2 GB`` (powers of 1024); empty for None."""
    if size is None:
        return ""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""  # unreachable: the loop returns at TB


def display_path(path: str | Path, root: Path) -> str:
    """A path relative to ``root`` (the project folder) when it lies inside it, else as given."""
    candidate = Path(path)
    try:
        return str(candidate.relative_to(root))
    except ValueError:
        return str(candidate)
