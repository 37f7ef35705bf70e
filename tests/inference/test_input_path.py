"""The input path: a product's bands decoded side by side when stacked, windows of a stack decoded by several
threads ahead of the model, the forward on its own thread beside blending; all give exactly what the serial
path gives."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

from tests.inference.conftest import CROP, card_for, save_checkpoint
from torchbearer.imagery import cache
from torchbearer.imagery.cache import StackBuild, StackError, build_stack, start_stack
from torchbearer.imagery.spec import BANDS_BY_RESOLUTION
from torchbearer.inference import stream
from torchbearer.inference.ensemble import PredictionInterrupted, PredictOptions, predict_scene
from torchbearer.inference.members import Member
from torchbearer.inference.resume import FINGERPRINT_TAG, is_complete
from torchbearer.ml.checkpoint import ModelCard
from torchbearer.ml.members import load_member


def _spy(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[str]:
    """Record the thread each call of ``owner.name`` runs on (the real function still does the work)."""
    threads: list[str] = []
    real = getattr(owner, name)

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return threads


def test_bands_decoded_in_parallel_stack_to_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "DECODE_THREADS", 1)
    serial = build_stack(CROP, 60, tmp_path / "serial")
    monkeypatch.setattr(cache, "DECODE_THREADS", 4)
    threads = _spy(monkeypatch, cache, "_read_rows")
    parallel = build_stack(CROP, 60, tmp_path / "parallel")
    strips = -(-320 // cache.STRIP_ROWS)  # the crop is 320 rows high
    assert len(threads) == 11 * strips and all(t.startswith("band-decoder") for t in threads), threads
    with rasterio.open(serial) as a, rasterio.open(parallel) as b:
        assert np.array_equal(a.read(), b.read())
        assert (a.descriptions, a.tags(), a.profile) == (b.descriptions, b.tags(), b.profile)


def test_reader_and_forward_threads_write_the_same_map(
    part60: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = save_checkpoint(tmp_path / "a.ckpt", card_for(part60, "unet", "resnet18"), seed=3)
    model, card = load_member(ckpt)
    # Small windows and batches over the no-data wedge: many windows, some partly no data, batches ending mid-row.
    options = PredictOptions(window=64, overlap=0.25, batch_size=3, optimize=False)
    results, threads, forwards = {}, {}, []
    model.register_forward_hook(lambda *_: forwards.append(threading.current_thread().name))
    for readers in (1, 3):
        monkeypatch.setattr(stream, "READERS", readers)
        threads[readers] = _spy(monkeypatch, stream.GroupStream, "_read_window")
        results[readers] = predict_scene([Member("a", model, card, source=str(ckpt))], [part60],
                                         tmp_path / f"{readers}" / "map.tif", options, created=1.7e9)  # fmt: skip
        monkeypatch.undo()
    assert set(threads[1]) == {"window-reader"}
    assert threads[3] and all(t.startswith("window-decoder") for t in threads[3])
    assert len(threads[1]) == len(threads[3]) == results[1].windows
    assert set(forwards) == {"model-forward"}, "the forward runs on its own thread, beside blending and reading"
    one, three = results[1], results[3]
    assert one.stats[60.0].batches == three.stats[60.0].batches and one.windows_skipped == three.windows_skipped
    digest = [hashlib.sha256(r.output.read_bytes()).hexdigest() for r in (one, three)]
    assert digest[0] == digest[1]


def _conv1x1(bands: tuple[str, ...]) -> Member:
    """A near-free member (what a GPU's forward costs the CPU): the input path is what these tests exercise."""
    torch.manual_seed(0)
    norm = {"mean": [0.1] * len(bands), "std": [0.05] * len(bands)}
    card = ModelCard(arch="conv1x1", backbone=None, in_channels=len(bands), num_classes=2, classes=["clear", "cloud"],
                     task="binary", bands=list(bands), resolution=60.0, norm=norm)  # fmt: skip
    return Member("conv1x1", nn.Conv2d(len(bands), 1, 1), card)


def test_windows_flow_before_the_stack_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first prediction from a SAFE folder reads windows from the strips already decoded while the stack is
    still being built, and writes what predicting from the finished stack writes."""
    events: list[str] = []
    first_read = threading.Event()
    real_decode, real_write, real_read = cache._read_rows, cache._write_strip, stream.GroupStream._read_window

    def decode(band, top: int, bottom: int) -> np.ndarray:
        if bottom == 320:  # the last strip's bands wait (a while at most) for a window to be read
            first_read.wait(timeout=120)
        return real_decode(band, top, bottom)

    def write_strip(dst, data: np.ndarray, top: int) -> None:
        real_write(dst, data, top)
        events.append(f"strip {top}")

    def read_window(self, dataset, index: int, j: int, out=None) -> np.ndarray:
        events.append("window")
        first_read.set()
        return real_read(self, dataset, index, j, out)

    member = _conv1x1(BANDS_BY_RESOLUTION[60])
    options = PredictOptions(window=64, overlap=0.25, batch_size=3)
    reference = predict_scene([member], [build_stack(CROP, 60, tmp_path / "built")], tmp_path / "built.tif",
                              options, created=1.7e9)  # fmt: skip
    monkeypatch.setattr(cache, "_read_rows", decode)
    monkeypatch.setattr(cache, "_write_strip", write_strip)
    monkeypatch.setattr(stream.GroupStream, "_read_window", read_window)
    build = start_stack(CROP, 60, tmp_path / "cache")
    assert isinstance(build, StackBuild) and not build.path.exists()
    streamed = predict_scene([member], [build], tmp_path / "streamed.tif", options, created=1.7e9)

    strips = [i for i, e in enumerate(events) if e.startswith("strip")]
    assert len(strips) > 1 and events.index("window") < strips[-1], events
    with rasterio.open(reference.output) as a, rasterio.open(streamed.output) as b:
        assert np.array_equal(a.read(), b.read())
        tags = [{k: v for k, v in t.items() if k != FINGERPRINT_TAG} for t in (a.tags(), b.tags())]
        assert tags[0] == tags[1]
    with rasterio.open(tmp_path / "built" / build.path.name) as a, rasterio.open(build.path) as b:
        assert np.array_equal(a.read(), b.read()) and a.tags() == b.tags() and a.descriptions == b.descriptions
    # The finished map knows the finished stack: a retried job does not predict it again.
    assert is_complete(streamed.output, [member], [build.path], options)
    assert start_stack(CROP, 60, tmp_path / "cache") == build.path  # built once


def test_a_build_that_fails_half_way_leaves_no_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = cache._write_strip

    def write_strip(dst, data: np.ndarray, top: int) -> None:
        if top > 0:
            raise OSError("disk full")
        real_write(dst, data, top)

    monkeypatch.setattr(cache, "_write_strip", write_strip)
    build = start_stack(CROP, 60, tmp_path / "cache")
    member = _conv1x1(BANDS_BY_RESOLUTION[60])
    with pytest.raises(StackError, match="disk full"):
        predict_scene([member], [build], tmp_path / "map.tif", PredictOptions(window=64, batch_size=3))
    assert not build.path.exists() and not list((tmp_path / "cache").glob("*.part"))
    monkeypatch.undo()
    assert isinstance(start_stack(CROP, 60, tmp_path / "cache"), StackBuild)  # nothing looks complete: built again


def test_windows_from_the_strips_in_memory_are_the_finished_stacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows a first prediction reads from the build's decoded strips are those of the finished stack (a
    subset of its bands, windows across strips), and the build holds a few strips at a time, not the scene."""
    monkeypatch.setattr(cache, "STRIP_ROWS", 16)  # 20 strips over the crop's 320 rows
    monkeypatch.setattr(cache, "MEMORY_STRIPS", 2)
    monkeypatch.setattr(stream, "READERS", 1)
    reads: list[tuple[list[int], rasterio.windows.Window, np.ndarray]] = []
    held: list[int] = []
    real_read = StackBuild.read

    def read(self: StackBuild, indexes: list[int], window: rasterio.windows.Window, out=None) -> np.ndarray:
        block = real_read(self, indexes, window, out)
        reads.append((indexes, window, block.copy()))  # the stream reads the next window into the same array
        held.append(len(self._strips))
        return block

    monkeypatch.setattr(StackBuild, "read", read)
    build = start_stack(CROP, 60, tmp_path / "cache")
    member = _conv1x1(("B02", "B04", "B8A"))
    predict_scene([member], [build], tmp_path / "map.tif", PredictOptions(window=64, overlap=0.25, batch_size=3))
    assert len(reads) == 7 * 11  # every window of the 7 × 11 grid, read from memory
    with rasterio.open(build.path) as ds:
        for indexes, window, block in reads:
            assert np.array_equal(block, ds.read(indexes, window=window)), window
    # A 64-row window spans 4 or 5 strips of 16 rows; one more may be decoded ahead.
    assert max(held) <= 6, held


def test_the_stack_is_written_at_its_zstd_level(tmp_path: Path) -> None:
    """The stack built strip by strip is compressed as CREATION_OPTIONS say (a file reopened for update would
    be written at GDAL's default ZSTD level 9 whatever the options: seven times the CPU)."""
    path = build_stack(CROP, 60, tmp_path / "cache")
    with rasterio.open(path) as ds:
        data, profile = ds.read(), ds.profile
        tiles = [(b, i, j) for b in ds.indexes for i in range(-(-ds.height // 256)) for j in range(-(-ds.width // 256))]
        built = [ds.block_size(*tile) for tile in tiles]
    sizes = {}
    for level in (cache.CREATION_OPTIONS["zstd_level"], 9):
        reference = tmp_path / f"level{level}.tif"
        with rasterio.open(reference, "w", **{**profile, **cache.CREATION_OPTIONS, "zstd_level": level}) as dst:
            dst.write(data)
        with rasterio.open(reference) as ds:
            sizes[level] = [ds.block_size(*tile) for tile in tiles]
    assert built == sizes[cache.CREATION_OPTIONS["zstd_level"]] != sizes[9]


def test_closing_a_stream_while_its_reader_reads_ends_its_threads(
    part60: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream closed (a stop, an error while blending) while its reader is mid-window and its forward thread
    waits for a batch: both threads end, and closing returns. The reader, seeing the stream closed, sends no
    further batch: the forward thread waited for it for ever, and the prediction hung."""
    monkeypatch.setattr(stream, "READERS", 1)
    resume = threading.Event()
    real_read = stream.GroupStream._read_window

    def read_window(self, dataset, index: int, j: int, out=None) -> np.ndarray:
        if index == 1 and j == 1:  # the second window of the second row waits until the stream is closed
            resume.wait(timeout=120)
        return real_read(self, dataset, index, j, out)

    monkeypatch.setattr(stream.GroupStream, "_read_window", read_window)

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), 0.5)]

    with rasterio.open(part60) as ds:
        s = stream.GroupStream(ds, [1, 2], forward, members=1, classes=1, size=64, overlap=0.25, batch_size=1)
        strips = s.strips()
        next(strips)  # row 0 of windows is blended; window (1, 0) is read, (1, 1) is being read
        closing = threading.Thread(target=strips.close, daemon=True)
        closing.start()
        while not s._stop.is_set():  # the stream is closing: now the reader finishes its window
            closing.join(timeout=0.01)
        resume.set()
        closing.join(timeout=120)  # (not a timing: without the fix it never returns)
        assert not closing.is_alive(), "closing the stream hung: its forward thread waits for a batch"


def test_a_first_prediction_stopped_mid_build_resumes_to_the_same_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while its stack is built, a first prediction leaves no stack; resumed, it builds the stack again
    and reads only the rows from its resume row on from memory (the strips above are not kept) and writes the
    map a prediction from the finished stack writes."""
    monkeypatch.setattr(cache, "STRIP_ROWS", 32)
    monkeypatch.setattr(cache, "MEMORY_STRIPS", 2)
    member = _conv1x1(BANDS_BY_RESOLUTION[60])
    options = PredictOptions(window=64, overlap=0.25, batch_size=3)
    reference = predict_scene([member], [build_stack(CROP, 60, tmp_path / "built")], tmp_path / "built.tif",
                              options, created=1.7e9)  # fmt: skip
    out, progress = tmp_path / "map.tif", []
    with pytest.raises(PredictionInterrupted) as stopped:
        predict_scene([member], [start_stack(CROP, 60, tmp_path / "cache")], out, options, created=1.7e9,
                      report=lambda *p: progress.append(p), should_stop=lambda: len(progress) >= 4)  # fmt: skip
    assert stopped.value.rows_done >= 128, "stopped after the fourth strip of the map"
    assert not [*(tmp_path / "cache").glob("*.tif"), *(tmp_path / "cache").glob("*.part")], "no stack is left"
    tops, real_read = [], StackBuild.read

    def read(self: StackBuild, indexes: list[int], window: rasterio.windows.Window, out=None) -> np.ndarray:
        block = real_read(self, indexes, window, out)
        tops.append(min(self._strips))  # one reader: nothing is released while it reads
        return block

    monkeypatch.setattr(StackBuild, "read", read)
    monkeypatch.setattr(stream, "READERS", 1)
    build = start_stack(CROP, 60, tmp_path / "cache")
    resumed = predict_scene([member], [build], out, options)
    assert resumed.resumed_from_row == stopped.value.rows_done and build.path.is_file()
    assert min(tops) > 0, "strips above the first window the resumed run reads are not kept"
    with rasterio.open(reference.output) as a, rasterio.open(resumed.output) as b:
        assert np.array_equal(a.read(), b.read())
