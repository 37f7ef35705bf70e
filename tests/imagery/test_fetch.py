"""ensure_scenes: search → pick → fetch only the needed files → scene cache, once, whoever asks."""

from __future__ import annotations

import multiprocessing
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.imagery.conftest import SAMPLE_AOI, SAMPLE_ID, SAMPLE_NAME
from tests.imagery.fake_services import FakeServices, Product, build_catalogue, footprint
from tests.imagery.test_copernicus import needed_sizes
from tests.reflectance import read_reflectance
from torchbearer.imagery.cache import stack_info
from torchbearer.imagery.copernicus import CredentialsMissing
from torchbearer.imagery.fetch import ensure_scenes
from torchbearer.imagery.local import LocalScenesError
from torchbearer.imagery.scenes import NoScenesError
from torchbearer.imagery.spec import ImagerySpec

TWIN_ID = "7c2d9e14-0b3a-4c5d-8e6f-1a2b3c4d5e6f"
SPEC = ImagerySpec(aoi=SAMPLE_AOI, dates="2022-10-01/2022-10-10", max_cloud=80, resolution=60)


def test_copernicus_scene_lands_in_the_cache_once(services, env, sample_safe, data_dir):
    events = []
    [stack] = ensure_scenes(SPEC, data_dir, lambda **e: events.append(e), env=env)
    assert stack == data_dir / "cache" / f"{sample_safe.name.removesuffix('.SAFE')}_60m.tif"
    info = stack_info(stack)
    assert len(info.bands) == 11 and info.offset == -1000 and info.resolution == 60
    reflectance, valid = read_reflectance(info)
    assert valid.mean() > 0.5 and 0 < float(reflectance[3][valid].mean()) < 1  # the train job's read
    assert events[0]["stage"] == "downloading" and events[-1]["stage"] == "preparing data"
    served = sum(services.bytes_served.values())
    # Again: the cached stack is returned without a login or a byte of imagery.
    assert ensure_scenes(SPEC, data_dir, env=env) == [stack]
    assert services.logins == 1 and sum(services.bytes_served.values()) == served


def test_one_session_for_every_fetch_of_a_process(services, env, data_dir):
    """A job asking twice (predict: once per resolution) logs in once: the token is kept per process."""
    ensure_scenes(SPEC, data_dir, env=env)
    for folder in ("products", "cache"):
        shutil.rmtree(data_dir / folder)
    ensure_scenes(SPEC, data_dir, env=env)
    assert services.logins == 1 and services.value_requests == 2 * 15


def _fetch_in_child(spec, data_dir, values) -> None:
    ensure_scenes(spec, data_dir, env=values.get)


def test_two_processes_fetch_and_build_once(services, env, sample_safe, data_dir):
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_fetch_in_child, args=(SPEC, data_dir, services.env)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0]
    served = {k: v for k, v in services.bytes_served.items() if k != "manifest.safe"}
    assert served == needed_sizes(sample_safe)  # every file fetched once
    assert services.logins == 1  # the second process found the stack built: no session opened
    assert len(list((data_dir / "cache").glob("*.tif"))) == 1


def test_missing_credentials_fail_before_any_request(services, data_dir):
    with pytest.raises(CredentialsMissing, match="COPERNICUS_USER and COPERNICUS_PASSWORD"):
        ensure_scenes(SPEC, data_dir, env=lambda name: None)
    assert services.requests == []


def test_no_scene_found(services, env, data_dir):
    with pytest.raises(NoScenesError, match=r"no scene found \(L2A over the AOI, 2021-10-01/2021-10-10"):
        ensure_scenes(SPEC.model_copy(update={"dates": "2021-10-01/2021-10-10"}), data_dir, env=env)


def test_local_safe_and_geotiff(sample_safe, data_dir, tmp_path):
    local = ImagerySpec(source="local", paths=[str(sample_safe.parent)], resolution=60)
    [stack] = ensure_scenes(local, data_dir)
    assert stack.parent == data_dir / "cache" and stack_info(stack).offset == -1000
    as_tiff = ImagerySpec(source="local", paths=[str(stack)])
    assert ensure_scenes(as_tiff, data_dir) == [stack]
    with pytest.raises(LocalScenesError, match="holds no SAFE product"):
        ensure_scenes(ImagerySpec(source="local", paths=[str(tmp_path)]), data_dir)


