"""The scene cache: a SAFE product's bands stacked once into one tiled, compressed GeoTIFF per resolution, and
the helpers that read a window of such a stack as reflectance plus a valid mask (training and prediction).

Format (docs/architecture.md): ``<cache>/<product name>_<res>m.tif``, uint16 DN as in the product, one band
per spectral band named by its description (``B01`` …), nodata 0, tiles of 256² pixels, ZSTD compressed, tags
``BOA_ADD_OFFSET``, ``QUANTIFICATION_VALUE``, ``PRODUCT``, ``RESOLUTION`` and ``PROCESSING_BASELINE``.
Reflectance = (DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE; DN 0 is no data.

A stack is built once: the builder holds an flock on ``<stack>.lock`` (two processes never build the same
stack; the second finds it done), writes ``<stack>.<pid>.part`` and renames it, so a reader never sees half a
file.
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from torchbearer.imagery.safe import SafeError, SafeProduct, read_safe
from torchbearer.imagery.spec import BANDS_BY_RESOLUTION
from torchbearer.locks import file_lock

log = logging.getLogger(__name__)

#: Threads decoding a product's bands when stacking it (one band each).
DECODE_THREADS = max(1, os.cpu_count() or 1)
#: Tile edge of a stack, pixels.
TILE = 256
#: Creation options of a stack: tiles for window reads, ZSTD (decodes about twice as fast as DEFLATE here)
#: with horizontal differencing, which suits smooth uint16 imagery.
CREATION_OPTIONS: dict[str, Any] = {
    "driver": "GTiff",
    "dtype": "uint16",
    "nodata": 0,
    "tiled": True,
    "blockxsize": TILE,
    "blockysize": TILE,
    "compress": "zstd",
    "predictor": 2,
    "interleave": "band",  # written band by band: pixel interleaving would recompress every tile per band
    "bigtiff": "if_safer",
}


class StackError(ValueError):
    """A scene stack cannot be built or read (names the file and what is wrong)."""


def stack_path(cache_dir: Path, product: str, resolution: int) -> Path:
    """Where the stack of ``product`` (name without ``.SAFE``) at ``resolution`` metres lives."""
    return Path(cache_dir) / f"{product.removesuffix('.SAFE')}_{resolution}m.tif"


def build_stack(safe_dir: Path, resolution: int, cache_dir: Path, *, report: Callable[..., Any] | None = None) -> Path:
    """Stack the spectral bands of the SAFE folder ``safe_dir`` at ``resolution`` metres (once).

    ``report`` is called as ``report(stage="preparing data", done=bands, total=bands, unit="bands", scene=…)``.
    Returns the stack's path; a stack already built is returned at once.

    Raises:
        StackError: the product lacks metadata or band files, or a band cannot be decoded.
    """
    try:
        product = read_safe(safe_dir)
        bands = product.bands(resolution)
        sources = {band: product.band_file(band, resolution) for band in bands}
    except SafeError as exc:
        raise StackError(str(exc)) from None
    path = stack_path(cache_dir, product.name, resolution)
    if path.is_file():
        return path
    missing = [str(p.relative_to(product.path)) for p in sources.values() if not p.is_file()]
    if missing:
        raise StackError(f"{product.name}: band files missing for the {resolution} m stack: {', '.join(missing)}")
    offsets = {product.offset(band) for band in bands}
    if len(offsets) > 1:
        raise StackError(f"{product.name}: bands have different offsets {sorted(offsets)}; one stack needs one")
    with file_lock(path.with_name(path.name + ".lock")):  # released by the kernel if this process dies
        if path.is_file():  # another process built it while we waited
            return path
        part = path.with_name(f"{path.name}.{os.getpid()}.part")
        try:
            _write_stack(product, sources, resolution, offsets.pop(), part, report)
            part.replace(path)
        finally:
            part.unlink(missing_ok=True)
    log.info("%s: %d bands stacked at %d m into %s", product.name, len(bands), resolution, path)
    return path


def _grid(product: SafeProduct, sources: dict[str, Path], resolution: int) -> tuple[Any, Any, int, int]:
    """CRS, transform, width and height of the stack (from the first band, scaled to ``resolution``)."""
    with rasterio.open(next(iter(sources.values()))) as src:
        scale = resolution / src.res[0]
        transform = src.transform @ src.transform.scale(scale, scale)
        return src.crs, transform, round(src.width / scale), round(src.height / scale)


def _write_stack(
    product: SafeProduct,
    sources: dict[str, Path],
    resolution: int,
    offset: int,
    part: Path,
    report: Callable[..., Any] | None,
) -> None:
    crs, transform, width, height = _grid(product, sources, resolution)
    profile = {**CREATION_OPTIONS, "crs": crs, "transform": transform, "width": width, "height": height}
    profile["count"] = len(sources)
    with rasterio.open(part, "w", **profile) as dst:
        for index, (band, data) in enumerate(
            zip(sources, _decoded(list(sources.values()), width, height), strict=True), 1
        ):
            if report is not None:
                report(stage="preparing data", done=index - 1, total=len(sources), unit="bands", scene=product.name)
            dst.write(data, index)
            dst.set_band_description(index, band)
        dst.update_tags(
            BOA_ADD_OFFSET=str(offset),
            QUANTIFICATION_VALUE=f"{product.quantification:g}",
            PRODUCT=product.name,
            RESOLUTION=str(resolution),
            PROCESSING_BASELINE=product.baseline,
        )
    if report is not None:
        report(stage="preparing data", done=len(sources), total=len(sources), unit="bands", scene=product.name)


def _decoded(sources: list[Path], width: int, height: int) -> Iterator[np.ndarray]:
    """The bands decoded by :data:`DECODE_THREADS` threads, one band per thread, yielded in order.

    JPEG 2000 decoding holds no lock, so bands decode side by side (OpenJPEG also spreads a band's tiles over
    GDAL's own threads); at most one band per thread is held decoded ahead of the one being written.
    """
    workers = max(1, min(DECODE_THREADS, len(sources)))
    if workers == 1:
        yield from (_read_band(source, width, height) for source in sources)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="band-decoder") as pool:
        pending = deque(pool.submit(_read_band, source, width, height) for source in sources[:workers])
        rest = iter(sources[workers:])
        try:
            while pending:
                data = pending.popleft().result()
                if (source := next(rest, None)) is not None:
                    pending.append(pool.submit(_read_band, source, width, height))
                yield data
        finally:
            for future in pending:
                future.cancel()


def _read_band(source: Path, width: int, height: int) -> np.ndarray:
    """A band at the stack's size: L1C bands at another native resolution are averaged down (or repeated up)."""
    try:
        with rasterio.open(source) as src:
            coarser = width < src.width
            return src.read(
                1, out_shape=(height, width), resampling=Resampling.average if coarser else Resampling.nearest
            )
    except rasterio.RasterioIOError as exc:
        raise StackError(f"{source}: cannot decode ({exc})") from None


# -- reading stacks ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackInfo:
    """What a stacked scene holds: band names in file order, the reflectance terms, and its grid."""

    path: Path
    bands: tuple[str, ...]
    offset: float
    quantification: float
    crs: Any
    transform: Any
    width: int
    height: int
    #: ``L1C`` (top of atmosphere) or ``L2A`` (bottom of atmosphere), from the tags; None when they do not say.
    product_level: str | None = None

    @property
    def resolution(self) -> float:
        """Pixel size, metres."""
        return abs(self.transform.a)

    @property
    def reflectance_terms(self) -> tuple[float, float]:
        """``(scale, shift)`` with reflectance = DN × scale + shift, i.e. (DN + offset) / quantification."""
        return 1.0 / self.quantification, self.offset / self.quantification


#: Pixel sizes within this share of the asked resolution count as equal (rounding in a user's GeoTIFF).
RESOLUTION_TOLERANCE = 0.01
_LEVEL = re.compile(r"MSI(L1C|L2A)")


def product_level(tags: dict[str, str]) -> str | None:
    """``L1C`` / ``L2A`` from a stack's ``PROCESSING_LEVEL`` tag or its ``PRODUCT`` name; None if neither says."""
    level = tags.get("PROCESSING_LEVEL", "").upper().replace("LEVEL-", "L")
    if level in ("L1C", "L2A"):
        return level
    match = _LEVEL.search(tags.get("PRODUCT", ""))
    return match.group(1) if match else None


def pixel_size(path: Path, crs: Any, transform: Any) -> float:
    """The pixel size of a stack in metres; refuses a CRS not in metres (degrees give no usable size).

    Training and prediction refuse such a scene alike, with the same message naming its CRS.
    """
    name = crs.to_string() if crs is not None else "none"
    if crs.is_geographic:
        raise StackError(
            f"scene {path} is in {name}, a geographic CRS (pixel size {abs(transform.a):g} degrees): torchbearer "
            "needs a projected CRS in metres, as Sentinel-2 products come (UTM): reproject it, e.g. "
            f"gdalwarp -t_srs EPSG:326<zone> -tr 20 20 {path.name} out.tif"
        )
    units, factor = crs.linear_units_factor
    if abs(factor - 1.0) > 1e-9:
        raise StackError(f"scene {path} is in {name}, whose units are {units}, not metres: reproject it (UTM)")
    if abs(transform.a) != abs(transform.e) or transform.b or transform.d:
        raise StackError(f"scene {path} has non-square or rotated pixels ({transform.a:g} × {transform.e:g})")
    return abs(transform.a)


def stack_info(path: Path, resolution: int | None = None) -> StackInfo:
    """Open a stack (a cache file, or a user's GeoTIFF of uint16 DN) and check it.

    A GeoTIFF without band descriptions is taken to hold the bands of its resolution in stack order; one
    without the offset tag gets offset 0 and quantification 10000. ``resolution`` (metres, what the job says)
    must be the stack's pixel size: a 60 m file read as 20 m would get the 20 m band names.

    Raises:
        StackError: missing or unreadable file, a CRS not in metres, a pixel size other than ``resolution``
            (or than its ``RESOLUTION`` tag), values that are not uint16 DN, or the wrong band count.
    """
    path = Path(path)
    if not path.is_file():
        raise StackError(f"scene {path} not found")
    try:
        with rasterio.open(path) as ds:
            tags, descriptions = ds.tags(), ds.descriptions
            dtype, count, crs, transform = ds.dtypes[0], ds.count, ds.crs, ds.transform
            width, height = ds.width, ds.height
    except rasterio.RasterioIOError as exc:
        raise StackError(f"scene {path} is not a readable GeoTIFF (corrupt or truncated?): {exc}") from None
    if crs is None:
        raise StackError(f"scene {path} has no CRS: it cannot be matched with its masks")
    size = pixel_size(path, crs, transform)
    tagged = tags.get("RESOLUTION")
    if tagged is not None and not _same_size(float(tagged), size):
        raise StackError(f"scene {path} has {size:g} m pixels but its RESOLUTION tag says {tagged} m")
    if resolution is not None and not _same_size(resolution, size):
        raise StackError(
            f"scene {path} has {size:g} m pixels, but the job asks for resolution: {resolution}: set resolution: "
            f"{round(size)} (or leave it out to use the scene's own) — its bands would be named as {resolution} m "
            "bands otherwise"
        )
    if dtype != "uint16":
        raise StackError(
            f"scene {path} holds {dtype} values; scenes must be uint16 DN as Sentinel-2 delivers them "
            "(reflectance scaled again would be double-scaled)"
        )
    resolution = resolution or round(size)
    bands = tuple(descriptions) if all(descriptions) else BANDS_BY_RESOLUTION.get(resolution, ())
    if len(bands) != count or not bands:
        expected = BANDS_BY_RESOLUTION.get(resolution, ())
        raise StackError(
            f"scene {path} has {count} bands; a {resolution} m stack has {len(expected)} "
            f"({' '.join(expected)}) or names its bands in the band descriptions"
        )
    return StackInfo(
        path=path,
        bands=bands,
        offset=float(tags.get("BOA_ADD_OFFSET", 0)),
        quantification=float(tags.get("QUANTIFICATION_VALUE", 10000)),
        crs=crs,
        transform=transform,
        width=width,
        height=height,
        product_level=product_level(tags),
    )


def _same_size(resolution: float, size: float) -> bool:
    return abs(size - resolution) <= RESOLUTION_TOLERANCE * resolution


def band_indexes(info: StackInfo, bands: list[str] | tuple[str, ...]) -> list[int]:
    """1-based indexes of ``bands`` in the stack (for ``rasterio`` reads), in the order asked."""
    missing = [b for b in bands if b not in info.bands]
    if missing:
        raise StackError(f"scene {info.path} lacks bands {', '.join(missing)} (it has {' '.join(info.bands)})")
    return [info.bands.index(b) + 1 for b in bands]


def read_dn(dataset: Any, window: Window | None = None, indexes: list[int] | None = None) -> np.ndarray:
    """DN of ``window`` (bands × rows × columns, uint16); pixels outside the scene read as 0 (no data)."""
    return dataset.read(indexes, window=window, boundless=window is not None, fill_value=0)


def valid_pixels(dn: np.ndarray) -> np.ndarray:
    """Pixels with data in every band (rows × columns, bool): DN 0 in any band is no data."""
    return (dn != 0).all(axis=-3)


def to_reflectance(dn: np.ndarray, offset: float, quantification: float) -> tuple[np.ndarray, np.ndarray]:
    """(reflectance float32, valid bool): ``(DN + offset) / quantification``; no-data pixels read 0."""
    valid = valid_pixels(dn)
    reflectance = (dn.astype(np.float32) + np.float32(offset)) / np.float32(quantification)
    reflectance *= np.expand_dims(valid, -3)
    return reflectance, valid


def read_reflectance(
    info: StackInfo, window: Window | None = None, bands: list[str] | tuple[str, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance and valid mask of ``window`` of a stack (the whole scene when ``window`` is None)."""
    indexes = band_indexes(info, bands) if bands is not None else None
    with rasterio.open(info.path) as ds:
        dn = read_dn(ds, window, indexes)
    return to_reflectance(dn, info.offset, info.quantification)
