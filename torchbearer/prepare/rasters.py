"""What the preparation steps share: a pixel grid, opening any scene the project reads, the value domain.

The value domain is the seed project's blank-mask lesson: imagery scaled twice looks fine to the eye and
trains to nothing. Every raster ``prepare`` writes carries a ``VALUE_DOMAIN`` tag saying what its numbers are:

- ``dn``: digital numbers as Sentinel-2 delivers them (uint16; reflectance = (DN + BOA_ADD_OFFSET) / 10000);
- ``reflectance``: surface reflectance, about 0–1 (float);
- ``uint8``: 8-bit values 0–255 (an RGB export, a rescaled image).

Values are copied, never rescaled: a chip holds the scene's own numbers with the scene's domain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from torchbearer.allocator import map_large_blocks
from torchbearer.imagery.grid import Grid
from torchbearer.prepare import PrepareError

#: GeoTIFF tag (and ``prepare.json`` key) that names the value domain of what ``prepare`` writes.
DOMAIN_TAG = "VALUE_DOMAIN"
DOMAINS = ("dn", "reflectance", "uint8")
#: Tags of a scene that say how to read its values; copied onto every chip and mosaic.
VALUE_TAGS = ("BOA_ADD_OFFSET", "QUANTIFICATION_VALUE", "PRODUCT", "RESOLUTION", "PROCESSING_BASELINE")
#: Mask value of pixels without a label (padding, ignore bands); the same as ``ml.labels.IGNORE``.
IGNORE = 255

Report = Callable[..., Any]
#: GDAL block cache while a step runs: a band of chips' tiles, flat whatever the scene's size (rasterio passes an
#: integer ``GDAL_CACHEMAX`` as bytes). GDAL's default, 5 % of the RAM, would grow with the scene.
GDAL_CACHE_BYTES = 64 * 2**20


@contextmanager
def bounded_memory() -> Iterator[None]:
    """Run a step with a fixed GDAL block cache and large blocks mapped by glibc, so its resident set does not
    grow with the scene. Blocks of 1 MiB and more are mapped and unmapped (``mallopt(M_MMAP_THRESHOLD)``)
    because chips and table blocks freed by several threads otherwise fragment glibc's heap arenas
    (``torchbearer.allocator.map_large_blocks``)."""
    map_large_blocks()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        yield


def no_report(*_args: Any, **_kwargs: Any) -> None:
    """A ``report`` that drops progress events."""


def open_raster(path: Path) -> Any:
    """``rasterio.open`` with a message that names the file when GDAL cannot read it."""
    if not Path(path).exists():
        raise PrepareError(f"raster {path} does not exist")
    try:
        return rasterio.open(path)
    except rasterio.RasterioIOError as exc:
        raise PrepareError(f"{path} is not a raster GDAL can read: {exc}") from None


def scene_raster(
    path: Path, resolution: int, data_dir: Path, report: Report = no_report, should_stop: Callable[[], bool] = bool
) -> Path:
    """A raster for any scene the project reads: a SAFE folder or zip is stacked (once) into the scene cache
    at ``resolution`` metres through :func:`torchbearer.imagery.acquire.acquire`; a GeoTIFF or any other
    raster GDAL reads (VRT, JP2, …) is used as it is."""
    from torchbearer.imagery.acquire import acquire, local_imagery, one_scene
    from torchbearer.imagery.local import is_safe

    path = Path(path)
    if is_safe(path) or path.suffix.lower() == ".zip":
        scenes = acquire(local_imagery([path], resolution), data_dir, [resolution], report=report,
                         should_stop=should_stop)  # fmt: skip
        return one_scene(scenes, str(path))[0]
    open_raster(path).close()
    return path


def value_domain(dataset: Any) -> str:
    """What a raster's values are: its ``VALUE_DOMAIN`` tag, else guessed from the type and a decimated read
    (8-bit → ``uint8``; integers → ``dn``; floats whose median is at most 3 → ``reflectance``, else ``dn``: bright
    cloud reaches reflectance 2, while real DN sit in the hundreds to thousands)."""
    tagged = dataset.tags().get(DOMAIN_TAG)
    if tagged in DOMAINS:
        return tagged
    dtype = np.dtype(dataset.dtypes[0])
    if dtype == np.uint8:
        return "uint8"
    if dtype.kind in "iu":
        return "dn"
    scale = max(1, max(dataset.width, dataset.height) // 256)
    sample = dataset.read(1, out_shape=(max(1, dataset.height // scale), max(1, dataset.width // scale)))
    sample = sample[np.isfinite(sample) & (sample != (dataset.nodata if dataset.nodata is not None else np.nan))]
    return "reflectance" if sample.size == 0 or np.median(sample) <= 3 else "dn"


def band_names(dataset: Any) -> list[str]:
    """The bands' descriptions (``B01`` …), or ``band_1`` … where a band has none."""
    return [d or f"band_{i}" for i, d in enumerate(dataset.descriptions, 1)]


def value_tags(dataset: Any) -> dict[str, str]:
    """The tags that say how to read a scene's values (offset, quantification, product …) plus its domain."""
    tags = dataset.tags()
    kept = {key: tags[key] for key in VALUE_TAGS if key in tags}
    kept[DOMAIN_TAG] = value_domain(dataset)
    return kept


def same_grid(a: Grid, b: Grid) -> bool:
    """Whether two grids have one CRS, one transform (to a millionth of a pixel) and one size."""
    return (
        a.crs == b.crs
        and (a.width, a.height) == (b.width, b.height)
        and a.transform.almost_equals(b.transform, precision=1e-6 * max(a.resolution, 1e-9))
    )


def check_mask_grid(scene_path: Path, scene: Grid, mask_path: Path, mask: Grid) -> None:
    """Refuse a mask that is not on the scene's grid (rasterize vector labels onto the scene first)."""
    if not same_grid(scene, mask):
        raise PrepareError(
            f"mask {mask_path} ({mask.describe()}) is not on the grid of scene {scene_path} ({scene.describe()}): "
            "rasterize the labels onto the scene (the rasterize step) or warp the mask first"
        )


def open_mask(path: Path, scene_path: Path, scene: Grid) -> Any:
    """Open a mask for a scene: one uint8 band of class values (255 = no label) on the scene's grid."""
    dataset = open_raster(path)
    try:
        check_mask_grid(scene_path, scene, path, Grid.of(dataset))
        if dataset.count != 1 or dataset.dtypes[0] != "uint8":
            raise PrepareError(
                f"mask {path} has {dataset.count} band(s) of {dataset.dtypes[0]}; a mask is one uint8 band of "
                "class values, 255 = no label (the rasterize step writes one)"
            )
    except BaseException:
        dataset.close()
        raise
    return dataset
