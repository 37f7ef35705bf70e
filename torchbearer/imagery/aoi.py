"""The area of interest of an :class:`~torchbearer.imagery.spec.ImagerySpec` as one WGS84 geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

from torchbearer.imagery.spec import ImagerySpec, aoi_kind, parse_bbox

WGS84 = CRS.from_epsg(4326)
#: Search services take a polygon in the URL: simplify beyond this many vertices.
MAX_SEARCH_VERTICES = 60


class AoiError(ValueError):
    """The AOI cannot be read (names the file or value and why)."""


def to_crs(geometry: BaseGeometry, src: CRS | str, dst: CRS | str) -> BaseGeometry:
    """Reproject a geometry (axis order x, y: longitude first for EPSG:4326)."""
    src, dst = CRS.from_user_input(src), CRS.from_user_input(dst)
    if src == dst:
        return geometry
    transformer = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(geometry, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


def _read_file(path: Path) -> BaseGeometry:
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    if not path.is_file():
        raise AoiError(f"aoi file {path} does not exist")
    try:
        meta, _, geometries, _ = pyogrio.raw.read(path, read_geometry=True, columns=[])
    except (DataSourceError, DataLayerError, OSError) as exc:
        raise AoiError(f"aoi file {path} cannot be read: {exc}") from None
    shapes = [g for g in shapely.from_wkb(geometries) if g is not None and not g.is_empty]
    if not shapes:
        raise AoiError(f"aoi file {path} holds no geometry")
    merged = shapely.union_all(shapes)
    crs = meta.get("crs") or "EPSG:4326"
    return to_crs(merged, crs, WGS84)


def load_aoi(spec: ImagerySpec) -> BaseGeometry:
    """The spec's AOI as a WGS84 (longitude, latitude) geometry with an area."""
    kind = aoi_kind(spec.aoi)
    if kind == "bbox":
        geometry = shapely.box(*parse_bbox(spec.aoi))  # type: ignore[misc]
        geometry = to_crs(geometry, spec.aoi_crs, WGS84)
    elif kind == "wkt":
        geometry = to_crs(shapely.from_wkt(spec.aoi), spec.aoi_crs, WGS84)
    elif kind == "file":
        geometry = _read_file(Path(str(spec.aoi)))
    else:
        raise AoiError("no aoi given")
    if geometry.area == 0:
        raise AoiError(f"aoi {spec.aoi!r} has no area (a point or a line?): give a polygon or a bbox")
    minx, miny, maxx, maxy = geometry.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise AoiError(f"aoi bounds {geometry.bounds} are not longitude/latitude: is aoi_crs right?")
    return geometry


def search_polygon(geometry: BaseGeometry) -> BaseGeometry:
    """A polygon of at most :data:`MAX_SEARCH_VERTICES` vertices covering ``geometry`` (for search URLs)."""
    simple = geometry.geom_type == "Polygon" and not geometry.interiors
    if simple and len(geometry.exterior.coords) <= MAX_SEARCH_VERTICES:
        return geometry
    hull = geometry.convex_hull
    if hull.geom_type == "Polygon" and len(hull.exterior.coords) <= MAX_SEARCH_VERTICES:
        return hull
    return geometry.envelope
