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

from tests.inference.conftest import CROP, card_for, save_checkpoint
from torchbearer.imagery import cache
from torchbearer.imagery.cache import build_stack
from torchbearer.inference import stream
from torchbearer.inference.ensemble import Member, PredictOptions, predict_scene
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
    threads = _spy(monkeypatch, cache, "_read_band")
    parallel = build_stack(CROP, 60, tmp_path / "parallel")
    assert len(threads) == 11 and all(t.startswith("band-decoder") for t in threads), threads
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
