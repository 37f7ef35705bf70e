"""The patches step: a scene and a class raster → a EuroSAT-style patch set (a folder of GeoTIFFs per class).

This is the input the ``classify`` kind reads (``data: {root: …}``). The scene is cut into non-overlapping
``size`` × ``size`` windows; a window's class is the majority of the class raster's values among those each
class gathers (e.g. the SCL band's 8, 9 and 10 for ``cloud``). A window with no data in the scene or the class
raster, or whose majority covers less than ``purity`` of it, is left out; ``per_class`` caps each class by a
seeded draw, so a cloudy scene does not drown the other classes. Patches keep the scene's values, band names,
value tags and domain (never rescaled) and their own georeferencing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from torchbearer.imagery.grid import Grid
from torchbearer.prepare import PrepareError, Stopped
from torchbearer.prepare.rasters import Report, no_report, open_raster, same_grid, value_tags


def window_classes(
    labels: np.ndarray,
    size: int,
    classes: Mapping[str, Sequence[int]],
    purity: float,
    nodata: int | None = None,
    valid: np.ndarray | None = None,
) -> dict[tuple[int, int], str]:
    """Class of each ``size``-pixel window of a class grid, keyed by its (row, column) origin in pixels.

    ``valid`` (same shape, bool) marks the scene's valid pixels; a window holding ``nodata`` or an invalid pixel
    is left out, and so is one whose majority class covers less than ``purity`` of its pixels.
    """
    found = {}
    for row in range(0, labels.shape[0] - size + 1, size):
        for col in range(0, labels.shape[1] - size + 1, size):
            window = labels[row : row + size, col : col + size]
            if (nodata is not None and (window == nodata).any()) or (
                valid is not None and not valid[row : row + size, col : col + size].all()
            ):
                continue
            counts = {name: int(np.isin(window, list(values)).sum()) for name, values in classes.items()}
            name, count = max(counts.items(), key=lambda item: item[1])
            if count >= purity * window.size:
                found[(row, col)] = name
    return found


def label_patches(
    scene: Path,
    labels: Path,
    out: Path,
    *,
    classes: Mapping[str, Sequence[int]],
    size: int = 16,
    purity: float = 0.6,
    per_class: int | None = 100,
    seed: int = 0,
    label_nodata: int | None = None,
    report: Report = no_report,
    should_stop: Callable[[], bool] = bool,
) -> dict[str, int]:
    """Write the patch set of ``scene`` labelled by ``labels`` under ``out/<class>/<row>_<col>.tif``; returns the
    patch count per class. ``labels`` must be on the scene's grid (the SCL band of a SAFE product is, at 60 m);
    its no-data value is ``label_nodata``, else the raster's own (the SCL band declares none but uses 0)."""
    if size < 2:
        raise PrepareError(f"patch size {size} must be at least 2 pixels")
    with open_raster(scene) as src, open_raster(labels) as lab:
        grid, label_grid = Grid.of(src), Grid.of(lab)
        if not same_grid(grid, label_grid):
            raise PrepareError(f"class raster {labels} ({label_grid.describe()}) is not on the grid of scene "
                               f"{scene} ({grid.describe()})")  # fmt: skip
        if size > min(src.width, src.height):
            raise PrepareError(f"patch size {size} px is larger than the scene ({src.width} × {src.height} px)")
        label_values = lab.read(1)
        valid = src.read_masks(1) > 0
        nodata = lab.nodata if label_nodata is None else label_nodata
        found = window_classes(label_values, size, classes, purity, nodata, valid)
        chosen = _draw(found, classes, per_class, seed)
        if not any(chosen.values()):
            raise PrepareError(f"no {size}² window of {scene} has ≥ {purity:.0%} of one class of "
                               f"{dict(classes)} in {labels}")  # fmt: skip
        profile = {"driver": "GTiff", "width": size, "height": size, "count": src.count, "dtype": src.dtypes[0],
                   "crs": src.crs, "compress": "deflate", "predictor": 2, "nodata": src.nodata}  # fmt: skip
        tags = value_tags(src)
        total, done = sum(len(o) for o in chosen.values()), 0
        for name, origins in chosen.items():
            (out / name).mkdir(parents=True, exist_ok=True)
            for row, col in origins:
                if should_stop():
                    raise Stopped("patches: stopped on request")
                window = Window(col, row, size, size)
                path = out / name / f"{row:04d}_{col:04d}.tif"
                with rasterio.open(path, "w", transform=src.window_transform(window), **profile) as dst:
                    dst.write(src.read(window=window))
                    dst.descriptions = src.descriptions
                    dst.update_tags(**tags, CLASS=name)
                done += 1
                report(stage="preparing data", done=done, total=total, unit="patches")
    return {name: len(origins) for name, origins in chosen.items()}


def _draw(
    found: dict[tuple[int, int], str], classes: Mapping[str, Sequence[int]], per_class: int | None, seed: int
) -> dict[str, list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    chosen = {}
    for name in classes:
        origins = sorted(o for o, label in found.items() if label == name)
        if per_class is not None and len(origins) > per_class:
            origins = sorted(origins[i] for i in rng.choice(len(origins), per_class, replace=False))
        chosen[name] = origins
    return chosen
