"""``ensure_scenes``: the one entry point train, predict and download jobs call to get their scenes.

It searches the spec's source, picks the scenes, fetches what the scene cache lacks and returns the stacked
GeoTIFFs. Layout under the data root (``data/`` by default)::

    products/<name>.SAFE/…      files fetched from Copernicus (only those a stack needs), .part while partial
    cache/<name>_<res>m.tif     stacked scenes (built by imagery/cache.py; Earth Search windows add _aoi<hash>)
    locks/<name>.lock           one per product: two jobs never fetch or build the same scene at once
    locks/connection-<i>.lock   4 connection slots shared by every job (CDSE allows 4 per user)

A scene already in the cache costs no login and no download; a job that was interrupted finds its verified
files in place and its ``.part`` files resumed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchbearer.imagery.http import (
    ChecksumError,
    ConnectionSlots,
    HttpClient,
    HttpError,
    Report,
    RetryPolicy,
    TransferCancelled,
)
from torchbearer.imagery.scenes import Scene, pick_scenes
from torchbearer.imagery.spec import ImagerySpec

log = logging.getLogger(__name__)

Lookup = Callable[[str], str | None]
#: Simultaneous connections per job (CDSE allows 4 per user).
MAX_CONNECTIONS = 4


class NoScenesError(LookupError):
    """The search found nothing to use (says what was searched, and what to widen)."""


@contextmanager
def scene_lock(data_dir: Path, key: str, should_stop: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Hold ``data_dir/locks/<key>.lock`` (an flock: released by the kernel if the holder dies)."""
    folder = data_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{key}.lock", "a+") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if should_stop():
                    raise TransferCancelled(f"stopped while waiting for another job to fetch {key}") from None
                if not waited:
                    log.info("another job is fetching %s: waiting for it", key)
                    waited = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def http_client(env: Lookup, auth_hosts: tuple[str, ...] = (), slots_dir: Path | None = None) -> HttpClient:
    """A client with the retry settings of ``TORCHBEARER_HTTP_RETRIES`` / ``TORCHBEARER_HTTP_BACKOFF_S`` and
    ``TORCHBEARER_HTTP_CONNECTIONS`` (at most 4) connections; with ``slots_dir``, its file transfers also
    share 4 connection slots with every other process fetching into the same data root."""

    def number(name: str, default: float) -> float:
        raw = env(name)
        try:
            return float(raw) if raw else default
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number") from None

    retry = RetryPolicy(attempts=max(1, int(number("TORCHBEARER_HTTP_RETRIES", 6))),
                        backoff_s=number("TORCHBEARER_HTTP_BACKOFF_S", 2.0))  # fmt: skip
    connections = max(1, min(MAX_CONNECTIONS, int(number("TORCHBEARER_HTTP_CONNECTIONS", MAX_CONNECTIONS))))
    slots = ConnectionSlots(slots_dir, MAX_CONNECTIONS) if slots_dir is not None else None
    return HttpClient(auth_hosts=auth_hosts, connections=connections, retry=retry, slots=slots)


def _describe_search(spec: ImagerySpec) -> str:
    tiles = f", tiles {', '.join(spec.tiles)}" if spec.tiles else ""
    return f"{spec.product} over the AOI, {spec.dates}, cloud ≤ {spec.max_cloud:g} %{tiles}"


def _pick(spec: ImagerySpec, found: list[Scene]) -> list[Scene]:
    scenes = pick_scenes(found, max_scenes=spec.max_scenes, pick=spec.pick, tiles=spec.tiles or None)
    if not scenes:
        raise NoScenesError(
            f"{spec.source}: no scene found ({_describe_search(spec)}; {len(found)} hits before picking): "
            "widen dates or max_cloud, or check the aoi"
        )
    picked = ", ".join(f"{s.stem} ({'?' if s.cloud is None else f'{s.cloud:.0f}'} % cloud)" for s in scenes)
    log.info("%s: picked %s", spec.source, picked)
    return scenes


def stack_safe(safe_dir: Path, spec: ImagerySpec, cache_dir: Path, report: Report | None) -> Path:
    """Stack a SAFE folder's bands at the spec's resolution into the scene cache (imagery/cache.py)."""
    from torchbearer.imagery import cache

    return cache.build_stack(safe_dir, spec.resolution, cache_dir, report=report)


def _copernicus(
    spec: ImagerySpec, data_dir: Path, report: Report | None, env: Lookup, should_stop: Callable[[], bool]
) -> list[Path]:
    from torchbearer.imagery import copernicus
    from torchbearer.imagery.aoi import load_aoi

    credentials = copernicus.Credentials.from_env(env)  # fail at once, before any search
    endpoints = copernicus.CdseEndpoints.from_env(env)
    aoi = load_aoi(spec)
    with http_client(env, endpoints.auth_hosts, data_dir / "locks") as client:
        client.token = _session_token(credentials, endpoints.token_url, env)
        found = copernicus.search(client, endpoints, spec, aoi)
        if spec.pick == "least-cloud" and spec.product == "L2A":
            measure = _copernicus_aoi_cloud(client, endpoints, spec, aoi, data_dir, should_stop)
            found = _rank_by_aoi_cloud(spec, found, measure)
        scenes = _pick(spec, found)
        stacks = []
        for scene in scenes:
            with scene_lock(data_dir, scene.stem, should_stop):
                cached = _cached_stack(scene, spec, data_dir)
                if cached is not None:
                    stacks.append(cached)
                    continue
                safe_dir, _ = copernicus.fetch_product(client, endpoints, scene, data_dir / "products", spec,
                                                       report=report, should_stop=should_stop)  # fmt: skip
                stacks.append(stack_safe(safe_dir, spec, data_dir / "cache", report))
    return stacks


