"""Process-wide allocator tuning, for the worker or job kind that wants it (never called by library code).

A setting of the whole process: only a process that runs one job (a worker, a benchmark's child) should make it.
Imports nothing heavy, so any kind can call it first thing in its ``run``.
"""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD_BYTES = 2**20
"""Heap blocks from this size on are mapped (and unmapped when freed) by glibc: see :func:`map_large_blocks`."""


def map_large_blocks() -> None:
    """Have glibc map every allocation of 1 MiB or more (``mallopt(M_MMAP_THRESHOLD)``); elsewhere nothing.

    Windows, strips and their temporaries of many sizes, freed by several threads, otherwise land in glibc's
    heap arenas (its threshold rises to 32 MiB after the first large free) and fragment them, so the resident
    set grows with the scene's width (measured: 1.5× from a 1830² scene to a 5490² mosaic, 1.1× with this).
    The forward's large activations were mapped already; the process runs one job, so the setting stays.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    if hasattr(libc, "mallopt"):
        libc.mallopt(-3, MMAP_THRESHOLD_BYTES)  # -3: M_MMAP_THRESHOLD; also stops the threshold's rise
