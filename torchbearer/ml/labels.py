"""Training targets on a scene's grid, from georeferenced masks: rasters in any CRS (reprojected once) or
vector labels (rasterized once).

A target is a uint8 array with the scene's rows × columns: class indices ``0 … n-1``, and ``IGNORE`` where
nothing is known (outside every mask, a mask's own no data, the scene's no data). Raster masks hold class
indices. Vector labels burn class 1 (binary) or the class named by ``class_field`` (a class name or index)
into a background of class 0: the labels are taken to be exhaustive over the scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds

from torchbearer.imagery.cache import StackInfo

#: Target value of pixels that carry no label (the loss and the metrics skip them).
IGNORE = 255
RASTER_SUFFIXES = (".tif", ".tiff")
VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb")


class LabelError(ValueError):
    """Labels that cannot be used: missing, unreadable, off the scene, or with unknown classes."""


class NoLabels(LabelError):
    """No mask labels the scene (none overlaps it): training skips such a scene and says so."""


def mask_files(path: Path) -> list[Path]:
    """The mask files at ``path``: the file itself, or the rasters and vector files in a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in RASTER_SUFFIXES + VECTOR_SUFFIXES:
            raise LabelError(f"mask {path}: not a GeoTIFF ({', '.join(RASTER_SUFFIXES)}) or vector file")
        return [path]
    if not path.exists():
        raise LabelError(f"mask {path} not found")
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES + VECTOR_SUFFIXES)
    if not found:
        raise LabelError(f"mask folder {path} holds no GeoTIFF or vector file")
    return found


def scene_target(
    info: StackInfo,
    masks: list[Path],
    classes: list[str],
    class_field: str | None = None,
) -> np.ndarray:
    """The target of one scene from every mask that overlaps it (later masks win where they overlap).

    Raises:
        LabelError: no mask overlaps the scene, or a mask holds values that are not classes.
    """
    target = np.full((info.height, info.width), IGNORE, dtype=np.uint8)
    used = []
    for path in masks:
        if not _overlaps(path, info):
            continue
        if path.suffix.lower() in RASTER_SUFFIXES:
            layer = reproject_mask(path, info, len(classes))
        else:
            layer = rasterize_labels(path, info, classes, class_field)
        labelled = layer != IGNORE
        target[labelled] = layer[labelled]
        used.append(path)
    if not used or (target == IGNORE).all():
        names = ", ".join(str(p) for p in masks)
        raise NoLabels(f"no mask overlaps scene {info.path.name} ({_describe(info)}); masks: {names}")
    return target


def _describe(info: StackInfo) -> str:
    left, bottom, right, top = _bounds(info)
    return f"{info.crs.to_string()} [{left:.0f}, {bottom:.0f}, {right:.0f}, {top:.0f}]"


def _bounds(info: StackInfo) -> tuple[float, float, float, float]:
    t = info.transform
    xs = (t.c, t.c + t.a * info.width)
    ys = (t.f, t.f + t.e * info.height)
    return min(xs), min(ys), max(xs), max(ys)


def _overlaps(path: Path, info: StackInfo) -> bool:
    """Whether the mask's bounds, in the scene's CRS, intersect the scene."""
    if path.suffix.lower() in RASTER_SUFFIXES:
        try:
            with rasterio.open(path) as src:
                crs, bounds = src.crs, tuple(src.bounds)
        except rasterio.RasterioIOError as exc:
            raise LabelError(f"mask {path} is not a readable GeoTIFF (corrupt or truncated?): {exc}") from None
    else:
        crs, bounds = _vector_bounds(path)
    if crs is None:
        raise LabelError(f"mask {path} has no CRS: it cannot be placed on the scene")
    left, bottom, right, top = transform_bounds(crs, info.crs, *bounds, densify_pts=21)
    s_left, s_bottom, s_right, s_top = _bounds(info)
    return left < s_right and right > s_left and bottom < s_top and top > s_bottom


def reproject_mask(path: Path, info: StackInfo, num_classes: int) -> np.ndarray:
    """A class-index raster warped to the scene's grid (nearest neighbour); its no data and outside → IGNORE."""
    with rasterio.open(path) as src:
        if src.count != 1:
            raise LabelError(f"mask {path} has {src.count} bands; a mask has one band of class indices")
        data = src.read(1)
        nodata = src.nodata
        values = np.unique(data if nodata is None else data[data != nodata])
        bad = values[(values < 0) | (values >= num_classes)] if values.size else values
        if bad.size:
            raise LabelError(
                f"mask {path} holds values {bad[:5].tolist()} that are not classes 0 … {num_classes - 1} "
                "(set the raster's nodata for pixels without a label)"
            )
        source = np.where(data == nodata, IGNORE, data).astype(np.uint8) if nodata is not None else data
        target = np.full((info.height, info.width), IGNORE, dtype=np.uint8)
        reproject(
            source.astype(np.uint8),
            target,
            src_transform=src.transform,
            src_crs=src.crs,
            src_nodata=IGNORE,
            dst_transform=info.transform,
            dst_crs=info.crs,
            dst_nodata=IGNORE,
            resampling=Resampling.nearest,
        )
    return target


def _read_vector(path: Path, columns: list[str]) -> tuple[dict, list, dict]:
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError, FieldError

    try:
        meta, _, geometries, fields = pyogrio.raw.read(path, columns=columns)
    except (DataSourceError, DataLayerError, FieldError, OSError) as exc:
        raise LabelError(f"labels {path} cannot be read: {exc}") from None
    missing = [c for c in columns if c not in meta["fields"]]
    if missing:  # pyogrio skips unknown columns silently
        raise LabelError(f"labels {path} have no attribute {missing[0]!r} (they have {list(meta['fields'])})")
    return meta, list(geometries), dict(zip(meta["fields"], fields, strict=True))


def _vector_bounds(path: Path) -> tuple[str | None, tuple[float, float, float, float]]:
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    try:
        info = pyogrio.read_info(path, force_total_bounds=True)
    except (DataSourceError, DataLayerError, OSError) as exc:
        raise LabelError(f"labels {path} cannot be read: {exc}") from None
    if info.get("total_bounds") is None or info.get("features", 0) == 0:
        raise LabelError(f"labels {path} hold no feature")
    return info.get("crs") or "EPSG:4326", tuple(info["total_bounds"])


def rasterize_labels(path: Path, info: StackInfo, classes: list[str], class_field: str | None = None) -> np.ndarray:
    """Vector labels burnt onto the scene's grid: background 0, each feature its class (1 without a field)."""
    import shapely
    from rasterio.features import rasterize

    from torchbearer.imagery.aoi import to_crs

    meta, geometries, fields = _read_vector(path, [class_field] if class_field else [])
    crs = meta.get("crs") or "EPSG:4326"
    shapes = []
    for i, wkb in enumerate(geometries):
        geometry = shapely.from_wkb(wkb) if wkb is not None else None
        if geometry is None or geometry.is_empty:
            continue
        value = _class_value(fields[class_field][i], classes, path) if class_field else 1
        shapes.append((to_crs(geometry, crs, info.crs), value))
    if not shapes:
        raise LabelError(f"labels {path} hold no geometry")
    return rasterize(shapes, out_shape=(info.height, info.width), transform=info.transform, fill=0, dtype="uint8")


def _class_value(value: object, classes: list[str], path: Path) -> int:
    """A class index from an attribute value: a class name, or an index within range."""
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    try:
        index = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < len(classes):
        raise LabelError(f"labels {path}: class {value!r} is not one of {classes} nor an index into them")
    return index
