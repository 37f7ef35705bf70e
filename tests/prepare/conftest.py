"""Fixtures of the preparation tests: the committed real 60 m crop of T29UNU (``data/``), stacked once, and
its cloud target (``masks/``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely

from tests.daemon.conftest import tolerant_daemon  # noqa: F401 - a fixture: bad-input jobs fail on purpose
from torchbearer.prepare.rasters import scene_raster

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
CLOUD_TIF = ROOT / "masks" / "t29unu_cloud.tif"
CLOUD_GEOJSON = ROOT / "masks" / "t29unu_cloud.geojson"


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample SAFE crop stacked at 60 m through the project's own scene path (320 × 512 px, 11 bands)."""
    return scene_raster(SAMPLE, 60, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def scene_array(scene: Path) -> np.ndarray:
    with rasterio.open(scene) as src:
        return src.read()


def write_polygons(path: Path, polygons: list, crs: str, **fields: list) -> Path:
    """A vector file (driver from the suffix) of ``polygons`` with attribute columns ``fields``."""
    driver = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".shp": "ESRI Shapefile"}[path.suffix]
    names = list(fields)
    data = [np.array(values, dtype=object if isinstance(values[0], str) else None) for values in fields.values()]
    pyogrio.raw.write(path, shapely.to_wkb(polygons), data, names, driver=driver, geometry_type="Polygon", crs=crs)
    return path
