"""Earth Search (Element 84, no account): STAC search of ``sentinel-2-l2a``, windowed COG reads of the AOI.

Only the AOI window of each band is read, over HTTP range requests, at the chosen resolution (GDAL picks the
COG overview that fits, so a 60 m stack reads far less than the 10 m bands). The result is written in the
scene cache format (docs/architecture.md). Earth Search's ``earthsearch:boa_offset_applied`` flag and the
``raster:bands`` offsets are known to disagree with the pixels, so the ``BOA_ADD_OFFSET`` tag is decided from
the data itself (:func:`offset_from_data`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.windows import from_bounds
from shapely.geometry.base import BaseGeometry

from torchbearer.imagery.aoi import load_aoi, search_polygon, to_crs
from torchbearer.imagery.cache import CREATION_OPTIONS
from torchbearer.imagery.dataroot import scene_lock
from torchbearer.imagery.http import HttpClient, HttpError, Report, client_from_env
from torchbearer.imagery.scenes import FoundScene, parse_product_name, pick_for_spec, rank_by_aoi_cloud
from torchbearer.imagery.spec import ImagerySpec

log = logging.getLogger(__name__)

EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"
COLLECTION = "sentinel-2-l2a"
#: Sentinel-2 band → Earth Search v1 asset key.
ASSETS = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
    "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22",
}  # fmt: skip
#: The scene classification layer (cloud, shadow, water …), used to measure cloud over an AOI.
SCL_ASSET = "scl"
SCL_RESOLUTION = 20  # metres: read at its native grid, so classes are picked, never averaged
MAX_PAGES = 20
QUANTIFICATION = 10000
#: GDAL settings for COG reads over HTTP: no directory listings, retries, a block cache.
GDAL_HTTP = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
}


def scene_from_item(item: dict[str, Any]) -> FoundScene:
    """A :class:`FoundScene` from a STAC item (the item itself is kept in ``extra``)."""
    props = item["properties"]
    name = props.get("s2:product_uri") or item["id"]
    grid = str(props.get("grid:code", "")).removeprefix("MGRS-")
    parts = parse_product_name(name)
    return FoundScene(
        source="earth-search",
        id=item["id"],
        name=name,
        sensed=datetime.fromisoformat(props["datetime"].replace("Z", "+00:00")),
        cloud=props.get("eo:cloud_cover"),
        tile=grid or (parts["tile"] if parts else None),
        extra={"item": item},
    )


def search(client: HttpClient, url: str, spec: ImagerySpec, aoi: BaseGeometry, *, limit: int = 100) -> list[FoundScene]:
    """Items of ``sentinel-2-l2a`` over ``aoi`` in the spec's dates and cloud limit, following ``next`` links."""
    first, last = spec.date_range
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1) - timedelta(seconds=1)
    body: dict[str, Any] | None = {
        "collections": [COLLECTION],
        "intersects": shapely.geometry.mapping(search_polygon(aoi)),
        "datetime": f"{first.isoformat()}T00:00:00Z/{end.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        "query": {"eo:cloud_cover": {"lte": spec.max_cloud}},
        "limit": limit,
    }
    target: str | None = f"{url.rstrip('/')}/search"
    scenes: list[FoundScene] = []
    for _ in range(MAX_PAGES):
        if target is None:
            break
        page = client.post_json(target, json=body) if body is not None else client.get_json(target)
        try:
            scenes += [scene_from_item(item) for item in page.get("features", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise HttpError(f"{target}: unexpected item in the STAC answer ({exc})") from None
        following = next((link for link in page.get("links", []) if link.get("rel") == "next"), None)
        if following is None:
            break
        target = following.get("href")
        if following.get("method", "GET").upper() == "POST":
            body = {**body, **following["body"]} if following.get("merge") and body else following.get("body")
        else:
            body = None
    if spec.tiles:
        scenes = [s for s in scenes if s.tile in spec.tiles]
    return scenes


def offset_from_data(stack: np.ndarray, baseline: str | None, flag: bool | None) -> int:
    """``BOA_ADD_OFFSET`` (DN) of pixels read from Earth Search, judged from the pixels.

    From baseline 04.00 on, L2A DNs carry +1000, so dark surfaces (water, shadow) sit near DN 1000 and
    almost no pixel is below it; once someone has removed the offset, the darkest percent is far below.
    The median over bands of each band's 1st percentile of valid DNs tells the two apart; a scene too bright
    to tell (all cloud or snow) falls back to Earth Search's flag.
    """
    if baseline is None or baseline < "04.00":
        return 0
    lows = [np.percentile(band[band > 0], 1) for band in stack if np.count_nonzero(band) > 100]
    if lows:
        low = float(np.median(lows))
        if low < 500:
            return 0
        if low < 1500:
            return -1000
    return 0 if flag else -1000


def stack_name(scene: FoundScene, resolution: int, aoi: BaseGeometry) -> str:
    """Cache file name: a window is AOI-specific, so the AOI's hash joins the product and resolution."""
    digest = hashlib.sha1(shapely.to_wkb(shapely.normalize(aoi))).hexdigest()[:8]
    return f"{scene.name.removesuffix('.SAFE')}_{resolution}m_aoi{digest}.tif"


def _grid(item: dict[str, Any], aoi: BaseGeometry, resolution: int) -> tuple[str, tuple[float, ...]]:
    """CRS and bounds (metres, snapped outward to the resolution) of the AOI ∩ scene footprint."""
    props = item["properties"]
    epsg = props.get("proj:epsg") or str(props.get("proj:code", "")).removeprefix("EPSG:")
    if not epsg:
        raise HttpError(f"item {item['id']}: no proj:epsg, cannot place the window")
    crs = f"EPSG:{int(epsg)}"
    footprint = shapely.geometry.shape(item["geometry"]).intersection(aoi)
    if footprint.is_empty:
        raise HttpError(f"item {item['id']} does not overlap the AOI")
    minx, miny, maxx, maxy = to_crs(footprint, "EPSG:4326", crs).bounds
    snap = float(resolution)
    bounds = (
        np.floor(minx / snap) * snap, np.floor(miny / snap) * snap,
        np.ceil(maxx / snap) * snap, np.ceil(maxy / snap) * snap,
    )  # fmt: skip
    return crs, tuple(float(b) for b in bounds)


def _read_band(href: str, crs: str, bounds: tuple[float, ...], resolution: int) -> np.ndarray:
    minx, miny, maxx, maxy = bounds
    shape = (round((maxy - miny) / resolution), round((maxx - minx) / resolution))
    # GDAL options are per thread: each transfer thread sets them for its own reads.
    with rasterio.Env(**GDAL_HTTP), rasterio.open(href) as src:
        if src.crs != crs:
            raise HttpError(f"{href}: CRS {src.crs} differs from the item's {crs}")
        left, bottom, right, top = src.bounds
        clipped = (max(minx, left), max(miny, bottom), min(maxx, right), min(maxy, top))
        out = np.zeros(shape, dtype="uint16")
        if clipped[0] >= clipped[2] or clipped[1] >= clipped[3]:
            return out
        rows = slice(round((maxy - clipped[3]) / resolution), round((maxy - clipped[1]) / resolution))
        cols = slice(round((clipped[0] - minx) / resolution), round((clipped[2] - minx) / resolution))
        # Averaging when shrinking finer bands, nearest when enlarging coarser ones (no invented detail).
        resampling = Resampling.average if src.res[0] < resolution else Resampling.nearest
        out[rows, cols] = src.read(
            1,
            window=from_bounds(*clipped, transform=src.transform),
            out_shape=(rows.stop - rows.start, cols.stop - cols.start),
            resampling=resampling,
        )
    return out


def aoi_cloud_share(scene: FoundScene, aoi: BaseGeometry) -> float | None:
    """Cloud share (0–1) over the AOI window, read from the item's SCL COG at its native 20 m; None without one."""
    from torchbearer.imagery.cloud import cloud_share

    item = scene.extra["item"]
    asset = item.get("assets", {}).get(SCL_ASSET)
    if asset is None:
        return None
    crs, bounds = _grid(item, aoi, SCL_RESOLUTION)
    return cloud_share(_read_band(asset["href"], crs, bounds, SCL_RESOLUTION))


def read_window(
    scene: FoundScene, aoi: BaseGeometry, resolution: int, bands: tuple[str, ...], *, connections: int = 4
) -> tuple[np.ndarray, Any, str]:
    """The AOI window of ``bands`` at ``resolution`` metres: (array bands×rows×cols uint16, transform, CRS)."""
    item = scene.extra["item"]
    crs, bounds = _grid(item, aoi, resolution)
    missing = [b for b in bands if ASSETS[b] not in item.get("assets", {})]
    if missing:
        raise HttpError(f"item {item['id']} has no asset for {', '.join(missing)}")
    hrefs = [item["assets"][ASSETS[b]]["href"] for b in bands]
    with ThreadPoolExecutor(max_workers=connections) as pool:
        layers = list(pool.map(lambda href: _read_band(href, crs, bounds, resolution), hrefs))
    return np.stack(layers), from_origin(bounds[0], bounds[3], resolution, resolution), crs


def write_stack(
    path: Path, stack: np.ndarray, transform: Any, crs: str, bands: tuple[str, ...], tags: dict[str, Any]
) -> None:
    """Write a stack with the scene cache's creation options (imagery/cache.py), band names and tags."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    profile = {**CREATION_OPTIONS, "crs": crs, "transform": transform, "count": stack.shape[0],
               "height": stack.shape[1], "width": stack.shape[2]}  # fmt: skip
    with rasterio.open(part, "w", **profile) as dst:
        dst.write(stack)
        for index, band in enumerate(bands, 1):
            dst.set_band_description(index, band)
        dst.update_tags(**{k: str(v) for k, v in tags.items()})
    part.replace(path)


def build_stack(
    scene: FoundScene, aoi: BaseGeometry, spec: ImagerySpec, cache_dir: Path, *, report: Report | None = None,
    connections: int = 4,
) -> Path:  # fmt: skip
    """Read the AOI window of ``scene`` and write it to the scene cache; returns the GeoTIFF path."""
    path = cache_dir / stack_name(scene, spec.resolution, aoi)
    if path.is_file():
        return path
    if report is not None:
        report(stage="downloading", done=0, total=len(spec.bands), unit="bands", scene=scene.stem, force=True)
    stack, transform, crs = read_window(scene, aoi, spec.resolution, spec.bands, connections=connections)
    props = scene.extra["item"]["properties"]
    baseline = props.get("s2:processing_baseline") or scene.baseline
    offset = offset_from_data(stack, baseline, props.get("earthsearch:boa_offset_applied"))
    tags = {
        "BOA_ADD_OFFSET": offset, "QUANTIFICATION_VALUE": QUANTIFICATION, "PRODUCT": scene.stem,
        "RESOLUTION": spec.resolution, "PROCESSING_BASELINE": baseline or "", "SOURCE": "earth-search",
    }  # fmt: skip
    write_stack(path, stack, transform, crs, spec.bands, tags)
    if report is not None:
        report(stage="downloading", done=len(spec.bands), total=len(spec.bands), unit="bands", scene=scene.stem,
               force=True)  # fmt: skip
    log.info("%s: %s window %s written to %s (BOA_ADD_OFFSET %d)", scene.stem, spec.resolution, stack.shape, path,
             offset)  # fmt: skip
    return path


def scene_stacks(
    spec: ImagerySpec,
    data_dir: Path,
    report: Report | None,
    env: Callable[[str], str | None],
    should_stop: Callable[[], bool],
) -> list[Path]:
    """The stacks of the scenes ``spec`` picks on Earth Search: the AOI window of each, read from its COGs."""
    aoi = load_aoi(spec)
    url = env("EARTH_SEARCH_URL") or EARTH_SEARCH_URL
    with client_from_env(env) as client:
        found = search(client, url, spec, aoi)
        if spec.pick == "least-cloud":
            found = rank_by_aoi_cloud(spec, found, lambda scene: aoi_cloud_share(scene, aoi))
        stacks = []
        for scene in pick_for_spec(spec, found):
            with scene_lock(data_dir, scene.stem, should_stop):
                stacks.append(build_stack(scene, aoi, spec, data_dir / "cache", report=report,
                                          connections=client.connections))  # fmt: skip
    return stacks
