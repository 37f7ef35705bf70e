"""File locks between processes: every ``flock`` in torchbearer is taken here.

An ``flock`` is released by the kernel when its holder dies, so a crashed job or daemon never leaves a lock
behind. Users: the daemon's state and queue locks (``daemon/engine.py``), the scene locks of the data root
(``imagery/dataroot.py``), the shared connection slots of downloads (``imagery/http.py``) and the
build-once locks of stacked scenes and memory-mapped inputs (``imagery/cache.py``, ``ml/mapped.py``).
Standard library only: the daemon and ``status`` import it.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class LockWaitCancelled(RuntimeError):
    """A wait for a lock ended because its ``should_stop`` turned true."""


def try_lock(handle: IO | int) -> bool:
    """Take the exclusive lock on an open file (object or descriptor) if it is free; never waits."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open(path: Path) -> IO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+")  # the caller's ``with`` closes it


@contextmanager
def file_lock(
    path: Path,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_wait: Callable[[], None] | None = None,
    poll_s: float = 0.2,
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder) for the ``with`` block.

    Without ``should_stop`` it waits as long as it takes. With it, it polls every ``poll_s`` seconds and raises
    :class:`LockWaitCancelled` once ``should_stop()`` is true; ``on_wait`` is called once if it has to wait.
    """
    with _open(path) as handle:
        if should_stop is None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        else:
            waited = False
            while not try_lock(handle):
                if should_stop():
                    raise LockWaitCancelled(f"stopped while waiting for {path.name}")
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def any_lock(paths: Sequence[Path], *, should_stop: Callable[[], bool], poll_s: float = 0.05) -> Iterator[Path]:
    """Hold the first free lock of ``paths`` (a pool of slots) for the ``with`` block; yields its path.

    Polls every ``poll_s`` seconds while all are held; raises :class:`LockWaitCancelled` once ``should_stop()``.
    """
    while True:
        for path in paths:
            with _open(path) as handle:
                if not try_lock(handle):
                    continue
                try:
                    yield path
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                return
        if should_stop():
            raise LockWaitCancelled("stopped while waiting for a free slot")
        time.sleep(poll_s)
