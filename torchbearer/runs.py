"""Run folders: where a job's files live, its log's readers, and the files of the worker contract.

A job runs in ``runs/<id>-<name>/`` (:func:`run_dir_of`, the one place that path is built). Besides what the
kind writes there, the folder holds the contract between the daemon (the one writer of the state store) and
the worker (which never opens it):

| file | written by | what |
|---|---|---|
| ``log.txt`` | the worker (stdout / stderr) | the job's log; :func:`read_tail` and :class:`LogFollower` read it |
| ``job.json`` | the daemon, before each attempt | the resolved job, its attempt, the jobs it names |
| ``events-<attempt>.jsonl`` | the worker, appending | JSON lines: progress, metrics, outputs, log markers, trials |
| ``outcome-<attempt>.json`` | the worker, atomically at its end | ``{"outcome", "exit_code", "reason", "time"}`` |
| ``children.json`` | the daemon, about once a second | the jobs a controller (a sweep) spawned, for it to read |
| ``cancel-requested`` | the daemon, before its SIGTERM | the stop is a cancel, not a daemon stop |

The daemon reads the events file from the byte offset it recorded for the attempt (``attempts.events_offset``,
advanced in the same transaction as the rows it wrote), so a restarted daemon neither loses nor repeats an
event; a last line without its newline is being written and is left for the next read. Once the attempt has
ended and every line is in the store, the daemon removes the events file.

Nothing here imports the store: the worker side uses this module as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

LOG_FILE = "log.txt"
JOB_FILE = "job.json"
CHILDREN_FILE = "children.json"
CANCEL_FILE = "cancel-requested"
#: Lines of the log kept with a failed job (the end of its traceback).
TAIL_LINES = 40

#: Event types a worker appends (the ``type`` key, written first on each line so the daemon can tell
#: progress lines, of which it keeps only the latest, without parsing them).
PROGRESS, METRICS, OUTPUT, LOG, SUBMIT = "progress", "metrics", "output", "log", "submit"
#: A training resumed from a checkpoint (``epoch``, ``step`` it goes on from): what earlier attempts logged after
#: that step is superseded (the store drops it, so curves and bests are the run's that holds the weights).
RESUMED = "resumed"


# -- paths --------------------------------------------------------------------------------------------------


def run_dir_of(job: Any, runs_dir: Path) -> Path:
    """A job's run folder: the one it ran in (``job.run_dir``), else ``runs_dir/<id>-<name>``."""
    return Path(job.run_dir) if job.run_dir else runs_dir / f"{job.id}-{job.name}"


def log_path_of(job: Any, runs_dir: Path) -> Path:
    """Where a job's worker writes its log (``runs/<id>-<name>/log.txt``), started or not."""
    return run_dir_of(job, runs_dir) / LOG_FILE


def events_path(run_dir: Path, attempt: int) -> Path:
    return run_dir / f"events-{attempt}.jsonl"


def outcome_path(run_dir: Path, attempt: int) -> Path:
    return run_dir / f"outcome-{attempt}.json"


# -- small atomic JSON files --------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` whole or not at all: a temp file beside it, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file, default=str)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if it is missing or not (yet) valid."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_job_file(run_dir: Path, job: dict[str, Any]) -> None:
    """The daemon's word to the worker: ``job`` holds ``id``, ``name``, ``kind``, ``spec``, ``attempt``,
    ``run_dir`` and ``refs`` (the jobs its spec names, by reference, with their state, spec, outputs and,
    for curves, metrics)."""
    write_json_atomic(run_dir / JOB_FILE, job)


def read_job_file(run_dir: Path) -> dict[str, Any] | None:
    return read_json(run_dir / JOB_FILE)


def write_outcome(run_dir: Path, attempt: int, outcome: str, exit_code: int, reason: str | None = None) -> None:
    """How the attempt ended, written atomically before the worker exits."""
    record = {"outcome": outcome, "exit_code": exit_code, "reason": reason, "time": time.time()}
    write_json_atomic(outcome_path(run_dir, attempt), record)


def read_outcome(run_dir: Path, attempt: int) -> dict[str, Any] | None:
    """The attempt's outcome record, or None if the worker wrote none."""
    record = read_json(outcome_path(run_dir, attempt))
    return record if isinstance(record, dict) and record.get("outcome") else None


