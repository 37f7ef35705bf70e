"""The data root (``data/`` by default) that every source fills, and its per-scene locks::

products/<name>.SAFE/…      files fetched from Copernicus or extracted from a zip (only those a stack needs)
cache/<name>_<res>m.tif     stacked scenes (built by imagery/cache.py; Earth Search windows add _aoi<hash>)
locks/<name>.lock           one per product: two jobs never fetch or build the same scene at once
locks/connection-<i>.lock   the connection slots shared by every download (imagery/http.py)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from torchbearer.imagery.http import Report, TransferCancelled
from torchbearer.imagery.spec import ImagerySpec
from torchbearer.locks import LockWaitCancelled, file_lock

log = logging.getLogger(__name__)


def locks_dir(data_dir: Path) -> Path:
    """Where the scene locks and the connection slots live."""
    return data_dir / "locks"


@contextmanager
def scene_lock(data_dir: Path, key: str, should_stop: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Hold ``data_dir/locks/<key>.lock`` while a scene is fetched or stacked; raises
    :class:`~torchbearer.imagery.http.TransferCancelled` if ``should_stop`` turns true while another job holds it."""
    try:
        with file_lock(locks_dir(data_dir) / f"{key}.lock", should_stop=should_stop,
                       on_wait=lambda: log.info("another job is fetching %s: waiting for it", key)):  # fmt: skip
            yield
    except LockWaitCancelled:
        raise TransferCancelled(f"stopped while waiting for another job to fetch {key}") from None


def stack_safe(
    safe_dir: Path, spec: ImagerySpec, data_dir: Path, report: Report | None, *, streaming: bool = False
) -> Path:
    """Stack a SAFE folder's bands at the spec's resolution into ``data_dir/cache`` (imagery/cache.py);
    ``streaming``: return a :class:`~torchbearer.imagery.cache.StackBuild` not started yet where none is built."""
    from torchbearer.imagery import cache

    if streaming:
        return cache.start_stack(safe_dir, spec.resolution, data_dir / "cache", report=report)  # type: ignore[return-value]
    return cache.build_stack(safe_dir, spec.resolution, data_dir / "cache", report=report)


def cached_stack(stem: str, spec: ImagerySpec, data_dir: Path) -> Path | None:
    """The stack of product ``stem`` at the spec's resolution if the cache holds it already."""
    from torchbearer.imagery import cache

    path = cache.stack_path(data_dir / "cache", stem, spec.resolution)
    return path if path.is_file() else None
