"""The ``imagery:`` block of train and predict jobs, and the body of a ``download`` job.

It says where the Sentinel-2 scenes come from (Copernicus Data Space, Earth Search, or a local folder), which
area and dates, how cloudy at most, and at which resolution. Only light validation happens here (no raster or
HTTP imports): the AOI file is read, and the scenes are searched and fetched, by :mod:`torchbearer.imagery.fetch`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from torchbearer.spec import StrictModel

#: AOI files the reader understands (read with pyogrio, reprojected from the layer's own CRS).
AOI_FILE_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb")
#: Spectral bands stacked at each resolution, in stack order (see docs/architecture.md, scene cache).
BANDS_BY_RESOLUTION: dict[int, tuple[str, ...]] = {
    10: ("B02", "B03", "B04", "B08"),
    20: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12"),
    60: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12"),
}
_WKT_START = re.compile(r"^\s*(MULTI)?(POLYGON|POINT|LINESTRING)\b|^\s*GEOMETRYCOLLECTION\b", re.IGNORECASE)
_TILE = re.compile(r"^T?(\d{2}[C-X][A-Z]{2})$")


def parse_dates(value: str) -> tuple[date, date]:
    """``"YYYY-MM-DD/YYYY-MM-DD"`` (or one day ``"YYYY-MM-DD"``) → (first day, last day), both inclusive."""
    parts = [p.strip() for p in str(value).split("/")]
    if len(parts) not in (1, 2):
        raise ValueError(f"{value!r}: expected a range such as 2023-06-01/2023-09-30")
    try:
        days = [date.fromisoformat(p) for p in parts]
    except ValueError:
        raise ValueError(f"{value!r}: dates must be YYYY-MM-DD, a range as 2023-06-01/2023-09-30") from None
    first, last = days[0], days[-1]
    if last < first:
        raise ValueError(f"{value!r}: the range ends before it starts")
    return first, last


def parse_bbox(value: Any) -> tuple[float, float, float, float] | None:
    """A bbox from a list of 4 numbers or a ``"minx,miny,maxx,maxy"`` string; None if it is not one."""
    if isinstance(value, str):
        try:
            value = [float(p) for p in value.split(",")]
        except ValueError:
            return None  # not numbers: WKT or a path
        if len(value) == 1:
            return None
    if not isinstance(value, list | tuple):
        return None
    if len(value) != 4:
        raise ValueError(f"a bbox aoi needs 4 numbers [min x, min y, max x, max y], got {len(value)}")
    numbers = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError("bbox values must be finite numbers")
    minx, miny, maxx, maxy = numbers
    if minx >= maxx or miny >= maxy:
        raise ValueError(f"bbox {list(numbers)} must be [min x, min y, max x, max y] with min < max")
    return minx, miny, maxx, maxy


def aoi_kind(aoi: str | list[float] | None) -> Literal["bbox", "wkt", "file"] | None:
    """How an ``aoi`` value is to be read: a bbox, a WKT geometry, or a vector file path."""
    if aoi is None:
        return None
    if parse_bbox(aoi) is not None:
        return "bbox"
    if isinstance(aoi, str) and _WKT_START.match(aoi):
        return "wkt"
    return "file"


class ImagerySpec(StrictModel):
    """Which Sentinel-2 scenes a job needs and where to get them.

    ``aoi`` is a bbox ``[min x, min y, max x, max y]`` (in ``aoi_crs``, longitude/latitude by default), a WKT
    geometry (also in ``aoi_crs``), or a GeoJSON / GeoPackage / Shapefile path (in the file's own CRS).
    """

    source: Literal["copernicus", "earth-search", "local"] = "copernicus"
    aoi: list[float] | str | None = Field(None, description="bbox, WKT, or a vector file (any CRS)")
    aoi_crs: str = Field("EPSG:4326", description="CRS of a bbox or WKT aoi")
    dates: str | None = Field(None, description="sensing dates, YYYY-MM-DD/YYYY-MM-DD, both inclusive")
    max_cloud: float = Field(30.0, ge=0, le=100, description="largest scene cloud cover, percent")
    product: Literal["L2A", "L1C"] = "L2A"
    tiles: list[str] = Field(default_factory=list, description="MGRS tiles to keep, e.g. 29UNU (all if empty)")
    resolution: Literal[10, 20, 60] = Field(20, description="metres")
    max_scenes: int = Field(1, ge=1, le=500, description="at most this many scenes")
    pick: Literal["least-cloud", "newest"] = Field(
        "least-cloud",
        description="least-cloud: least cloud over the AOI, measured on the SCL layer (Copernicus: 60 m file; "
        "Earth Search: 20 m COG window) of the 3 × max_scenes least cloudy tiles (L1C: the tile's figure), ties "
        "to the newest; newest: latest",
    )
    paths: list[str] = Field(
        default_factory=list, description="local: SAFE folders or zips, GeoTIFFs, or folders of them"
    )
    whole_product: bool = Field(False, description="fetch every file of a product, not just the needed ones")

    @field_validator("dates", mode="before")
    @classmethod
    def _dates(cls, value: Any) -> str | None:
        # YAML turns a bare 2023-06-01 into a date: accept it as a one-day range.
        if isinstance(value, datetime):
            value = value.date()
        if isinstance(value, date):
            value = value.isoformat()
        if value is not None:
            parse_dates(value)
        return value

    @field_validator("aoi")
    @classmethod
    def _aoi(cls, value: list[float] | str | None) -> list[float] | str | None:
        kind = aoi_kind(value)
        if kind == "wkt":
            import shapely  # only when a WKT is given: keeps job-file parsing light

            try:
                geometry = shapely.from_wkt(value)
            except shapely.errors.ShapelyError as exc:
                raise ValueError(f"aoi is not valid WKT: {exc}") from None
            if geometry.is_empty or geometry.area == 0:
                raise ValueError("aoi WKT must be a polygon with an area")
        if kind == "file" and Path(str(value)).suffix.lower() not in AOI_FILE_SUFFIXES:
            raise ValueError(f"aoi {value!r} is neither a bbox, WKT nor a vector file ({', '.join(AOI_FILE_SUFFIXES)})")
        if kind == "bbox":
            return list(parse_bbox(value))  # type: ignore[arg-type]
        return value

    @field_validator("aoi_crs")
    @classmethod
    def _crs(cls, value: str) -> str:
        if not re.fullmatch(r"(EPSG|epsg):\d{4,6}|OGC:CRS84", value.strip()):
            raise ValueError(f"aoi_crs {value!r}: use an EPSG code such as EPSG:4326 or EPSG:32629")
        return value.strip().upper()

    @field_validator("tiles")
    @classmethod
    def _tiles(cls, value: list[str]) -> list[str]:
        tiles = []
        for tile in value:
            match = _TILE.match(tile.strip().upper())
            if not match:
                raise ValueError(f"tile {tile!r} is not an MGRS tile such as 29UNU or T29UNU")
            tiles.append(match.group(1))
        return tiles

    @model_validator(mode="after")
    def _source_needs(self) -> ImagerySpec:
        if self.source == "local":
            if not self.paths:
                raise ValueError("source local needs paths: folders of SAFE products or GeoTIFFs")
            return self
        missing = [name for name in ("aoi", "dates") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"source {self.source} needs {' and '.join(missing)}")
        if self.source == "earth-search" and self.product != "L2A":
            raise ValueError("earth-search serves L2A only: use product L2A or source copernicus")
        if self.paths:
            raise ValueError("paths is for source local only")
        return self

    @property
    def date_range(self) -> tuple[date, date]:
        """(first day, last day), inclusive."""
        if self.dates is None:
            raise ValueError("no dates given")
        return parse_dates(self.dates)

    @property
    def bands(self) -> tuple[str, ...]:
        """The spectral bands of the stack at :attr:`resolution`, in stack order."""
        return BANDS_BY_RESOLUTION[self.resolution]

    def with_paths(self, resolve: Callable[[str], Path]) -> ImagerySpec:
        """A copy with the AOI file and local ``paths`` made absolute by ``resolve`` (e.g. ``ctx.resolve``)."""
        changes: dict[str, Any] = {"paths": [str(resolve(p)) for p in self.paths]}
        if aoi_kind(self.aoi) == "file":
            changes["aoi"] = str(resolve(str(self.aoi)))
        return self.model_copy(update=changes)