def job_refs(spec: dict[str, Any]) -> set[str | int]:
    """The jobs a spec names: every ``job: <ref>`` (a model, explain's ``patches``) and plot's ``curves``."""
    found: set[str | int] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("job", "curves") and isinstance(item, str | int) and not isinstance(item, bool):
                    found.add(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(spec)
    return found


# -- events: the worker's side ------------------------------------------------------------------------------


class EventWriter:
    """Appends events to ``events-<attempt>.jsonl``: one ``write`` of a whole line each, flushed, so a reader
    sees complete lines (or a last one still without its newline). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(path, "ab", buffering=0)  # noqa: SIM115 - open for the worker's life
        self._lock = threading.Lock()

    def append(self, event_type: str, /, **fields: Any) -> None:
        if event_type == PROGRESS:  # stage and whether it ends the stage first: the daemon coalesces by them
            done, total = fields.get("done"), fields.get("total")
            final = done is not None and total is not None and done >= total
            fields = {"stage": fields.pop("stage", None), "final": final, **fields}
        line = json.dumps({"type": event_type, **fields, "t": time.time()}, default=str) + "\n"
        with self._lock:
            self._file.write(line.encode())

    def close(self) -> None:
        self._file.close()


# -- events: the daemon's side ------------------------------------------------------------------------------


@dataclass
class EventBatch:
    """Complete events read from an offset: ``events`` in order (progress coalesced to the latest of each
    run of one stage, its end kept), ``end`` the offset after the last complete line, ``count`` the lines read."""

    events: list[dict[str, Any]]
    end: int
    count: int


#: The start of a progress line up to its ``final`` flag (:meth:`EventWriter.append` writes that order).
_PROGRESS_HEAD = re.compile(rb'\{"type": "progress", "stage": (?:null|"(?:[^"\\]|\\.)*"), "final": ')


def read_events(path: Path, offset: int, *, max_bytes: int = 8 << 20) -> EventBatch:
    """The complete lines of an events file from ``offset`` (at most about ``max_bytes``).

    A progress event followed at once by another of the same stage is dropped unparsed (it would only be
    overwritten on the job's row), unless it ends its stage (``done >= total``): every stage a job went
    through, and the end of each, stay in the progress history. A torn last line waits; a line that is not
    JSON is skipped.
    """
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read(max_bytes)
    except OSError:
        return EventBatch([], offset, 0)
    end = data.rfind(b"\n")
    if end < 0:
        return EventBatch([], offset, 0)
    lines = data[: end + 1].split(b"\n")[:-1]
    events: list[dict[str, Any]] = []
    for line, after in zip(lines, [*lines[1:], b""], strict=True):
        head = _PROGRESS_HEAD.match(line)
        if head and line.startswith(b"false", head.end()) and after.startswith(head.group(0)):
            continue  # the next event is of the same stage and says more
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return EventBatch(events, offset + end + 1, len(lines))


# -- logs ---------------------------------------------------------------------------------------------------


def read_tail(path: Path, lines: int = TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a text file, reading at most ``max_bytes`` from its end."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - max_bytes))
            data = file.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


class LogFollower:
    """Follows a growing text file without reading it whole: the end first, then what was appended.

    A file cut back (the worker's log cap) or replaced starts over from its end. Reads at most
    ``max_bytes`` a time, so a burst of output costs a bounded read and keeps the newest lines.
    """

    def __init__(self, path: Path, *, max_bytes: int = 64 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._offset: int | None = None
        self._partial = b""

    def read_new(self) -> tuple[list[str], bool]:
        """``(new complete lines, reset)``; ``reset`` means they replace everything read before."""
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return [], False
        reset = self._offset is None or size < self._offset
        start = 0 if reset else self._offset
        cut_first = False
        if size - start > self.max_bytes:  # first look at a long log, or a burst: keep the newest lines
            start, cut_first, reset = size - self.max_bytes, True, True
        if reset:
            self._partial = b""
        try:
            with open(self.path, "rb") as file:
                file.seek(start)
                data = self._partial + file.read(size - start)
        except OSError:
            return [], False
        self._offset = size
        *lines, self._partial = data.split(b"\n")  # the rest is incomplete until the writer ends the line
        if cut_first:
            lines = lines[1:]
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines], reset


def follow(
    path: Path, done: Callable[[], bool], *, lines: int = 50, interval_s: float = 0.5, out: IO[str] | None = None
) -> None:
    """Print the last ``lines`` lines of a log, then what is appended, until ``done()`` says the job ended and
    nothing new came (``torchbearer logs -f``)."""
    out = out or sys.stdout
    follower = LogFollower(path, max_bytes=max(64 * 1024, lines * 400))
    new, _ = follower.read_new()
    for line in new[-lines:]:
        out.write(line + "\n")
    out.flush()
    while True:
        time.sleep(interval_s)
        new, _ = follower.read_new()
        for line in new:
            out.write(line + "\n")
        out.flush()
        if not new and done():
            break