def test_jobs_side_by_side_share_four_connections(sample_safe, data_dir, tmp_path, monkeypatch):
    """Two processes fetching two products at once never hold more than CDSE's 4 connections together."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,127.0.0.2")
    twin_name = SAMPLE_NAME.replace("MSIL2A_20221005", "MSIL2A_20221006")
    twin = Path(shutil.copytree(sample_safe, tmp_path / twin_name))
    products = [Product(SAMPLE_ID, SAMPLE_NAME, sample_safe), Product(TWIN_ID, twin_name, twin)]
    shape = footprint(sample_safe)
    with FakeServices(products, build_catalogue([(p, 50.0, 10**9, shape) for p in products])) as fake:
        fake.faults.bandwidth = 600_000  # bytes/s per connection: the two fetches overlap
        context = multiprocessing.get_context("fork")
        children = [
            context.Process(target=_fetch_in_child, args=(SPEC.model_copy(update={"dates": day}), data_dir, fake.env))
            for day in ("2022-10-05", "2022-10-06")
        ]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
        assert [c.exitcode for c in children] == [0, 0]
        assert fake.most_active == 4
    assert sorted(p.name for p in (data_dir / "products").iterdir()) == sorted([SAMPLE_NAME, twin_name])


def _zip_product(safe: Path, target: Path, damage: str | None = None) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(safe.rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                if damage and path.name.endswith(damage):
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                archive.writestr(f"{safe.name}/{path.relative_to(safe)}", data)
    return target


def test_local_zip_extracts_only_the_needed_files(sample_safe, data_dir, tmp_path):
    archive = _zip_product(sample_safe, tmp_path / f"{SAMPLE_NAME.removesuffix('.SAFE')}.zip")
    [stack] = ensure_scenes(ImagerySpec(source="local", paths=[str(tmp_path)], resolution=60), data_dir)
    assert stack_info(stack).offset == -1000
    extracted = [p for p in (data_dir / "products").rglob("*") if p.is_file()]
    assert len(extracted) == 11 + 1 + 3  # bands, SCL, MTD_MSIL2A.xml, MTD_TL.xml, manifest.safe
    with pytest.raises(LocalScenesError, match="is missing from the archive"):
        ensure_scenes(ImagerySpec(source="local", paths=[str(archive)], resolution=20), data_dir / "other")
    damaged = _zip_product(sample_safe, tmp_path / "damaged" / "product.zip", damage="_B03_60m.jp2")
    with pytest.raises(LocalScenesError, match=r"B03_60m\.jp2 does not match its manifest checksum"):
        ensure_scenes(ImagerySpec(source="local", paths=[str(damaged)], resolution=60), data_dir / "third")


def _load_make_sample():
    """data/make_sample.py, the script that made the sample: its manifest updater is reused, not copied."""
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "data" / "make_sample.py"
    spec = importlib.util.spec_from_file_location("make_sample", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_least_cloud_is_least_cloud_over_the_aoi(sample_safe, data_dir, tmp_path, monkeypatch):
    """A scene cloudier over its whole tile but clear over the AOI wins; ranking costs only SCL layers."""
    import rasterio

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,127.0.0.2")
    clear_name = SAMPLE_NAME.replace("MSIL2A_20221005", "MSIL2A_20221006")
    clear = Path(shutil.copytree(sample_safe, tmp_path / clear_name))
    scl = next(clear.glob("GRANULE/*/IMG_DATA/R60m/*_SCL_60m.jp2"))
    with rasterio.open(scl) as src:
        data = src.read(1)
    data[data != 0] = 4  # vegetation wherever there is data: clear over any AOI
    tmp = tmp_path / "scl.jp2"
    with rasterio.open(tmp, "w", driver="JP2OpenJPEG", width=src.width, height=src.height, count=1,
                       dtype=data.dtype, crs=src.crs, transform=src.transform, QUALITY=100,
                       REVERSIBLE="YES") as dst:  # fmt: skip
        dst.write(data, 1)
    shutil.move(tmp, scl)
    metadata = clear / "MTD_MSIL2A.xml"  # the cache names a stack after the product its metadata names
    metadata.write_text(
        metadata.read_text().replace(SAMPLE_NAME.removesuffix(".SAFE"), clear_name.removesuffix(".SAFE"))
    )
    _load_make_sample().update_manifest(clear, [scl, metadata])

    products = [Product(SAMPLE_ID, SAMPLE_NAME, sample_safe), Product(TWIN_ID, clear_name, clear)]
    shape = footprint(sample_safe)
    # The real sample is 80 % cloud over this AOI but says 20 % for its tile; the twin says 70 %.
    catalogue = build_catalogue([(products[0], 20.0, 10**9, shape), (products[1], 70.0, 10**9, shape)])
    spec = SPEC.model_copy(update={"max_scenes": 1})
    with FakeServices(products, catalogue) as fake:
        [stack] = ensure_scenes(spec, data_dir, env=fake.env.get)
        assert stack.name == f"{clear_name.removesuffix('.SAFE')}_60m.tif"
        cloudy_files = {p.name for p in (data_dir / "products" / SAMPLE_NAME).rglob("*") if p.is_file()}
        assert cloudy_files == {"manifest.safe", scl.name.replace("20221006", "20221005")}
        # "newest" needs no measuring: the twin is newer, and nothing more of the sample is fetched.
        served = dict(fake.bytes_served)
        newest = spec.model_copy(update={"pick": "newest"})
        assert ensure_scenes(newest, data_dir, env=fake.env.get) == [stack]
        assert dict(fake.bytes_served) == served


def test_aoi_cloud_share_on_the_real_scl():
    """Cloud + shadow share of valid SCL pixels over an AOI, checked against a count over the whole raster."""
    import numpy as np
    import rasterio
    import shapely
    from rasterio.warp import transform_bounds

    from torchbearer.imagery.cloud import CLOUDY_CLASSES, aoi_cloud_share

    scl = next(
        (Path(__file__).resolve().parents[2] / "data").glob(f"{SAMPLE_NAME}/GRANULE/*/IMG_DATA/R60m/*_SCL_60m.jp2")
    )
    with rasterio.open(scl) as src:
        data = src.read(1)
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    valid = data[data != 0]
    whole = aoi_cloud_share(scl, shapely.box(west - 0.1, south - 0.1, east + 0.1, north + 0.1))
    assert whole == pytest.approx(np.isin(valid, CLOUDY_CLASSES).mean())
    east_strip = aoi_cloud_share(scl, shapely.box(west + (east - west) * 0.5, south, east, north))
    west_strip = aoi_cloud_share(scl, shapely.box(west, south, west + (east - west) * 0.15, north))
    assert west_strip < 0.5 < 0.99 < east_strip  # the crop's clear west coast, its cloud bank to the east
    assert aoi_cloud_share(scl, shapely.box(0, 0, 1, 1)) is None  # off the tile
