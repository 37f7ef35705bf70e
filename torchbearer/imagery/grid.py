"""The georeferenced pixel grid: the one type for "where a raster's pixels are" (a scene stack, a map).

:class:`~torchbearer.imagery.cache.StackInfo` is a grid with bands and reflectance terms; inference resamples
between grids and writes its maps on one. Imports nothing heavy (rasterio's CRS is only a type here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affine import Affine


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

    def same_as(self, other: Grid) -> bool:
        """Same CRS, transform (to rounding) and size: rows of one are rows of the other."""
        return (
            self.crs == other.crs
            and self.transform.almost_equals(other.transform)
            and (self.width, self.height) == (other.width, other.height)
        )
