"""The ensemble's arrays are filled again instead of allocated afresh: a stream's window and batch arrays, the
forward's standardised inputs, the rows handed from a stream to the writer (and a map becomes a COG in a small
block cache). Each reuse is checked for both halves of its promise: the count of arrays stays bounded, and no
batch or strip ever holds another's pixels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from torchbearer.imagery.grid import Grid
from torchbearer.inference import writer
from torchbearer.inference.groups import InputBuffers
from torchbearer.inference.stream import GroupStream, Resampler, RowCache, Strip
from torchbearer.inference.windows import pad_to_window


@pytest.mark.parametrize("readers", [1, 3])
def test_a_stream_fills_the_same_arrays_and_every_batch_holds_its_own_windows(
    stack60: Path, readers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the crop's 77 windows (the no-data wedge included, so some are skipped and batches end mid-row)
    the stream allocates a handful of window and batch arrays, and each batch the forward gets is exactly its
    windows' pixels read straight from the stack (a refilled array handed on too early would mix two)."""
    made = {"window": 0, "batch": set()}
    real_window, real_batch = GroupStream._window_buffer, GroupStream._batch_buffer

    def window_buffer(self: GroupStream) -> np.ndarray:
        made["window"] += 1
        return real_window(self)

    def batch_buffer(self: GroupStream) -> np.ndarray:
        array = real_batch(self)
        made["batch"].add(id(array))
        return array

    monkeypatch.setattr(GroupStream, "_window_buffer", window_buffer)
    monkeypatch.setattr(GroupStream, "_batch_buffer", batch_buffer)
    seen: list[np.ndarray] = []

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        seen.append(x.numpy().copy())
        return [torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), 0.5)]

    indexes = [1, 4, 7]
    with rasterio.open(stack60) as ds:
        s = GroupStream(ds, indexes, forward, members=1, classes=1, size=64, overlap=0.25, batch_size=3,
                        readers=readers)  # fmt: skip
        for _ in s.strips():
            pass
        assert s.grid.count == 77 and s.stats.windows_skipped > 0
        assert len(seen) == len(s.stats.batches) > 20
        for batch, x in zip(s.stats.batches, seen, strict=True):
            expected = [
                pad_to_window(ds.read(indexes, window=Window(c, r, min(64, ds.width - c), min(64, ds.height - r))), 64)
                for r, c in batch
            ]  # fmt: skip
            assert np.array_equal(x, np.stack(expected)), f"batch {batch}"
    assert made["window"] <= 2 * readers + 2, "a window array per window: nothing is reused"
    assert len(made["batch"]) <= 4, "a batch array per batch: nothing is reused"  # two queued, one filled, one run


def test_the_forward_standardises_into_the_same_arrays() -> None:
    """Standardised inputs (all bands or a member's subset, channels-last or not) are ``shift + DN × scale``
    with no data zeroed as before, written into arrays kept from the last batch (a smaller batch gets a view)."""
    torch.manual_seed(0)
    x = torch.randint(0, 3000, (4, 5, 16, 16)).to(torch.uint16)
    x[1, 2, :4, :4] = 0  # no data in one band of one window
    buffers = InputBuffers()
    nodata = buffers.nodata(x)
    assert torch.equal(nodata, (x == 0).any(dim=1, keepdim=True))
    for pick in (torch.arange(5), torch.tensor([4, 0, 2])):
        scale, shift = torch.rand(1, len(pick), 1, 1), torch.rand(1, len(pick), 1, 1)
        for layout in (torch.channels_last, torch.contiguous_format):
            got = buffers.standardised(x, pick, scale, shift, layout)
            assert got.is_contiguous(memory_format=layout)
            assert torch.allclose(got, shift + x[:, pick].float() * scale)
            pointer = got.data_ptr()
            smaller = buffers.standardised(x[:2], pick, scale, shift, layout)
            assert smaller.data_ptr() == pointer, "the second batch was given a new array"
            assert torch.allclose(smaller, shift + x[:2, pick].float() * scale)
    assert buffers.nodata(x[:3]).data_ptr() == nodata.data_ptr()


def _strips(rows: int, width: int, step: int, first: int = 0) -> Iterator[Strip]:
    """Strips of ``step`` rows of a known field (row index × 1000 + column) from row ``first`` on."""
    field = (np.arange(rows)[:, None] * 1000 + np.arange(width)[None, :]).astype(np.float32)
    for top in range(first, rows, step):
        bottom = min(top + step, rows)
        yield Strip(row=top, probs=field[None, None, top:bottom].copy(), valid=np.ones((bottom - top, width), bool))


@pytest.mark.parametrize(("step", "request_rows"), [(32, 32), (20, 32), (32, 12)])
def test_rows_handed_on_are_the_strips_themselves_where_they_line_up(step: int, request_rows: int) -> None:
    """Requests that line up with the stream's strips get views of them (no copy per strip); others get the
    same values joined across strips."""
    rows, width = 100, 7
    grid = Grid(CRS.from_epsg(32629), from_origin(0, 0, 60, 60), width, rows)
    strips = []

    def recorded() -> Iterator[Strip]:
        for strip in _strips(rows, width, step):
            strips.append(strip)
            yield strip

    cache = RowCache(recorded(), Resampler(grid, grid), 0)
    for a in range(0, rows, request_rows):
        b = min(a + request_rows, rows)
        probs, valid = cache.rows(a, b)
        assert np.array_equal(probs[0, 0], np.arange(a, b)[:, None] * 1000 + np.arange(width)[None, :])
        assert valid.shape == (b - a, width)
        if step == request_rows:
            assert np.shares_memory(probs, strips[-1].probs), "an aligned request was copied"
    cache.close()


def test_a_map_becomes_a_cog_with_a_small_block_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The COG driver fills whatever block cache it is given, no faster for more: the copy runs with
    ``COG_CACHE_BYTES`` inside a prediction's larger cache, and the map is whole."""
    caches = []
    real_copy = writer.rasterio.shutil.copy

    def copy(*args, **kwargs):
        caches.append(rasterio.env.getenv()["GDAL_CACHEMAX"])
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(writer.rasterio.shutil, "copy", copy)
    profile = {"crs": CRS.from_epsg(32629), "transform": from_origin(0, 0, 60, 60), "width": 300, "height": 200}
    block = (np.arange(300 * 200) % 255).astype(np.uint8).reshape(1, 200, 300)
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20):
        strips = writer.StripWriter(tmp_path / "map.tif", profile, 1, resume=False)
        strips.write(block[:, :128], 0)
        strips.write(block[:, 128:], 128)
        path = strips.finish({}, ["target"], None, "nearest")
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == 64 * 2**20, "the prediction's own cache is back"
    assert caches == [writer.COG_CACHE_BYTES]
    with rasterio.open(path) as cog:
        assert np.array_equal(cog.read(), block) and cog.profile["tiled"]
