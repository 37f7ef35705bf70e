"""Scenes on disk, not in memory: an uncompressed, memory-mapped copy of a stack's DN for training.

Training reads random patches from every scene many times; decoding the stack's ZSTD tiles each time is slow
and holding every scene decoded in memory grows with the number of scenes (a 10 m tile is about 1 GB). So
each stack gets, once, a raw ``.npy`` copy beside the other cache files (``<cache>/mapped/``):

- ``<stack stem>.<key>.dn.npy``: uint16 DN, bands × rows × columns, every band of the stack in file order;
- ``<stack stem>.<key>.nodata.npy``: bool, rows × columns, DN 0 in some band (no data).

``key`` is the stack's size and modification time (ns) plus a hash of its absolute path, so a stack rebuilt
or replaced gets new files (older ones of the same stem are removed when the new ones are made). They are
built under an flock, written as ``.part`` and renamed, as the stacks are (``imagery/cache.py``), with a
``<stem>.<key>.source.json`` naming the stack: whenever a copy is opened, :func:`prune_mapped` removes the
copies in the folder whose stack is gone or has changed since, and ``.part`` files a day old (a build that
died), so copies of stacks no longer there do not pile up (a 10 m tile's is 1.3 GB).

They are opened with ``np.load(mmap_mode="r")``: forked DataLoader workers share the operating system's page
cache, and :func:`release` drops the pages a process has mapped from its resident set (they stay cached);
:class:`PageBudget` calls it once the pages mapped since the last release could exceed :data:`MAPPED_BUDGET`,
so a job's resident memory stays flat in the number and size of its scenes without faulting a small scene's
pages in again after every batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from torchbearer.locks import file_lock

log = logging.getLogger(__name__)

#: Rows of the stack read at a time when the raw copy is built (bounded memory: rows × columns × bands).
BUILD_ROWS = 512
#: Seconds after which a ``.part`` file is taken for the leftover of a build that died (a 10 m tile's copy
#: takes minutes).
PART_AGE_S = 24 * 3600.0


def _key(stack: Path) -> str:
    status = stack.stat()
    where = hashlib.sha1(str(stack.resolve()).encode()).hexdigest()[:10]
    return f"{status.st_size}-{status.st_mtime_ns}-{where}"


def mapped_paths(stack: Path, cache_dir: Path) -> tuple[Path, Path]:
    """The DN and no-data files of ``stack`` under ``cache_dir`` (for its current size and time)."""
    stem = f"{Path(stack).stem}.{_key(Path(stack))}"
    return Path(cache_dir) / f"{stem}.dn.npy", Path(cache_dir) / f"{stem}.nodata.npy"


def build_mapped(stack: Path, cache_dir: Path) -> tuple[Path, Path]:
    """Write the raw DN and no-data copies of ``stack`` (once); returns their paths."""
    import rasterio
    from rasterio.windows import Window

    dn_path, nodata_path = mapped_paths(stack, cache_dir)
    if dn_path.is_file() and nodata_path.is_file():
        return dn_path, nodata_path
    with file_lock(dn_path.with_name(dn_path.name + ".lock")):
        if dn_path.is_file() and nodata_path.is_file():  # another process made them while we waited
            return dn_path, nodata_path
        parts = [p.with_name(f"{p.name}.{os.getpid()}.part") for p in (dn_path, nodata_path)]
        try:
            with rasterio.open(stack) as ds:
                dn = np.lib.format.open_memmap(parts[0], "w+", np.uint16, (ds.count, ds.height, ds.width))
                nodata = np.lib.format.open_memmap(parts[1], "w+", np.bool_, (ds.height, ds.width))
                for row in range(0, ds.height, BUILD_ROWS):
                    rows = min(BUILD_ROWS, ds.height - row)
                    block = ds.read(window=Window(0, row, ds.width, rows))
                    dn[:, row : row + rows] = block
                    nodata[row : row + rows] = (block == 0).any(axis=0)
                dn.flush()
                nodata.flush()
                del dn, nodata
            for part, path in zip(parts, (dn_path, nodata_path), strict=True):
                part.replace(path)
            _source_record(dn_path).write_text(json.dumps({"stack": str(Path(stack).resolve())}))
        finally:
            for part in parts:
                part.unlink(missing_ok=True)
        _remove_stale(Path(stack), dn_path, nodata_path)
    log.info("%s: raw copy for training in %s", Path(stack).name, dn_path.parent)
    return dn_path, nodata_path


def _source_record(dn_path: Path) -> Path:
    """The record of which stack a raw copy was made from (``<stem>.<key>.source.json``)."""
    return dn_path.with_name(dn_path.name.removesuffix(".dn.npy") + ".source.json")


def _remove_stale(stack: Path, *current: Path) -> None:
    """Raw copies of an earlier version of the same stack (rebuilt or replaced since)."""
    where = current[0].name.split(".")[-3].rsplit("-", 1)[-1]
    for old in current[0].parent.glob(f"{stack.stem}.*.npy"):
        if old not in current and old.name.split(".")[-3].endswith(where):
            old.unlink(missing_ok=True)
            _source_record(old).unlink(missing_ok=True)


def prune_mapped(cache_dir: Path, part_age_s: float = PART_AGE_S) -> list[Path]:
    """Remove the raw copies under ``cache_dir`` whose stack is gone or changed since (its size or time no
    longer match the copy's key), and ``.part`` files of builds that died more than ``part_age_s`` ago.
    Copies in use elsewhere stay readable (a mapped file outlives its name). Returns what was removed.

    A copy whose ``.source.json`` record is missing (made before it was written) is kept: a rebuild of its
    stack replaces it."""
    removed: list[Path] = []
    now = time.time()
    for record in Path(cache_dir).glob("*.source.json"):
        try:
            stack = Path(json.loads(record.read_text())["stack"])
            key = record.name.removesuffix(".source.json").rsplit(".", 1)[1]
        except (OSError, ValueError, KeyError, IndexError):
            continue
        if stack.is_file() and _key(stack) == key:
            continue
        stem = record.name.removesuffix(".source.json")
        names = (f"{stem}.dn.npy", f"{stem}.nodata.npy", f"{stem}.dn.npy.lock", record.name)
        for path in (record.with_name(name) for name in names):
            if path.exists():
                path.unlink(missing_ok=True)
                removed.append(path)
    for part in Path(cache_dir).glob("*.part"):
        try:
            if now - part.stat().st_mtime > part_age_s:
                part.unlink(missing_ok=True)
                removed.append(part)
        except FileNotFoundError:
            continue
    if removed:
        log.info("raw copies for training: removed %d stale files in %s", len(removed), cache_dir)
    return removed


def open_mapped(stack: Path, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(DN bands × rows × columns uint16, no data rows × columns bool), memory-mapped read-only."""
    dn_path, nodata_path = build_mapped(stack, cache_dir)
    arrays = np.load(dn_path, mmap_mode="r"), np.load(nodata_path, mmap_mode="r")
    prune_mapped(cache_dir)
    return arrays


def save_mapped(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` written to ``path`` (``.npy``) and opened again memory-mapped, read-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    with open(part, "wb") as handle:  # a file object: np.save would append .npy to the name
        np.save(handle, array, allow_pickle=False)
    part.replace(path)
    return np.load(path, mmap_mode="r")


#: Bytes of memory-mapped pages a process may hold in its resident set between two releases (per process: each
#: DataLoader worker has its own). A scene smaller than this stays mapped (no page is faulted in twice); more,
#: or bigger, scenes are released in bulk once the pages their patches may have mapped could exceed it.
MAPPED_BUDGET = 96 * 2**20
#: The kernel maps pages around a faulting one (``fault_around_bytes``, 64 KiB by default): counted on each side.
FAULT_AROUND = 64 * 2**10


def window_span(array: np.ndarray, rows: int) -> int:
    """Bytes of ``array`` (… × rows × columns, C order) that reading a window ``rows`` high may map: every page
    of the rows' span in each leading plane (a patch's rows are usually closer than a page apart), plus the
    fault-around on either side; at most the array."""
    planes = int(np.prod(array.shape[:-2], dtype=np.int64))
    row_bytes = array.shape[-1] * array.itemsize
    return min(array.nbytes, planes * (min(rows, array.shape[-2]) * row_bytes + 2 * FAULT_AROUND))


class PageBudget:
    """Releases memory-mapped sources in bulk once the pages this process may have mapped from them since the
    last release could exceed ``budget`` bytes: the resident set stays bounded whatever the number of
    sources, and a source smaller than the budget is not faulted in again after every batch.

    Args:
        release: drops one source's mapped pages (by its index).
        budget: bytes (default :data:`MAPPED_BUDGET`).
    """

    def __init__(self, release: Callable[[int], None], budget: int = MAPPED_BUDGET) -> None:
        self.release = release
        self.budget = budget
        self.mapped: dict[int, int] = {}  # source → bytes it may have mapped since its last release

    def read(self, source: int, nbytes: int, cap: int) -> None:
        """A window that may map ``nbytes`` of ``source`` (``cap``: all of it) was read."""
        self.mapped[source] = min(cap, self.mapped.get(source, 0) + nbytes)
        if sum(self.mapped.values()) > self.budget:
            for index in self.mapped:
                self.release(index)
            self.mapped.clear()


def release(*arrays: np.ndarray) -> None:
    """Drop the pages of memory-mapped ``arrays`` from this process's resident set (they stay in the page
    cache, shared, and are mapped again on the next read). Arrays in memory are left alone."""
    for array in arrays:
        handle = getattr(array, "_mmap", None)
        if handle is None and isinstance(getattr(array, "base", None), mmap.mmap):
            handle = array.base
        if handle is not None and not getattr(handle, "closed", False):
            handle.madvise(mmap.MADV_DONTNEED)
