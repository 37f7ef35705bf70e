"""Scenes on disk, not in memory: an uncompressed, memory-mapped copy of a stack's DN for training.

Training reads random patches from every scene many times; decoding the stack's ZSTD tiles each time is slow
and holding every scene decoded in memory grows with the number of scenes (a 10 m tile is about 1 GB). So
each stack gets, once, a raw ``.npy`` copy beside the other cache files (``<cache>/mapped/``):

- ``<stack stem>.<key>.dn.npy``: uint16 DN, bands × rows × columns, every band of the stack in file order;
- ``<stack stem>.<key>.nodata.npy``: bool, rows × columns, DN 0 in some band (no data).

``key`` is the stack's size and modification time (ns) plus a hash of its absolute path, so a stack rebuilt
or replaced gets new files (older ones of the same stem are removed when the new ones are made). They are
built under an flock, written as ``.part`` and renamed, as the stacks are (``imagery/cache.py``).

They are opened with ``np.load(mmap_mode="r")``: forked DataLoader workers share the operating system's page
cache, and :func:`release` drops the pages a process has mapped from its resident set (they stay cached), so a
job's resident memory stays flat in the number and size of its scenes.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
from pathlib import Path

import numpy as np

from torchbearer.locks import file_lock

log = logging.getLogger(__name__)

#: Rows of the stack read at a time when the raw copy is built (bounded memory: rows × columns × bands).
BUILD_ROWS = 512


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
        finally:
            for part in parts:
                part.unlink(missing_ok=True)
        _remove_stale(Path(stack), dn_path, nodata_path)
    log.info("%s: raw copy for training in %s", Path(stack).name, dn_path.parent)
    return dn_path, nodata_path


def _remove_stale(stack: Path, *current: Path) -> None:
    """Raw copies of an earlier version of the same stack (rebuilt or replaced since)."""
    where = current[0].name.split(".")[-3].rsplit("-", 1)[-1]
    for old in current[0].parent.glob(f"{stack.stem}.*.npy"):
        if old not in current and old.name.split(".")[-3].endswith(where):
            old.unlink(missing_ok=True)


def open_mapped(stack: Path, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(DN bands × rows × columns uint16, no data rows × columns bool), memory-mapped read-only."""
    dn_path, nodata_path = build_mapped(stack, cache_dir)
    return np.load(dn_path, mmap_mode="r"), np.load(nodata_path, mmap_mode="r")


def save_mapped(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` written to ``path`` (``.npy``) and opened again memory-mapped, read-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    with open(part, "wb") as handle:  # a file object: np.save would append .npy to the name
        np.save(handle, array, allow_pickle=False)
    part.replace(path)
    return np.load(path, mmap_mode="r")


def release(*arrays: np.ndarray) -> None:
    """Drop the pages of memory-mapped ``arrays`` from this process's resident set (they stay in the page
    cache, shared, and are mapped again on the next read). Arrays in memory are left alone."""
    for array in arrays:
        handle = getattr(array, "_mmap", None)
        if handle is None and isinstance(getattr(array, "base", None), mmap.mmap):
            handle = array.base
        if handle is not None and not getattr(handle, "closed", False):
            handle.madvise(mmap.MADV_DONTNEED)
