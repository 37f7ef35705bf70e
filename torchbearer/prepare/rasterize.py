"""The ``rasterize`` step: vector labels (GeoJSON, GeoPackage, Shapefile; any CRS) burnt onto a pixel grid.

The grid is a scene's (the mask then lines up with it pixel for pixel) or an extent and resolution. Each
feature burns a value: 1, or its class attribute mapped through ``values`` (or taken as a number). Later
features cover earlier ones, so the burn order decides overlaps: the file's order, by the burnt value (higher
on top) or by area (small polygons on top of the large ones that contain them). An optional ignore band
marks the uncertain pixels along polygon edges with 255, which the loss and the metrics skip.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio

from torchbearer.imagery.grid import Grid
from torchbearer.prepare import PrepareError
from torchbearer.prepare.rasters import IGNORE, Report, no_report

#: Creation options of a mask: tiled, lossless, no data 255 (no label).
MASK_PROFILE = {"driver": "GTiff", "dtype": "uint8", "count": 1, "nodata": IGNORE, "tiled": True,
                "blockxsize": 256, "blockysize": 256, "compress": "deflate"}  # fmt: skip

Order = Literal["file", "attribute", "area"]


def rasterize_labels(
    labels: Path,
    grid: Grid,
    output: Path,
    *,
    attribute: str | None = None,
    values: dict[str, int] | None = None,
    order: Order = "file",
    all_touched: bool = False,
    ignore_edge: int = 0,
    report: Report = no_report,
) -> dict[int, int]:
    """Burn ``labels`` onto ``grid`` into the uint8 GeoTIFF ``output``; returns the pixel count of each value.

    Args:
        attribute: the class attribute; without it every feature burns 1.
        values: attribute value (as text) → burnt value 1–254; without it the attribute must hold numbers.
        order: ``file``, ``attribute`` (higher values on top) or ``area`` (smaller polygons on top).
        all_touched: burn every pixel a polygon touches, not only those whose centre it covers.
        ignore_edge: pixels; pixels whose centre lies within this distance of a polygon edge (either side)
            become 255 (ignored). 0 for none.

    Raises:
        PrepareError: unreadable labels, an attribute they lack (the message lists those they have), values
            without a mapping, or labels that do not overlap the grid.
    """
    import shapely
    from rasterio.features import rasterize

    from torchbearer.imagery.aoi import to_crs
    from torchbearer.ml.labels import LabelError, _read_vector, _vector_bounds

    labels = Path(labels)
    try:
        if attribute is not None:
            check_attribute(labels, attribute)
        crs, bounds = _vector_bounds(labels)
        _check_overlap(labels, crs, bounds, grid)
        meta, geometries, fields = _read_vector(labels, [attribute] if attribute else [])
    except LabelError as exc:
        raise PrepareError(str(exc)) from None
    crs = meta.get("crs") or "EPSG:4326"
    report("rasterizing", done=0, total=len(geometries), unit="features", step="rasterize")
    shapes = []
    for i, wkb in enumerate(geometries):
        geometry = shapely.from_wkb(wkb) if wkb is not None else None
        if geometry is None or geometry.is_empty:
            continue
        value = _value(fields[attribute][i], attribute, values, labels) if attribute else 1
        shapes.append((to_crs(geometry, crs, grid.crs), value))
    if not shapes:
        raise PrepareError(f"labels {labels} hold no geometry")
    if order == "attribute":
        shapes.sort(key=lambda shape: shape[1])  # stable: equal values keep the file's order
    elif order == "area":
        shapes.sort(key=lambda shape: -shape[0].area)
    out_shape = (grid.height, grid.width)
    burnt = rasterize(shapes, out_shape=out_shape, transform=grid.transform, fill=0, all_touched=all_touched,
                      dtype="uint8")  # fmt: skip
    if ignore_edge > 0:
        edges = [geometry.boundary.buffer(ignore_edge * grid.resolution) for geometry, _ in shapes]
        band = rasterize([(e, 1) for e in edges], out_shape=out_shape, transform=grid.transform, fill=0,
                         dtype="uint8")  # fmt: skip
        burnt[band == 1] = IGNORE
    write_mask(burnt, grid, output, tags={"LABELS": labels.name, "ATTRIBUTE": attribute or ""})
    report("rasterizing", done=len(geometries), total=len(geometries), unit="features", step="rasterize")
    counts = np.bincount(burnt.ravel(), minlength=256)
    return dict(Counter({int(v): int(counts[v]) for v in np.flatnonzero(counts)}))


def write_mask(mask: np.ndarray, grid: Grid, output: Path, tags: dict[str, str] | None = None) -> None:
    """Write a class-index mask (rows × columns, uint8; 255 = no label) on ``grid``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    profile = {**MASK_PROFILE, "crs": grid.crs, "transform": grid.transform, "width": grid.width,
               "height": grid.height}  # fmt: skip
    if grid.width < 256 or grid.height < 256:
        profile.update(tiled=False)  # a tile larger than the raster is refused by some readers
        profile.pop("blockxsize"), profile.pop("blockysize")
    with rasterio.open(output, "w", **profile) as dst:
        dst.write(mask, 1)
        dst.update_tags(**(tags or {}))


def _check_overlap(labels: Path, crs: str, bounds: tuple[float, ...], grid: Grid) -> None:
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(crs, grid.crs, *bounds, densify_pts=21)
    g_left, g_bottom, g_right, g_top = grid.bounds
    if not (left < g_right and right > g_left and bottom < g_top and top > g_bottom):
        raise PrepareError(
            f"labels {labels} (bounds {[round(b, 4) for b in bounds]} in {crs}) do not overlap the grid "
            f"({grid.describe()})"
        )


def _value(raw: object, attribute: str, values: dict[str, int] | None, labels: Path) -> int:
    """The burnt value of one feature from its attribute."""
    if values is not None:
        key = str(raw)
        if key not in values:
            raise PrepareError(
                f"labels {labels}: attribute {attribute!r} value {raw!r} has no entry in values ({sorted(values)})"
            )
        return values[key]
    try:
        number = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = -1.0
    if not (number.is_integer() and 0 <= number < IGNORE):
        raise PrepareError(
            f"labels {labels}: attribute {attribute!r} holds {raw!r}, not a class value 0–254: "
            f"map its values with values: {{{raw}: 1, …}}"
        )
    return int(number)


def check_attribute(labels: Path, attribute: str) -> None:
    """Refuse an attribute the labels lack, listing those they have."""
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    try:
        fields = list(pyogrio.read_info(labels)["fields"])
    except (DataSourceError, DataLayerError, OSError) as exc:
        raise PrepareError(f"labels {labels} cannot be read: {exc}") from None
    if attribute not in fields:
        raise PrepareError(f"labels {labels} have no attribute {attribute!r} (they have {fields})")
