"""Cloud over an area of interest, from an L2A product's scene classification (SCL).

A product's ``cloudCover`` is over the whole 110 km tile; an AOI in its clear corner can be clear under a
"70 % cloudy" scene. Ranking candidates by the SCL share over the AOI picks the scenes a job can use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shapely.geometry.base import BaseGeometry

if TYPE_CHECKING:
    import numpy as np

#: SCL classes that hide the ground: cloud shadow, cloud medium / high probability, thin cirrus.
CLOUDY_CLASSES = (3, 8, 9, 10)
#: SCL class of pixels with no data (outside the swath).
NO_DATA_CLASS = 0


def aoi_cloud_share(scl_path: Path, aoi: BaseGeometry) -> float | None:
    """Share (0–1) of the AOI's valid SCL pixels that are cloud or cloud shadow.

    ``aoi`` is in WGS84 longitude/latitude. None when the AOI holds no valid pixel of the product (outside the
    tile or all no data), so such a scene ranks after every scene with a figure.
    """
    import rasterio
    import rasterio.mask
    from shapely.geometry import mapping

    from torchbearer.imagery.aoi import WGS84, to_crs

    with rasterio.open(scl_path) as src:
        shape = mapping(to_crs(aoi, WGS84, src.crs))
        try:
            data, _ = rasterio.mask.mask(src, [shape], crop=True, filled=False, all_touched=True)
        except ValueError:  # the AOI does not overlap the raster
            return None
    return cloud_share(data[0].compressed())


def cloud_share(scl: np.ndarray) -> float | None:
    """Share (0–1) of the valid pixels of an SCL array (any shape) that are cloud or cloud shadow; None if
    every pixel is no data."""
    import numpy as np

    valid = scl[scl != NO_DATA_CLASS]
    if valid.size == 0:
        return None
    return float(np.isin(valid, CLOUDY_CLASSES).mean())
