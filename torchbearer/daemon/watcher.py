"""Watching ``queue/`` with watchdog, and telling when a dropped file is complete.

A file is handed over only once it is whole: inotify's close-after-write or a rename into the folder says so
at once; otherwise the file must keep the same size and mtime for ``settle_s``, or for ``open_settle_s`` while
inotify saw it written and not yet closed (a writer that pauses must not have a valid-looking prefix read). A
file that does not parse yet
while it changed within ``incomplete_grace_s`` is given more time (a slow writer), and refused only after.
Editors' swap and backup files, hidden files and anything not ``.yaml``/``.yml`` are ignored. A rescan every
``rescan_s`` catches what inotify missed (overflows) and files dropped while the daemon was down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("torchbearer.watcher")

JOB_SUFFIXES = (".yaml", ".yml")


def is_job_file_name(name: str) -> bool:
    """Whether a file name in the queue folder is a job file (not hidden, not an editor's temp file)."""
    return not name.startswith((".", "#", "~")) and not name.endswith("~") and name.endswith(JOB_SUFFIXES)


@dataclass
class _Seen:
    size: int = -1
    mtime_ns: int = -1
    changed_at: float = 0.0  # monotonic seconds of the last size/mtime change we noticed
    closed: bool = False  # closed after its last write (or renamed in): complete
    writing: bool = False  # inotify saw a write and no close since: a writer still holds it open


class QueueWatcher(FileSystemEventHandler):
    """Collects candidate job files; :meth:`ready` returns those that are complete."""

    def __init__(
        self,
        queue_dir: Path,
        *,
        settle_s: float = 1.0,
        open_settle_s: float = 60.0,
        incomplete_grace_s: float = 2.0,
        rescan_s: float = 2.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.queue_dir = queue_dir
        self.settle_s = settle_s
        self.open_settle_s = open_settle_s
        self.incomplete_grace_s = incomplete_grace_s
        self.rescan_s = rescan_s
        self.on_change = on_change or (lambda: None)
        self._seen: dict[Path, _Seen] = {}
        self._returned: set[Path] = set()  # put back by a failed ingest: complete, whatever inotify says of it
        self._lock = threading.Lock()
        self._observer: Observer | None = None
        self._last_scan = 0.0

    # -- watchdog callbacks (observer thread) ---------------------------------------------------------------

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        path = Path(event.dest_path if event.event_type == "moved" else event.src_path)
        if path.parent != self.queue_dir or not is_job_file_name(path.name):
            return
        with self._lock:
            seen = self._seen.setdefault(path, _Seen(changed_at=time.monotonic()))
            if path in self._returned and event.event_type in ("created", "moved"):
                # the rename back out of accepted/ shows as a creation here (a move from an unwatched folder)
                self._returned.discard(path)
                seen.closed, seen.writing, seen.size = True, False, -1
            elif event.event_type in ("closed", "moved"):
                seen.closed, seen.writing = True, False
                seen.size = -1  # the writes before this close are not news: ready() must not undo the close
            elif event.event_type in ("created", "modified"):
                seen.closed, seen.writing = False, True
                seen.changed_at = time.monotonic()
            elif event.event_type == "deleted":
                self._seen.pop(path, None)
        self.on_change()

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self._observer = Observer()
        self._observer.schedule(self, str(self.queue_dir), recursive=False)
        self._observer.daemon = True
        self._observer.start()
        self.rescan()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def rescan(self) -> None:
        """Add every job file in the folder we do not know yet (missed events, files from before start)."""
        self._last_scan = time.monotonic()
        try:
            names = [entry.name for entry in self.queue_dir.iterdir() if entry.is_file()]
        except OSError as exc:
            log.error("cannot list %s: %s", self.queue_dir, exc)
            return
        with self._lock:
            for name in names:
                if is_job_file_name(name):
                    self._seen.setdefault(self.queue_dir / name, _Seen(changed_at=time.monotonic()))

    # -- readiness ------------------------------------------------------------------------------------------

    def ready(self, parses: Callable[[Path], bool]) -> list[Path]:
        """Complete files, oldest first; ``parses(path)`` tells whether a file reads as a valid job file."""
        now = time.monotonic()
        if now - self._last_scan >= self.rescan_s:
            self.rescan()
        with self._lock:
            candidates = list(self._seen.items())
        complete: list[Path] = []
        for path, seen in candidates:
            try:
                stat = path.stat()
            except FileNotFoundError:
                with self._lock:
                    self._seen.pop(path, None)
                continue
            if not S_ISREG(stat.st_mode):  # reading a FIFO (or a device) would block the daemon forever
                log.warning("ignoring %s: not a regular file", path.name)
                with self._lock:
                    self._seen.pop(path, None)
                continue
            if (stat.st_size, stat.st_mtime_ns) != (seen.size, seen.mtime_ns):
                if seen.size >= 0:  # it changed since we last looked: a writer is still at it
                    seen.closed = False
                seen.size, seen.mtime_ns, seen.changed_at = stat.st_size, stat.st_mtime_ns, now
            quiet_s = now - seen.changed_at
            if not (seen.closed or quiet_s >= (self.open_settle_s if seen.writing else self.settle_s)):
                continue
            if quiet_s < self.incomplete_grace_s and not parses(path):
                continue  # maybe half-written: refuse only once it stayed invalid and unchanged a while
            complete.append(path)
        with self._lock:
            for path in complete:
                self._seen.pop(path, None)
        return sorted(complete, key=lambda p: (p.stat().st_mtime_ns if p.exists() else 0, p.name))

    def put_back(self, path: Path) -> None:
        """``path`` was handed out by :meth:`ready` but returned to the folder (the store refused it for now):
        take it again as complete, not as a file someone is writing (which waits ``open_settle_s``)."""
        with self._lock:
            self._returned.add(path)
            self._seen[path] = _Seen(changed_at=time.monotonic(), closed=True)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._seen)