#: How many of the least cloudy scenes (by their whole-tile figure) have their cloud over the AOI measured,
#: per scene a job asks for: each costs the product's 60 m SCL layer, about 0.2 % of its bytes.
AOI_CLOUD_CANDIDATES_PER_SCENE = 3


def _rank_by_aoi_cloud(spec: ImagerySpec, found: list[Scene], measure: Callable[[Scene], float | None]) -> list[Scene]:
    """The best candidates with ``cloud`` replaced by ``measure(scene)``, their cloud over the AOI (0–1).

    Only worth it when there is a choice; a candidate that cannot be measured keeps its tile-wide figure.
    """
    count = max(spec.max_scenes * AOI_CLOUD_CANDIDATES_PER_SCENE, spec.max_scenes)
    candidates = pick_scenes(found, max_scenes=count, pick="least-cloud", tiles=spec.tiles or None)
    if len(candidates) <= spec.max_scenes:
        return found
    ranked = []
    for scene in candidates:
        try:
            share = measure(scene)
        except (OSError, HttpError, ChecksumError, ValueError) as exc:  # RasterioIOError is an OSError
            log.warning("%s: cloud over the AOI unknown (%s); using the tile's %s %%", scene.stem, exc, scene.cloud)
            ranked.append(scene)
            continue
        shown = "unknown (no valid pixel)" if share is None else f"{share * 100:.1f} %"
        log.info("%s: cloud over the AOI %s (tile: %s %%)", scene.stem, shown, scene.cloud)
        ranked.append(replace(scene, cloud=None if share is None else share * 100))
    return ranked


def _copernicus_aoi_cloud(
    client: HttpClient, endpoints: Any, spec: ImagerySpec, aoi: Any, data_dir: Path, should_stop: Callable[[], bool]
) -> Callable[[Scene], float | None]:
    """Measures a Copernicus scene's cloud over the AOI from its 60 m SCL layer (about 0.2 % of its bytes)."""
    from torchbearer.imagery import copernicus
    from torchbearer.imagery.cloud import aoi_cloud_share

    def is_scl(entry: Any) -> bool:
        return entry.path.endswith("_SCL_60m.jp2")

    def measure(scene: Scene) -> float | None:
        with scene_lock(data_dir, scene.stem, should_stop):
            safe_dir, manifest = copernicus.fetch_product(client, endpoints, scene, data_dir / "products", spec,
                                                          should_stop=should_stop, select=is_scl)  # fmt: skip
        scl = next((safe_dir / e.path for e in manifest if is_scl(e)), None)
        return aoi_cloud_share(scl, aoi) if scl is not None and scl.is_file() else None

    return measure


#: One CDSE token per identity server and account in this process, so a job that asks for scenes several
#: times (predict: once per resolution) still opens one session. It logs in on first use only: scenes already
#: in the cache cost no session at all.
_TOKENS: dict[tuple[str, Any], Any] = {}
_TOKENS_LOCK = threading.Lock()


def _session_token(credentials: Any, token_url: str, env: Lookup) -> Any:
    from torchbearer.imagery.copernicus import CdseToken

    with _TOKENS_LOCK:
        key = (token_url, credentials)
        if key not in _TOKENS:
            _TOKENS[key] = CdseToken(http_client(env), credentials, token_url)
        return _TOKENS[key]


def _cached_stack(scene: Scene, spec: ImagerySpec, data_dir: Path) -> Path | None:
    from torchbearer.imagery import cache

    path = cache.stack_path(data_dir / "cache", scene.stem, spec.resolution)
    return path if path.is_file() else None


def _earth_search(
    spec: ImagerySpec, data_dir: Path, report: Report | None, env: Lookup, should_stop: Callable[[], bool]
) -> list[Path]:
    from torchbearer.imagery import earthsearch
    from torchbearer.imagery.aoi import load_aoi

    aoi = load_aoi(spec)
    url = env("EARTH_SEARCH_URL") or earthsearch.EARTH_SEARCH_URL
    with http_client(env) as client:
        found = earthsearch.search(client, url, spec, aoi)
        if spec.pick == "least-cloud":
            found = _rank_by_aoi_cloud(spec, found, lambda scene: earthsearch.aoi_cloud_share(scene, aoi))
        scenes = _pick(spec, found)
        stacks = []
        for scene in scenes:
            with scene_lock(data_dir, scene.stem, should_stop):
                stacks.append(earthsearch.build_stack(scene, aoi, spec, data_dir / "cache", report=report,
                                                      connections=client.connections))  # fmt: skip
    return stacks


def ensure_scenes(
    spec: ImagerySpec,
    data_dir: Path,
    report: Report | None = None,
    *,
    env: Lookup = os.environ.get,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Path]:
    """The stacked GeoTIFFs of the scenes ``spec`` asks for, fetched and built where missing.

    ``data_dir``: the data root (``settings.data_dir``). ``report``: called as ``ctx.progress`` is,
    ``report(stage="downloading", done=bytes, total=bytes, unit="B", files_done=, files_total=, scene=, force=)``
    (and stage ``"preparing data"`` while stacking). ``env``: variable lookup for credentials and endpoint
    overrides (``ctx.secret`` in a job). ``should_stop``: polled between chunks; partial files stay for a resume.
    AOI files and local paths must already be absolute (:meth:`ImagerySpec.with_paths`).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    if spec.source == "local":
        from torchbearer.imagery.local import local_stacks

        return local_stacks(spec, data_dir, report, should_stop)
    if spec.source == "copernicus":
        return _copernicus(spec, data_dir, report, env, should_stop)
    return _earth_search(spec, data_dir, report, env, should_stop)
