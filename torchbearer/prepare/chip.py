"""The ``chip`` step: a scene (and its mask) → fixed-size georeferenced chips in the roof-classify layout.

Layout of a chip folder (what ``train`` reads)::

    <folder>/train_frames/train_0.tif …   the scene's bands, its own values and dtype (never rescaled)
    <folder>/train_masks/train_0.tif …    uint8 class indices, 255 = no label (when a mask is given)
    <folder>/val_frames/ val_masks/ (test_frames/ test_masks/)   after the split step
    <folder>/chips.gpkg                    chip footprints (scene CRS): name, split, frame, mask, row, col, …
    <folder>/prepare.json                  the manifest: value domain, no-data values, bands, chip size, splits

Chips start at the scene's upper-left corner every ``size - overlap`` pixels; the last row and column of chips
reach past the scene's edge and are padded with the no-data value (recorded in each chip and the manifest,
so padding is never read as dark or white pixels), masks with 255. Chips that hold no valid pixel are
skipped, and with ``positive_only`` those whose mask has no pixel above 0.

The scene is read a band of chips at a time (one read serves every chip in it) and chips are written by a
few threads while the next band is read: memory stays flat however large the scene is.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from torchbearer.imagery.grid import Grid
from torchbearer.prepare import PrepareError, Stopped
from torchbearer.prepare.rasters import (
    DOMAIN_TAG,
    IGNORE,
    Report,
    band_names,
    no_report,
    open_mask,
    open_raster,
    value_tags,
)

MANIFEST = "prepare.json"
INDEX = "chips.gpkg"
SPLITS = ("train", "val", "test")
#: Chip files: ZSTD at its fastest level with horizontal differencing, about as small as DEFLATE for DN
#: imagery at a fraction of its time; strips, since a chip is always read whole.
CHIP_PROFILE: dict[str, Any] = {"driver": "GTiff", "compress": "zstd", "zstd_level": 1, "predictor": 2,
                                "interleave": "pixel"}  # fmt: skip
#: Most pixel columns read at once: bounds the memory of one read whatever the scene's width.
READ_COLUMNS = 2048
WRITERS = 4


@dataclass
class Chip:
    """One chip: its file stem (``train_0``), split, and upper-left pixel in the scene."""

    name: str
    split: str
    row: int
    col: int
    valid_share: float
    positive_share: float | None


@dataclass
class ChipManifest:
    """``prepare.json``: what a chip folder holds (read by ``split``, ``summarize`` and ``train``)."""

    value_domain: str
    dtype: str
    bands: list[str]
    nodata: float
    size: int
    overlap: int
    crs: str
    resolution: float
    scene: str
    mask: str | None = None
    mask_nodata: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    split: dict[str, Any] | None = None

    def write(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> ChipManifest:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise PrepareError(f"{folder} is not a chip folder: {MANIFEST} is missing (make it with the chip step)")
        return cls(**json.loads(path.read_text()))


def chip_starts(length: int, size: int, stride: int) -> list[int]:
    """Upper-left offsets along one axis: every ``stride`` pixels until a chip reaches the far edge."""
    starts = [0]
    while starts[-1] + size < length:
        starts.append(starts[-1] + stride)
    return starts


def chip_path(folder: Path, split: str, name: str, what: str = "frames") -> Path:
    """``<folder>/<split>_<what>/<name>.tif`` (``what``: ``frames`` or ``masks``)."""
    return folder / f"{split}_{what}" / f"{name}.tif"


def chip_scene(
    scene: Path,
    output: Path,
    *,
    size: int,
    mask: Path | None = None,
    overlap: int = 0,
    positive_only: bool = False,
    nodata: float | None = None,
    report: Report = no_report,
    should_stop: Callable[[], bool] = bool,
) -> ChipManifest:
    """Cut ``scene`` (and ``mask``, on the same grid) into chips under ``output``, all in the train split.

    Args:
        size: chip edge, pixels. overlap: pixels shared by neighbouring chips (< size).
        nodata: padding and no-data value of the frames; default the scene's own, else 0.

    Raises:
        PrepareError: a chip larger than the scene, an overlap not below the size, a mask on another grid.
        Stopped: ``should_stop`` turned true (files written so far stay; the next run starts over).
    """
    if not 0 <= overlap < size:
        raise PrepareError(f"overlap {overlap} must be at least 0 and below the chip size {size}")
    with open_raster(scene) as src:
        grid = Grid.of(src)
        if size > grid.width or size > grid.height:
            raise PrepareError(
                f"chip size {size} is larger than scene {scene} ({grid.width} × {grid.height} pixels): "
                "choose a size up to the scene's smaller side"
            )
        if src.crs is None:
            raise PrepareError(f"scene {scene} has no CRS: chips could not be placed")
        fill = nodata if nodata is not None else (src.nodata if src.nodata is not None else 0)
        manifest = ChipManifest(
            value_domain=value_tags(src)[DOMAIN_TAG], dtype=src.dtypes[0], bands=band_names(src), nodata=fill,
            size=size, overlap=overlap, crs=src.crs.to_string(), resolution=grid.resolution, scene=str(scene),
            mask=str(mask) if mask else None, mask_nodata=IGNORE if mask else None, tags=value_tags(src),
        )  # fmt: skip
        mask_src = open_mask(mask, scene, grid) if mask is not None else None
        try:
            _reset(output)
            chips = _write_chips(src, mask_src, output, manifest, positive_only, report, should_stop)
        finally:
            if mask_src is not None:
                mask_src.close()
    if not chips:
        raise PrepareError(f"scene {scene}: every chip is no data{' or has no positive pixel' * positive_only}")
    manifest.splits = {"train": len(chips)}
    write_index(output, chips, manifest)
    manifest.write(output)
    return manifest


def _reset(output: Path) -> None:
    """Empty the chip folders of an earlier run (a re-run must not leave stale chips behind)."""
    output.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        for what in ("frames", "masks"):
            shutil.rmtree(output / f"{split}_{what}", ignore_errors=True)
    for name in (INDEX, MANIFEST):
        (output / name).unlink(missing_ok=True)


def _bands_of_chips(grid: Grid, size: int, stride: int) -> Iterator[tuple[int, list[int]]]:
    """(row, columns) of each read: one row of chips, at most :data:`READ_COLUMNS` pixels wide."""
    cols = chip_starts(grid.width, size, stride)
    per_read = max(1, (READ_COLUMNS - size) // stride + 1)
    for row in chip_starts(grid.height, size, stride):
        for i in range(0, len(cols), per_read):
            yield row, cols[i : i + per_read]


def _read_padded(ds: Any, row: int, col: int, height: int, width: int, fill: float) -> np.ndarray:
    """Bands × ``height`` × ``width`` from (row, col), the part outside the raster filled with ``fill``."""
    rows, cols = min(height, ds.height - row), min(width, ds.width - col)
    data = ds.read(window=Window(col, row, cols, rows))
    if (rows, cols) == (height, width):
        return data
    out = np.empty((ds.count, height, width), dtype=data.dtype)  # filled only where the scene ends
    out[:, :rows, :cols] = data
    out[:, rows:, :] = fill
    out[:, :rows, cols:] = fill
    return out


def _write_chips(
    src: Any,
    mask_src: Any,
    output: Path,
    manifest: ChipManifest,
    positive_only: bool,
    report: Report,
    should_stop: Callable[[], bool],
) -> list[Chip]:
    size, stride, fill = manifest.size, manifest.size - manifest.overlap, manifest.nodata
    grid = Grid.of(src)
    reads = list(_bands_of_chips(grid, size, stride))
    total = sum(len(cols) for _, cols in reads)
    frame_profile = {**CHIP_PROFILE, "count": src.count, "dtype": src.dtypes[0], "nodata": fill, "crs": src.crs,
                     "width": size, "height": size}  # fmt: skip
    mask_profile = {**CHIP_PROFILE, "count": 1, "dtype": "uint8", "nodata": IGNORE, "crs": src.crs,
                    "width": size, "height": size}  # fmt: skip
    (output / "train_frames").mkdir(parents=True)
    if mask_src is not None:
        (output / "train_masks").mkdir(parents=True)
    chips: list[Chip] = []
    pending: list[Future] = []
    done = 0
    with ThreadPoolExecutor(WRITERS) as pool:
        for row, cols in reads:
            if should_stop():
                raise Stopped(f"chipping stopped at chip {done} of {total}")
            width = cols[-1] + size - cols[0]
            frames = _read_padded(src, row, cols[0], size, width, fill)
            masks = _read_padded(mask_src, row, cols[0], size, width, IGNORE)[0] if mask_src is not None else None
            for col in cols:
                x = col - cols[0]
                frame = frames[:, :, x : x + size]
                valid = (frame != fill).all(axis=0)
                label = masks[:, x : x + size] if masks is not None else None
                if not valid.any() or (positive_only and not ((label > 0) & (label != IGNORE)).any()):
                    continue
                positive = None if label is None else float(((label > 0) & (label != IGNORE)).mean())
                chip = Chip(f"train_{len(chips)}", "train", row, col, float(valid.mean()), positive)
                chips.append(chip)
                transform = src.window_transform(Window(col, row, size, size))
                pending.append(pool.submit(_write, chip_path(output, "train", chip.name), frame,
                                           {**frame_profile, "transform": transform}, manifest))  # fmt: skip
                if label is not None:
                    pending.append(pool.submit(_write, chip_path(output, "train", chip.name, "masks"), label[None],
                                               {**mask_profile, "transform": transform}, None))  # fmt: skip
            done += len(cols)
            while len(pending) > 4 * WRITERS:  # bounded: a slow disk must not pile chips up in memory
                pending.pop(0).result()
            report("chipping", done=done, total=total, unit="chips", step="chip")
        for future in pending:
            future.result()
    return chips


def _write(path: Path, data: np.ndarray, profile: dict[str, Any], manifest: ChipManifest | None) -> None:
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if manifest is not None:  # a frame: its bands and how to read its values
            dst.update_tags(**manifest.tags)
            for i, name in enumerate(manifest.bands, 1):
                dst.set_band_description(i, name)
        else:
            dst.update_tags(CONTENT="class indices; 255 = no label")


def write_index(folder: Path, chips: list[Chip], manifest: ChipManifest) -> Path:
    """The GeoPackage of chip footprints (scene CRS) with each chip's split and files."""
    import pyogrio.raw
    import shapely
    from rasterio.transform import Affine

    from torchbearer.prepare.rasters import open_raster as _open

    path = folder / INDEX
    path.unlink(missing_ok=True)
    with _open(Path(manifest.scene)) as src:
        transform: Affine = src.transform
    size = manifest.size
    boxes = []
    for chip in chips:
        x0, y0 = transform @ (chip.col, chip.row)
        x1, y1 = transform @ (chip.col + size, chip.row + size)
        boxes.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    has_mask = manifest.mask is not None
    fields = ["name", "split", "frame", "mask", "row", "col", "valid_share", "positive_share"]
    data = [
        np.array([c.name for c in chips], dtype=object),
        np.array([c.split for c in chips], dtype=object),
        np.array([f"{c.split}_frames/{c.name}.tif" for c in chips], dtype=object),
        np.array([f"{c.split}_masks/{c.name}.tif" if has_mask else "" for c in chips], dtype=object),
        np.array([c.row for c in chips], dtype=np.int32),
        np.array([c.col for c in chips], dtype=np.int32),
        np.array([c.valid_share for c in chips], dtype=np.float64),
        np.array([np.nan if c.positive_share is None else c.positive_share for c in chips], dtype=np.float64),
    ]
    pyogrio.raw.write(path, shapely.to_wkb(boxes), data, fields, layer="chips", driver="GPKG",
                      geometry_type="Polygon", crs=manifest.crs)  # fmt: skip
    return path


def read_index(folder: Path) -> list[Chip]:
    """The chips listed in a folder's GeoPackage index."""
    import pyogrio.raw

    path = Path(folder) / INDEX
    if not path.is_file():
        raise PrepareError(f"{folder} is not a chip folder: {INDEX} is missing (make it with the chip step)")
    meta, _, _, values = pyogrio.raw.read(path, read_geometry=False)
    col = dict(zip(meta["fields"], values, strict=True))
    return [
        Chip(str(n), str(s), int(r), int(c), float(v), None if np.isnan(p) else float(p))
        for n, s, r, c, v, p in zip(
            col["name"], col["split"], col["row"], col["col"], col["valid_share"], col["positive_share"], strict=True
        )
    ]
