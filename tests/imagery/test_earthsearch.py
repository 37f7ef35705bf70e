"""Earth Search through a real local STAC API and COG files: windowed reads, resolutions, the offset check."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.warp import transform_geom
from rasterio.windows import Window

from tests.imagery.fake_services import DATA
from torchbearer.imagery.cache import stack_info
from torchbearer.imagery.earthsearch import ASSETS, SCL_ASSET, offset_from_data
from torchbearer.imagery.fetch import ensure_scenes
from torchbearer.imagery.scenes import NoScenesError
from torchbearer.imagery.spec import ImagerySpec

#: 128² pixels of the sample's 60 m grid (land, lake, cloud): the COGs are made from it.
WINDOW = Window(col_off=100, row_off=100, width=128, height=128)
NATIVE = {"B01": 60, "B09": 60, "B02": 10, "B03": 10, "B04": 10, "B08": 10}  # others 20 m


def _write_cog(path: Path, data: np.ndarray, crs, transform) -> None:
    profile = {"driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1, "dtype": data.dtype,
               "crs": crs, "transform": transform, "nodata": 0}  # fmt: skip
    with rasterio.MemoryFile() as memory:
        with memory.open(**profile) as tmp:
            tmp.write(data, 1)
        with memory.open() as tmp:
            rasterio.shutil.copy(tmp, path, driver="COG", blocksize=256, overview_resampling="average")


@pytest.fixture(scope="session")
def cogs(sample_safe, tmp_path_factory) -> tuple[Path, dict]:
    """COGs at each band's native resolution (the 60 m pixels repeated; B8A stands in for B08, which the
    60 m crop lacks) for two items: ``raw`` (DN as delivered) and ``shifted`` (offset already removed).
    Returns the COG folder and the source window's 60 m DN per band (raw)."""
    folder = tmp_path_factory.mktemp("cogs")
    source = {}
    for band in ASSETS:
        found = next(sample_safe.glob(f"GRANULE/*/IMG_DATA/R60m/*_{'B8A' if band == 'B08' else band}_60m.jp2"))
        with rasterio.open(found) as src:
            source[band] = src.read(1, window=WINDOW)
            crs, transform60 = src.crs, src.window_transform(WINDOW)
    for item in ("raw", "shifted"):
        (folder / item).mkdir()
        for band, dn in source.items():
            if item == "shifted":
                dn = np.where(dn > 0, np.clip(dn.astype(np.int32) - 1000, 1, None), 0).astype("uint16")
            factor = 60 // NATIVE.get(band, 20)
            fine = np.repeat(np.repeat(dn, factor, 0), factor, 1)
            transform = transform60 @ transform60.scale(1 / factor, 1 / factor)
            _write_cog(folder / item / f"{band}.tif", fine, crs, transform)
    # SCL at its native 20 m: the real classes for ``shifted``, clear (vegetation) wherever there is data for
    # ``raw``, so ``raw`` is the one to pick by cloud over the AOI whatever the items' tile-wide figures say.
    with rasterio.open(next(sample_safe.glob("GRANULE/*/IMG_DATA/R60m/*_SCL_60m.jp2"))) as src:
        scl = src.read(1, window=WINDOW)
    transform20 = transform60 @ transform60.scale(1 / 3, 1 / 3)
    for item, classes in (("raw", np.where(scl > 0, 4, 0).astype("uint8")), ("shifted", scl)):
        _write_cog(folder / item / "SCL.tif", np.repeat(np.repeat(classes, 3, 0), 3, 1), crs, transform20)
    return folder, {"crs": crs, "transform": transform60, "dn": source, "scl": scl}


@pytest.fixture
def earth_search(services, cogs) -> dict:
    """The fake's STAC API serving the two items (rewritten from a real Earth Search v1 item)."""
    folder, grid = cogs
    real = json.loads((DATA / "earth_search_v1_item_S2A_39QTA_20230628_0_L2A.json").read_text())
    minx, maxy = grid["transform"] @ (0, 0)
    maxx, miny = grid["transform"] @ (WINDOW.width, WINDOW.height)
    footprint = transform_geom(grid["crs"], "EPSG:4326", {"type": "Polygon", "coordinates": [
        [[minx, miny], [maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny]]]})  # fmt: skip
    items = []
    for name, day, cloud in (("raw", "05", 20.0), ("shifted", "06", 30.0)):
        item = copy.deepcopy(real)
        item["id"] = f"S2A_29UNU_202210{day}_0_L2A"
        item["geometry"] = footprint
        item["properties"] |= {
            "datetime": f"2022-10-{day}T11:54:11Z", "eo:cloud_cover": cloud, "proj:epsg": 32629,
            "grid:code": "MGRS-29UNU", "s2:processing_baseline": "04.00", "earthsearch:boa_offset_applied": True,
            "s2:product_uri": f"S2A_MSIL2A_202210{day}T115411_N0400_R023_T29UNU_202210{day}T164454.SAFE",
        }  # fmt: skip
        for band, key in [*ASSETS.items(), ("SCL", SCL_ASSET)]:
            item["assets"][key]["href"] = f"{services.main}/cogs/{name}/{band}.tif"
        items.append(item)
    services.stac_items, services.cog_dir = items, folder
    lon = [c[0] for c in footprint["coordinates"][0]]
    lat = [c[1] for c in footprint["coordinates"][0]]
    return {"grid": grid, "bbox": [min(lon), min(lat), max(lon), max(lat)], "cogs": folder}


