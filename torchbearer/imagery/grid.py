"""The georeferenced pixel grid: the one type for "where a raster's pixels are" (a scene stack, a map).

:class:`~torchbearer.imagery.cache.StackInfo` is a grid with bands and reflectance terms; inference resamples
between grids and writes its maps on one; ``prepare`` rasterizes, chips and mosaics on one. Imports nothing
heavy (rasterio's CRS is only a type here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from affine import Affine


class GridError(ValueError):
    """The numbers given do not make a pixel grid (an empty extent, a pixel size not above zero)."""


@dataclass(frozen=True)
class Grid:
    """A georeferenced pixel grid: CRS, affine transform (CRS units), size in pixels."""

    crs: Any
    transform: Affine
    width: int
    height: int

    @property
    def resolution(self) -> float:
        """Pixel width in CRS units (metres for the UTM grids of Sentinel-2)."""
        return abs(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS units."""
        t = self.transform
        xs = (t.c, t.c + t.a * self.width)
        ys = (t.f, t.f + t.e * self.height)
        return min(xs), min(ys), max(xs), max(ys)

    def describe(self) -> str:
        """Size in pixels, CRS and bounds (CRS units, rounded), for messages."""
        left, bottom, right, top = self.bounds
        return f"{self.width} × {self.height} pixels, {self.crs} [{left:.0f}, {bottom:.0f}, {right:.0f}, {top:.0f}]"

    @classmethod
    def of(cls, dataset: Any) -> Grid:
        """The grid of an open rasterio dataset."""
        return cls(dataset.crs, dataset.transform, dataset.width, dataset.height)

    @classmethod
    def from_extent(cls, bounds: tuple[float, float, float, float], resolution: float, crs: Any) -> Grid:
        """A north-up grid covering ``bounds`` (left, bottom, right, top; CRS units) with square pixels of
        ``resolution`` CRS units; the last row and column reach past ``bounds`` when it is not a whole number of
        pixels."""
        left, bottom, right, top = bounds
        if resolution <= 0 or right <= left or top <= bottom:
            raise GridError(f"extent {list(bounds)} with resolution {resolution} is not a grid")
        width = math.ceil((right - left) / resolution - 1e-9)
        height = math.ceil((top - bottom) / resolution - 1e-9)
        return cls(crs, Affine(resolution, 0, left, 0, -resolution, top), width, height)

    def same_as(self, other: Grid) -> bool:
        """Same CRS, transform (to rounding) and size: rows of one are rows of the other."""
        return (
            self.crs == other.crs
            and self.transform.almost_equals(other.transform)
            and (self.width, self.height) == (other.width, other.height)
        )
