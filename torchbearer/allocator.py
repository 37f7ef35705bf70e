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

    What the ``prepare`` steps keep their resident set flat with (``prepare/rasters.bounded_memory``): chips
    and table blocks of many sizes, freed by several threads, otherwise land in glibc's heap arenas (its
    threshold rises to 32 MiB after the first large free) and fragment them, so the resident set grows with the
    scene. The price: each such block is mapped and faulted in afresh. The ensemble prediction needs no setting:
    its streams fill the same window, batch and input arrays again instead of allocating them (it used this
    one, at 6 % more CPU for the three-member ensemble and twice the time for a near-free member).
    """
    _mallopt(-3, MMAP_THRESHOLD_BYTES)  # -3: M_MMAP_THRESHOLD; also stops the threshold's rise


def share_one_arena() -> None:
    """Have every thread allocate from glibc's one main arena (``mallopt(M_ARENA_MAX, 1)``); elsewhere nothing.

    What the ``explain`` kind keeps its resident set flat with. Its scene Grad-CAM frees many 1–32 MiB
    activations and gradients a batch on several threads: spread over per-thread arenas they fragment (peak RSS
    1.48× from the 1830² scene to its 6 × 6 mosaic), and :func:`map_large_blocks` bounds that (1.19×) but maps
    and faults every one of them afresh (2.3× the time). One arena reuses them: 1.08×, 1.06× the time (quiet
    machine, ``docs/benchmarks.md``). It must run before the threads it should cover first allocate.
    """
    _mallopt(-8, 1)  # -8: M_ARENA_MAX


def give_back_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim(0)``); elsewhere nothing.

    Unlike the settings above, a one-off any code may call before a step that allocates a lot on one thread:
    memory freed by other threads stays in their arenas, resident, where that thread cannot reuse it.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _mallopt(parameter: int, value: int) -> None:
    """glibc's ``mallopt``; nothing where the C library is not glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(parameter, value)
