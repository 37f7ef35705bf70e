"""One resolution's members run over their stack in windows, blended into finished strips of rows.

A :class:`GroupStream` owns the members that share a resolution (and so a stack): a reader thread reads each
window once (the union of the members' bands; decoded by several threads, in order), skips windows that are all
no data, and hands batches of windows to a forward thread, which runs every member on them and hands the
probabilities to the blending loop (the caller's thread, overlapping the next forward), which adds them,
normalised-weighted, into a buffer one window high and as wide as the scene, and yields the rows no later window
touches, a few at a time. Memory is that buffer plus a few batches in flight, whatever the scene's height.

Windows are read into, and batches assembled in, arrays the stream keeps and fills again (a window's once the
next is asked for, a batch's once the forward is done with it) rather than fresh ones: blocks of a few MiB
allocated and freed on several threads, a batch at a time, fragment glibc's heap arenas, and the resident set
then grows with the scene's width.

Batches never span two rows of windows, so a stream restarted at a row of windows (to resume) feeds the models
exactly the same batches and yields bit-identical values.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from torchbearer.imagery.cache import StackBuild, valid_pixels
from torchbearer.imagery.grid import Grid
from torchbearer.inference.blending import GridWeights
from torchbearer.inference.windows import WindowGrid, overlap_pixels, pad_into

READERS = max(1, min(4, os.cpu_count() or 1))
"""Threads decoding windows of a stack ahead of the model (:class:`GroupStream`'s ``readers``)."""


@dataclass
class Strip:
    """Finished rows ``[row, row + n)`` of a grid: per-member probabilities (members × classes × n × width)
    and where the input had data (n × width)."""

    row: int
    probs: np.ndarray
    valid: np.ndarray


@dataclass
class StreamStats:
    """What a stream computed: windows done (computed + skipped), the batches run, as (row, col) offsets."""

    windows_done: int = 0
    windows_skipped: int = 0
    batches: list[list[tuple[int, int]]] = field(default_factory=list)


@dataclass
class _Batch:
    """Windows of one row of the grid read for one forward pass (at most ``batch_size``)."""

    index: int  # the row of windows
    cols: list[int]  # indexes into the grid's column offsets
    data: np.ndarray | None  # batch_size × bands × size × size DN, the first len(cols) filled; None once run
    valid: list[np.ndarray]  # where each window (clipped to the scene) has data
    skipped: int  # windows of the row passed over as all no data since the previous batch
    last: bool  # the row's last batch (it may hold no window at all)


class StopRequested(Exception):
    """``should_stop`` turned True between two batches: the strip in hand is abandoned (redone on resume)."""


ForwardFn = Callable[[torch.Tensor], list[torch.Tensor]]
"""Runs every member of a group on a batch of DN windows; returns one probability tensor per member."""


class GroupStream:
    """Blended probabilities of a group of same-resolution members over a stack, as strips of finished rows.

    Args:
        dataset: the open stack (each band read by its 1-based index in ``indexes``); None with ``building``.
        indexes: the stack's bands the members need, read once per window.
        forward: runs the members on a batch (B × len(indexes) × size × size, uint16 DN as float32).
        members: number of members; classes: channels of their probabilities.
        size: window size (pixels); overlap: fraction of it; batch_size: most windows per forward.
        start_row: first row to yield (rows before it are not computed unless a window needs them).
        should_stop: polled before each batch; True raises :class:`StopRequested` (a batch can take seconds
            on a CPU, a strip minutes, and a stop request must be answered within the supervisor's grace).
        strip_rows: most rows per yielded strip.
        prefetch: batches the reader may read ahead.
        readers: threads decoding windows of the stack (each its own handle on it; default :data:`READERS`);
            1 reads in the reader thread itself. Several keep a fast model (a GPU's) fed: decoding a
            window's tiles costs more than its forward there.
        building: the stack while it is being built (``imagery.cache.StackBuild``): windows are read from its
            decoded strips in memory (each waits for the rows it needs), so they flow from the first strip on
            instead of after the whole stack, and the file it writes is not read back; the stream releases the
            rows it has read past, which bounds the build's memory.
    """

    def __init__(
        self,
        dataset: rasterio.io.DatasetReader | None,
        indexes: list[int],
        forward: ForwardFn,
        members: int,
        classes: int,
        size: int,
        overlap: float,
        batch_size: int,
        start_row: int = 0,
        should_stop: Callable[[], bool] | None = None,
        strip_rows: int = 64,
        prefetch: int = 2,
        readers: int | None = None,
        building: StackBuild | None = None,
    ) -> None:
        self.dataset = dataset
        self.building = building
        self.indexes = indexes
        self.forward = forward
        self.members = members
        self.classes = classes
        self.batch_size = batch_size
        self.readers = readers or READERS
        source = building if building is not None else dataset
        assert source is not None, "a stream reads an open stack or a stack being built"
        self.grid = WindowGrid.over(source.height, source.width, size, overlap)
        self.weights = GridWeights(self.grid, overlap_pixels(size, overlap))
        self.start_row = start_row
        self.should_stop = should_stop or (lambda: False)
        self.strip_rows = strip_rows
        self.start_index = self.grid.row_index(start_row)
        self.stats = StreamStats(windows_done=self.start_index * len(self.grid.cols))
        self._queue: queue.Queue[_Batch | BaseException | None] = queue.Queue(prefetch)
        self._computed: queue.Queue[tuple[_Batch, list[torch.Tensor] | None] | BaseException | None]
        self._computed = queue.Queue(prefetch)
        self._stop = threading.Event()
        self._spare_batches: deque[np.ndarray] = deque()  # batch arrays the forward is done with (thread-safe)
        if building is not None:  # the rows above the first window are not read: the build need not keep them
            first = self.grid.rows[self.start_index] if self.start_index < len(self.grid.rows) else self.grid.height
            building.release(first)

    # -- reading (a thread) -----------------------------------------------------------------------------------

    def _read_window(
        self, dataset: rasterio.io.DatasetReader | StackBuild, index: int, j: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Window ``j`` of row ``index`` as DN (bands × h × w, clipped to the scene), from the open stack or the
        strips of the one being built (the same ``read``), into the front of ``out`` (flat uint16, at least
        bands × size × size) when given."""
        size, r, c = self.grid.size, self.grid.rows[index], self.grid.cols[j]
        h, w = min(size, self.grid.height - r), min(size, self.grid.width - c)
        if out is not None:
            out = out[: len(self.indexes) * h * w].reshape(len(self.indexes), h, w)
        # In-bounds windows only (rasterio's boundless reads go through a slow VRT); pad_into does the rest.
        return dataset.read(self.indexes, window=Window(c, r, w, h), out=out)

    def _window_buffer(self) -> np.ndarray:
        """A flat uint16 array a window of the stream's bands fits in."""
        return np.empty(len(self.indexes) * self.grid.size**2, dtype=np.uint16)

    def _batch_buffer(self) -> np.ndarray:
        """An array a batch of windows is assembled in: one the forward is done with, or a new one (no more
        than the batches in flight, a few: the queues bound them)."""
        try:
            return self._spare_batches.pop()
        except IndexError:
            return np.empty((self.batch_size, len(self.indexes), self.grid.size, self.grid.size), dtype=np.uint16)

    def _blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(row index, column index, DN)`` of every window from the start row on, in order.

        With ``readers`` > 1 the windows are decoded by that many threads, each with its own handle on the stack
        (a GDAL dataset must not be shared between threads), up to ``2 × readers`` windows ahead of the one
        handed on; the order, and so every batch, is the same as with one reader.
        """
        windows = ((i, j) for i in range(self.start_index, len(self.grid.rows)) for j in range(len(self.grid.cols)))
        local, opened, lock = threading.local(), [], threading.Lock()
        spare: list[np.ndarray] = []  # window arrays handed on and given back (this generator's thread only)

        def buffer() -> np.ndarray:
            return spare.pop() if spare else self._window_buffer()

        def read(i: int, j: int, out: np.ndarray) -> np.ndarray:
            if self.building is not None:  # the decoded strips in memory: no handle to open
                return self._read_window(self.building, i, j, out)
            if getattr(local, "dataset", None) is None:
                local.dataset = self._open()
                if local.dataset is not self.dataset:
                    with lock:
                        opened.append(local.dataset)
            return self._read_window(local.dataset, i, j, out)

        try:
            if self.readers <= 1:
                out = buffer()
                for i, j in windows:
                    block = read(i, j, out)
                    self._release(i, j)
                    yield i, j, block  # the consumer is done with it when it asks for the next
                return
            pending: deque[tuple[int, int, np.ndarray, Future[np.ndarray]]] = deque()
            with ThreadPoolExecutor(self.readers, thread_name_prefix="window-decoder") as pool:
                try:
                    for i, j in windows:
                        out = buffer()
                        pending.append((i, j, out, pool.submit(read, i, j, out)))
                        if len(pending) > 2 * self.readers:
                            i0, j0, used, done = pending.popleft()
                            block = done.result()
                            self._release(i0, j0)
                            yield i0, j0, block
                            spare.append(used)
                    while pending:
                        i0, j0, used, done = pending.popleft()
                        block = done.result()
                        self._release(i0, j0)
                        yield i0, j0, block
                        spare.append(used)
                finally:
                    for *_, future in pending:
                        future.cancel()
        finally:
            for dataset in opened:
                dataset.close()

    def _release(self, index: int, j: int) -> None:
        """Window ``j`` of row ``index`` is read, and so is every window before it (they are handed on in order,
        the ones still being read are later): a stack being built may drop the rows above the row of windows
        still being read (the next one, after a row's last window)."""
        if self.building is not None:
            following = index + 1 if j == len(self.grid.cols) - 1 else index
            rows = self.grid.rows
            self.building.release(rows[following] if following < len(rows) else self.grid.height)

    def _open(self) -> rasterio.io.DatasetReader:
        """A handle on the stack for a reader thread (a GDAL dataset must not be shared between threads)."""
        assert self.dataset is not None
        if self.readers <= 1:
            return self.dataset
        return rasterio.open(self.dataset.name)

    def _batches(self) -> Iterator[_Batch]:
        """The windows that have data, in batches that never span two rows of windows (a row's last batch is
        marked, and may hold no window); the queue holds a few batches whatever the width."""
        batch = None
        for index, j, block in self._blocks():
            if batch is None:
                batch = _Batch(index, [], self._batch_buffer(), [], 0, False)
            valid = valid_pixels(block)
            if not valid.any():  # all no data: nothing to predict, its pixels stay no data
                batch.skipped += 1
            else:
                assert batch.data is not None
                pad_into(block, batch.data[len(batch.cols)])
                batch.cols.append(j)
                batch.valid.append(valid)
            if j == len(self.grid.cols) - 1:
                batch.last = True
                yield batch
                batch = None
            elif len(batch.cols) == self.batch_size:
                yield batch
                batch = _Batch(index, [], self._batch_buffer(), [], 0, False)

    def _reader(self) -> None:
        try:
            for batch in self._batches():
                if self._stop.is_set():
                    return
                self._queue.put(batch)
            self._queue.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the compute loop, which re-raises it
            self._queue.put(exc)

    # -- the forward (a thread) ------------------------------------------------------------------------------

    def _next_batch(self) -> _Batch | BaseException | None:
        """The reader's next batch; None at the end, or once the stream is closed while waiting (a reader that
        sees the stream closed ends without a word, and the closing loop may take its last batch itself)."""
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return None

    def _forwarder(self) -> None:
        """Runs the members on each batch the reader hands on, while the consumer blends the previous one."""
        try:
            while (batch := self._next_batch()) is not None:
                if isinstance(batch, BaseException):
                    raise batch
                probs = None
                assert batch.data is not None
                if batch.cols:
                    if self.should_stop():
                        raise StopRequested
                    probs = self.forward(torch.from_numpy(batch.data[: len(batch.cols)]))
                    r = self.grid.rows[batch.index]
                    self.stats.batches.append([(r, self.grid.cols[j]) for j in batch.cols])
                self._spare_batches.append(batch.data)  # the probabilities are new tensors: refill it
                batch.data = None
                if self._stop.is_set():
                    return
                self._computed.put((batch, probs))
            self._computed.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the blending loop, which re-raises it
            self._computed.put(exc)

    # -- blending ---------------------------------------------------------------------------------------------

    def strips(self) -> Iterator[Strip]:
        """Yield the blended rows from ``start_row`` to the bottom of the grid, in order, ``strip_rows`` at most
        at a time (the copies handed on stay small however wide the scene)."""
        grid, size = self.grid, self.grid.size
        if self.start_index >= len(grid.rows):
            return
        acc = torch.zeros(self.members, self.classes, size, grid.width)
        valid_acc = np.zeros((size, grid.width), dtype=bool)
        top = grid.rows[self.start_index]
        threads = [threading.Thread(target=self._reader, name="window-reader", daemon=True),
                   threading.Thread(target=self._forwarder, name="model-forward", daemon=True)]  # fmt: skip
        for thread in threads:
            thread.start()
        try:
            while (item := self._computed.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                batch, probs = item
                self._accumulate(batch, probs, acc, valid_acc, top)
                if not batch.last:
                    continue
                end = grid.finished_until(batch.index)
                for first in range(max(top, self.start_row), end, self.strip_rows):
                    last = min(first + self.strip_rows, end)
                    yield Strip(
                        row=first,
                        probs=acc[:, :, first - top : last - top].numpy().copy(),
                        valid=valid_acc[first - top : last - top].copy(),
                    )
                self._shift(acc, valid_acc, end - top)
                top = end
        finally:
            self._stop.set()
            while any(t.is_alive() for t in threads):  # unblock threads waiting on a full queue
                for waiting in (self._queue, self._computed):
                    with contextlib.suppress(queue.Empty):
                        waiting.get(timeout=0.05)

    @staticmethod
    def _shift(acc: torch.Tensor, valid_acc: np.ndarray, shift: int) -> None:
        """Move the unfinished rows (after the first ``shift``) to the top of the buffers, zero the rest.

        Copied in pieces of at most ``shift`` rows, which never overlap, so no buffer-sized temporary is
        allocated (a fresh one per row of windows fragments the heap as the scene gets wider).
        """
        keep = acc.shape[2] - shift
        for a in range(0, max(keep, 0), shift):
            b = min(a + shift, keep)
            acc[:, :, a:b] = acc[:, :, a + shift : b + shift]
            valid_acc[a:b] = valid_acc[a + shift : b + shift]
        acc[:, :, max(keep, 0) :] = 0
        valid_acc[max(keep, 0) :] = False

    def _accumulate(
        self, batch: _Batch, probs: list[torch.Tensor] | None, acc: torch.Tensor, valid_acc: np.ndarray, top: int
    ) -> None:
        """Add a batch's weighted probabilities (None: it held no window) into the row buffer."""
        grid, size = self.grid, self.grid.size
        self.stats.windows_done += len(batch.cols) + batch.skipped
        self.stats.windows_skipped += batch.skipped
        if probs is None:
            return
        r = grid.rows[batch.index]
        h = min(size, grid.height - r)
        for k, j in enumerate(batch.cols):
            c = grid.cols[j]
            w = min(size, grid.width - c)
            weights = torch.from_numpy(self.weights.window(batch.index, j)[:h, :w])
            for m, p in enumerate(probs):
                acc[m, :, r - top : r - top + h, c : c + w].addcmul_(p[k, :, :h, :w], weights)
            valid_acc[r - top : r - top + h, c : c + w] |= batch.valid[k]


class Resampler:
    """Maps rows of a source grid onto a destination grid of the same CRS (bilinear; nearest for validity).

    Pixel centres of the destination are located in the source grid through both affine transforms; when the
    grids are the same, rows pass through untouched (so a single-resolution ensemble is exact).
    """

    def __init__(self, source: Grid, destination: Grid) -> None:
        if source.crs != destination.crs:
            raise ValueError(f"cannot combine grids in different CRSs ({source.crs} and {destination.crs})")
        self.identity = source.same_as(destination)
        self.source = source
        self.destination = destination
        cols = np.arange(destination.width) + 0.5
        xs = destination.transform.c + cols * destination.transform.a
        self._u = (xs - source.transform.c) / source.transform.a - 0.5

    def _v(self, a: int, b: int) -> np.ndarray:
        ys = self.destination.transform.f + (np.arange(a, b) + 0.5) * self.destination.transform.e
        return (ys - self.source.transform.f) / self.source.transform.e - 0.5

    def source_rows(self, a: int, b: int) -> tuple[int, int]:
        """Source rows ``[lo, hi)`` that destination rows ``[a, b)`` are interpolated from."""
        if self.identity:
            return a, b
        v = self._v(a, b)
        lo = int(np.clip(np.floor(v.min()), 0, self.source.height - 1))
        hi = int(np.clip(np.floor(v.max()) + 2, 1, self.source.height))
        return lo, hi

    def rows(self, probs: np.ndarray, valid: np.ndarray, first: int, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Destination rows ``[a, b)`` from source rows starting at ``first`` (probs: … × rows × width)."""
        if self.identity:
            return probs[..., a - first : b - first, :], valid[a - first : b - first]
        v = np.clip(self._v(a, b), 0, self.source.height - 1) - first
        u = np.clip(self._u, 0, self.source.width - 1)
        v0 = np.clip(np.floor(v).astype(int), 0, probs.shape[-2] - 1)
        v1 = np.clip(v0 + 1, 0, probs.shape[-2] - 1)
        u0 = np.floor(u).astype(int)
        u1 = np.clip(u0 + 1, 0, self.source.width - 1)
        tv = (v - v0).astype(np.float32)[:, None]
        tu = (u - u0).astype(np.float32)
        rows = probs[..., v0, :] * (1 - tv) + probs[..., v1, :] * tv
        out = rows[..., u0] * (1 - tu) + rows[..., u1] * tu
        vn = np.clip(np.floor(v + 0.5).astype(int), 0, valid.shape[0] - 1)
        un = np.clip(np.floor(u + 0.5).astype(int), 0, self.source.width - 1)
        return out.astype(np.float32), valid[vn][:, un]


class RowCache:
    """Serves destination rows from a stream's strips, keeping only the source rows still needed."""

    def __init__(self, strips: Generator[Strip, None, None], resampler: Resampler, first_row: int) -> None:
        self._strips = strips
        self.resampler = resampler
        self._first = first_row
        self._probs: np.ndarray | None = None
        self._valid: np.ndarray | None = None

    def close(self) -> None:
        """Close the stream's strips (ends its reader thread if it stopped half-way)."""
        self._strips.close()

    def rows(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Destination rows ``[a, b)`` (requests must move down the grid). Views of the stream's strips where
        they hold the rows (the strips are never written again); a copy joining two where they do not."""
        lo, hi = self.resampler.source_rows(a, b)
        self._forget_before(lo)
        while self._probs is None or self._first + self._probs.shape[-2] < hi:
            strip = next(self._strips)
            if self._probs is None or self._probs.shape[-2] == 0:  # nothing kept: the strip itself, not a copy
                self._first, self._probs, self._valid = strip.row, strip.probs, strip.valid
            else:
                self._probs = np.concatenate([self._probs, strip.probs], axis=-2)
                self._valid = np.concatenate([self._valid, strip.valid], axis=0)
            self._forget_before(lo)
        assert self._valid is not None
        return self.resampler.rows(self._probs, self._valid, self._first, a, b)

    def _forget_before(self, lo: int) -> None:
        """Drop the kept source rows above ``lo`` (no later request needs them)."""
        if self._probs is None or self._valid is None or lo <= self._first:
            return
        drop = min(lo - self._first, self._probs.shape[-2])
        self._probs, self._valid = self._probs[..., drop:, :], self._valid[drop:]
        self._first += drop