def inner_aoi(bbox: list[float], margin: float = 0.2) -> list[float]:
    dx, dy = (bbox[2] - bbox[0]) * margin, (bbox[3] - bbox[1]) * margin
    return [bbox[0] + dx, bbox[1] + dy, bbox[2] - dx, bbox[3] - dy]


def spec(aoi, **changes) -> ImagerySpec:
    return ImagerySpec(**({"source": "earth-search", "aoi": aoi, "dates": "2022-10-01/2022-10-10",
                           "max_cloud": 50, "resolution": 60} | changes))  # fmt: skip


def test_window_at_60m_matches_the_product_pixels(earth_search, services, env, data_dir):
    grid = earth_search["grid"]
    [path] = ensure_scenes(spec(inner_aoi(earth_search["bbox"])), data_dir, env=env)
    info = stack_info(path)
    assert info.bands == ImagerySpec(aoi=[0, 0, 1, 1], dates="2022-01-01", resolution=60).bands
    assert info.offset == -1000  # the flag says "applied", the pixels say otherwise
    with rasterio.open(path) as ds:
        stack, tags = ds.read(), ds.tags()
        col, row = ~grid["transform"] @ (ds.transform.c, ds.transform.f)
    assert tags["PRODUCT"].startswith("S2A_MSIL2A_20221005") and tags["RESOLUTION"] == "60"
    window = (slice(round(row), round(row) + stack.shape[1]), slice(round(col), round(col) + stack.shape[2]))
    for index, band in enumerate(info.bands):
        expected = grid["dn"][band][window]
        if NATIVE.get(band) == 60:
            np.testing.assert_array_equal(stack[index], expected, err_msg=band)
        else:  # read through the COG overviews (fewer bytes): an area average, close but not exact
            difference = np.abs(stack[index].astype(float) - expected)
            assert difference.mean() < 0.05 * expected.mean(), band
            assert np.corrcoef(stack[index].ravel(), expected.ravel())[0, 1] > 0.95, band
    assert stack.shape[1] < WINDOW.height and stack.shape[2] < WINDOW.width  # just the AOI was read
    cog_bytes = sum(p.stat().st_size for p in (earth_search["cogs"] / "raw").glob("*.tif"))
    # Range reads of the overviews that fit 60 m: a fraction of the files (the window is 36 % of their area).
    assert sum(services.bytes_served.values()) < 0.4 * cog_bytes


def test_20m_window_and_offset_judged_from_data(earth_search, env, data_dir):
    aoi = inner_aoi(earth_search["bbox"])
    [shifted] = ensure_scenes(spec(aoi, resolution=20, pick="newest"), data_dir, env=env)
    info = stack_info(shifted)
    assert info.resolution == 20 and info.offset == 0 and "_aoi" in shifted.name
    assert "20221006" in shifted.name
    [again] = ensure_scenes(spec(aoi, resolution=20, pick="newest"), data_dir, env=env)
    assert again == shifted


def test_offset_rule_on_real_pixels(cogs):
    _, grid = cogs
    raw = np.stack([grid["dn"][b] for b in ("B02", "B03", "B04")])
    shifted = np.where(raw > 0, np.clip(raw.astype(int) - 1000, 1, None), 0)
    assert offset_from_data(raw, "04.00", True) == -1000
    assert offset_from_data(shifted, "04.00", False) == 0
    assert offset_from_data(raw, "02.14", None) == 0  # before baseline 04.00 there is no offset
    cloud = np.full((3, 50, 50), 6000)
    assert offset_from_data(cloud, "05.09", True) == 0 and offset_from_data(cloud, "05.09", False) == -1000


def test_nothing_found_says_what_was_searched(earth_search, env, data_dir):
    with pytest.raises(NoScenesError, match=r"cloud ≤ 5 %"):
        ensure_scenes(spec(inner_aoi(earth_search["bbox"]), max_cloud=5), data_dir, env=env)


def test_search_follows_post_next_links(earth_search, services, env):
    from torchbearer.imagery.aoi import load_aoi
    from torchbearer.imagery.earthsearch import search
    from torchbearer.imagery.http import HttpClient

    wanted = spec(earth_search["bbox"])
    with HttpClient() as client:
        scenes = search(client, env("EARTH_SEARCH_URL"), wanted, load_aoi(wanted), limit=1)
    assert [s.tile for s in scenes] == ["29UNU", "29UNU"] and len({s.id for s in scenes}) == 2
    assert sum(r[:3] == ("POST", "127.0.0.1", "/stac/v1/search") for r in services.requests) == 2


def test_least_cloud_over_the_aoi_beats_the_tile_figure(earth_search, services, env, data_dir):
    """The item whose tile figure says "cloudier" is picked when its SCL is clear over the AOI; ``newest``
    needs no SCL read."""
    from torchbearer.imagery.cloud import cloud_share

    assert cloud_share(earth_search["grid"]["scl"]) > 0.5  # the real classes of the window: mostly cloud
    raw, shifted = services.stac_items
    raw["properties"]["eo:cloud_cover"], shifted["properties"]["eo:cloud_cover"] = 45.0, 5.0
    [stack] = ensure_scenes(spec(inner_aoi(earth_search["bbox"])), data_dir, env=env)
    assert stack.name.startswith("S2A_MSIL2A_20221005T115411")  # raw: clear over the AOI
    assert any(path.endswith("/raw/SCL.tif") for _m, _h, path, _a in services.requests)
    before = len(services.requests)
    [newest] = ensure_scenes(spec(inner_aoi(earth_search["bbox"]), pick="newest"), data_dir, env=env)
    assert newest.name.startswith("S2A_MSIL2A_20221006T115411")
    assert not any(path.endswith("SCL.tif") for _m, _h, path, _a in services.requests[before:])
