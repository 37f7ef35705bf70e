"""Writing prediction maps strip by strip, then as a Cloud-Optimized GeoTIFF, resumably.

While a prediction runs, each map is a plain uncompressed GeoTIFF next to the output (``<name>.partial.tif``)
that finished strips of rows are written into, so memory holds one strip at a time whatever the scene's size.
``<output>.resume.json`` records how many rows are done and a fingerprint of the inputs and options; a run that
finds a matching record continues at that row, one that does not starts over. At the end each partial file is
copied into a COG (tiled 256 × 256, DEFLATE, overviews) written under a temporary name and renamed into place.

Probabilities are stored as uint8 ``round(p × 254)`` (0–254) with 255 as the no-data value, so that every
probability keeps a value distinct from no data; the band's scale (1/254) says how to read them back.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from torchbearer.allocator import give_back_free_memory

NODATA = 255
"""No-data value of every uint8 map written here."""
PROBABILITY_SCALE = 254
"""A probability ``p`` is stored as ``round(p × PROBABILITY_SCALE)``."""
COG_BLOCK = 256
"""Tile size (pixels) of the written COGs."""
COG_CACHE_BYTES = 16 * 2**20
"""GDAL's block cache while a partial file becomes a COG. The COG driver fills whatever cache it is given
(about its size plus 40 MiB above the process's base for a 10980² map: 62 MiB with 16 MiB, 136 MiB with 64 MiB)
and is no faster with more, so a large scene's map would otherwise set the prediction's peak memory."""


def quantise(prob: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Probabilities (float, any shape ending in the valid mask's) → uint8 0–254, 255 where not ``valid``."""
    scaled = np.multiply(prob, np.float32(PROBABILITY_SCALE), dtype=np.float32)  # the one temporary
    np.clip(scaled, 0.0, PROBABILITY_SCALE, out=scaled)
    out = np.rint(scaled, out=scaled).astype(np.uint8)
    out[..., ~valid] = NODATA
    return out


def partial_path(path: Path) -> Path:
    """Where a map is written strip by strip before it becomes a COG at ``path``."""
    return path.with_name(path.name + ".partial.tif")


class StripWriter:
    """One map (uint8 unless told) written in strips of rows into its partial file.

    Args:
        path: the final COG's path.
        profile: rasterio profile of the output grid (``crs``, ``transform``, ``width``, ``height``).
        count: number of bands.
        resume: reopen an existing partial file instead of creating a new one.
        dtype: the bands' type (``float32`` for maps in their own units, e.g. class activation maps).
        nodata: the no-data value (NaN suits a float map).
    """

    def __init__(
        self,
        path: Path,
        profile: dict[str, Any],
        count: int,
        resume: bool,
        dtype: str = "uint8",
        nodata: float = NODATA,
    ) -> None:
        self.path = path
        self.partial = partial_path(path)
        if resume and self.partial.exists():
            self.dataset = rasterio.open(self.partial, "r+")
        else:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            self.dataset = rasterio.open(
                self.partial,
                "w",
                driver="GTiff",
                width=profile["width"],
                height=profile["height"],
                count=count,
                dtype=dtype,
                crs=profile["crs"],
                transform=profile["transform"],
                nodata=nodata,
                BIGTIFF="IF_SAFER",
            )

    def write(self, block: np.ndarray, row: int) -> None:
        """Write ``block`` (bands × rows × width, of the map's type) starting at scene row ``row``."""
        _, rows, width = block.shape
        self.dataset.write(block, window=Window(0, row, width, rows))

    def close(self) -> None:
        """Flush and close the partial file (again is a no-op)."""
        if not self.dataset.closed:
            self.dataset.close()

    def finish(
        self,
        tags: dict[str, str],
        descriptions: list[str],
        scale: float | None,
        resampling: str,
    ) -> Path:
        """Turn the partial file into the final COG and delete it; returns the COG's path.

        Args:
            tags: dataset tags (e.g. which models, how combined, when).
            descriptions: one description per band.
            scale: the bands' scale factor (stored value × scale = probability), or None for class maps.
            resampling: GDAL overview resampling (``average`` for probabilities, ``nearest`` for classes).
        """
        ds = self.dataset
        ds.update_tags(**tags)
        for band, description in enumerate(descriptions, start=1):
            ds.set_band_description(band, description)
        if scale is not None:
            ds.scales = (scale,) * ds.count
        ds.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        floating = np.dtype(ds.dtypes[0]).kind == "f"
        with rasterio.Env(GDAL_CACHEMAX=COG_CACHE_BYTES):  # bytes: rasterio passes an integer as bytes
            give_back_free_memory()  # the blocks the smaller cache let go were other threads' (readers')
            rasterio.shutil.copy(
                self.partial,
                tmp,
                driver="COG",
                COMPRESS="DEFLATE",
                PREDICTOR="3" if floating else "2",  # floating-point prediction for float maps
                BLOCKSIZE=str(COG_BLOCK),
                OVERVIEWS="IGNORE_EXISTING",
                OVERVIEW_RESAMPLING=resampling.upper(),
                BIGTIFF="IF_SAFER",
                NUM_THREADS="1",
            )
        os.replace(tmp, self.path)
        self.partial.unlink()
        return self.path


class ResumeRecord:
    """``<output>.resume.json``: rows done and the fingerprint of the run that wrote them."""

    def __init__(self, output: Path, fingerprint: str) -> None:
        self.path = output.with_name(output.name + ".resume.json")
        self.fingerprint = fingerprint

    def load(self) -> dict[str, Any] | None:
        """The record of an earlier run of the same prediction, or None (absent, unreadable, other inputs)."""
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("fingerprint") != self.fingerprint:
            return None
        return record

    def save(self, rows_done: int, started: float) -> None:
        """Record that rows ``< rows_done`` are written (atomically: a torn record must not be trusted)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "rows_done": rows_done, "started": started}))
        os.replace(tmp, self.path)

    def clear(self) -> None:
        """Forget the record once the output is complete."""
        self.path.unlink(missing_ok=True)


class BackgroundWriter:
    """Runs writes in a thread so the model does not wait for the disk; ``max_pending`` bounds queued strips."""

    def __init__(self, max_pending: int = 2) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="map-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread by submit()/join()
                    self._error = exc

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; raises an error an earlier job hit."""
        if self._error is not None:
            raise self._error
        self._queue.put(job)

    def join(self) -> None:
        """Wait for every queued write; raises an error one of them hit."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
