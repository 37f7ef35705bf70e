"""Copernicus Data Space Ecosystem (CDSE): login, OData product search, per-file download through Nodes.

- Login: OpenID password grant with ``client_id=cdse-public`` (plus a TOTP code when a secret is set), then
  the refresh token renews the access token before it expires (access tokens live 10 min, refresh tokens 60):
  one login per job, because every password login opens one of the user's 100 sessions.
- Search: ``/odata/v1/Products?$filter=…`` (collection, product type, cloud cover, ``OData.CSC.Intersects``,
  sensing dates, tiles), following ``@odata.nextLink`` pages.
- Download: ``manifest.safe`` first, then only the files the stack needs (bands of one resolution, SCL, the
  product and tile metadata), each through ``Products(<Id>)/Nodes(<name>.SAFE)/Nodes(…)/$value``, checked
  against the manifest. The 1 GB zip is never fetched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import shapely
from shapely.geometry.base import BaseGeometry

from torchbearer.imagery.aoi import load_aoi, search_polygon
from torchbearer.imagery.dataroot import cached_stack, locks_dir, scene_lock, stack_safe
from torchbearer.imagery.http import (
    FileTask,
    HttpClient,
    HttpError,
    Report,
    StopFlag,
    client_from_env,
    fetch_files,
)
from torchbearer.imagery.manifest import (
    Manifest,
    ManifestEntry,
    ManifestError,
    file_digest,
    needed_files,
    parse_manifest,
    read_manifest,
)
from torchbearer.imagery.scenes import FoundScene, pick_for_spec, rank_by_aoi_cloud
from torchbearer.imagery.spec import ImagerySpec

log = logging.getLogger(__name__)

TOKEN_URL = "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
CATALOGUE_URL = "https://catalogue.dataspace.copernicus.eu/odata/v1"
DOWNLOAD_URL = "https://download.dataspace.copernicus.eu/odata/v1"
#: Hosts a download may be redirected to that still get the token (download. → zipper.).
AUTH_DOMAINS = ("dataspace.copernicus.eu",)
CLIENT_ID = "cdse-public"
PRODUCT_TYPES = {"L2A": "S2MSI2A", "L1C": "S2MSI1C"}
#: Pages of search results followed at most (100 products each).
MAX_PAGES = 50


class CredentialsMissing(RuntimeError):
    """A Copernicus job has no credentials: says which variable to set."""


class LoginError(RuntimeError):
    """The identity server refused the login (the message never holds the password or a token)."""


@dataclass(frozen=True)
class CdseEndpoints:
    """Where the CDSE services are; each can be pointed elsewhere (a mirror, a test server) by a variable."""

    token_url: str = TOKEN_URL
    catalogue_url: str = CATALOGUE_URL
    download_url: str = DOWNLOAD_URL
    auth_hosts: tuple[str, ...] = AUTH_DOMAINS

    @classmethod
    def from_env(cls, env: Callable[[str], str | None]) -> CdseEndpoints:
        """``COPERNICUS_TOKEN_URL``, ``COPERNICUS_CATALOGUE_URL``, ``COPERNICUS_DOWNLOAD_URL`` and
        ``COPERNICUS_AUTH_HOSTS`` (comma-separated) override the defaults."""
        hosts = env("COPERNICUS_AUTH_HOSTS")
        return cls(
            token_url=env("COPERNICUS_TOKEN_URL") or TOKEN_URL,
            catalogue_url=(env("COPERNICUS_CATALOGUE_URL") or CATALOGUE_URL).rstrip("/"),
            download_url=(env("COPERNICUS_DOWNLOAD_URL") or DOWNLOAD_URL).rstrip("/"),
            auth_hosts=tuple(h.strip() for h in hosts.split(",") if h.strip()) if hosts else AUTH_DOMAINS,
        )


@dataclass(frozen=True)
class Credentials:
    """A CDSE account. ``repr`` shows no values."""

    user: str
    password: str
    totp_secret: str | None = None

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"

    @classmethod
    def from_env(cls, env: Callable[[str], str | None]) -> Credentials:
        """Read ``COPERNICUS_USER``, ``COPERNICUS_PASSWORD`` and optional ``COPERNICUS_TOTP_SECRET``."""
        missing = [name for name in ("COPERNICUS_USER", "COPERNICUS_PASSWORD") if not env(name)]
        if missing:
            raise CredentialsMissing(
                f"source copernicus needs {' and '.join(missing)}: set {'them' if len(missing) > 1 else 'it'} "
                "in the environment or the env file (.env, see env.example); a free account is at "
                "https://dataspace.copernicus.eu"
            )
        return cls(env("COPERNICUS_USER") or "", env("COPERNICUS_PASSWORD") or "", env("COPERNICUS_TOTP_SECRET"))


def totp_code(secret: str, now: float) -> str:
    """The 6-digit RFC 6238 code (SHA-1, 30 s steps) of a base32 secret at UNIX time ``now``."""
    cleaned = secret.replace(" ", "").upper()
    key = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    mac = hmac.new(key, int(now // 30).to_bytes(8, "big"), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    return f"{(int.from_bytes(mac[offset : offset + 4], 'big') & 0x7FFFFFFF) % 1_000_000:06d}"


class CdseToken:
    """Access token of one job's session: one password login, then refresh-token renewals.

    Thread-safe: transfer threads share it. ``logins`` and ``refreshes`` count grants (tests check that an
    expired token is refreshed, not replaced by a new login).
    """

    def __init__(
        self,
        client: HttpClient,
        credentials: Credentials,
        token_url: str = TOKEN_URL,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._credentials = credentials
        self._url = token_url
        self._clock = clock
        self._lock = threading.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._access_until = self._refresh_until = 0.0
        self.logins = self.refreshes = 0

    def authorization(self) -> str:
        """``Bearer <token>``, renewed first when it expires within a quarter of its life (at most 60 s)."""
        with self._lock:
            now = self._clock()
            if self._access is None or now >= self._access_until:
                if self._refresh is not None and now < self._refresh_until and self._grant_refresh():
                    pass
                else:
                    self._grant_password()
            return f"Bearer {self._access}"

    def invalidate(self, value: str) -> None:
        """The server refused ``value``: the next :meth:`authorization` renews it (once per token)."""
        with self._lock:
            if value == f"Bearer {self._access}":
                self._access_until = 0.0

    def _store(self, answer: dict[str, Any], now: float) -> None:
        try:
            self._access = str(answer["access_token"])
            expires = float(answer.get("expires_in", 600))
        except (KeyError, TypeError, ValueError):
            raise LoginError("the Copernicus identity server answered without an access token") from None
        self._access_until = now + expires - min(60.0, expires / 4)
        if answer.get("refresh_token"):
            self._refresh = str(answer["refresh_token"])
            refresh_expires = float(answer.get("refresh_expires_in", 3600))
            self._refresh_until = now + refresh_expires - min(60.0, refresh_expires / 4)

    def _post(self, data: dict[str, str]) -> tuple[int, dict[str, Any]]:
        response = self._client.request("POST", self._url, data=data)
        with response:
            try:
                body = response.json()
            except ValueError:
                body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    def _grant_refresh(self) -> bool:
        now = self._clock()
        status, body = self._post(
            {"grant_type": "refresh_token", "refresh_token": self._refresh or "", "client_id": CLIENT_ID}
        )
        if status != 200:
            log.info("Copernicus token refresh refused (HTTP %s): logging in again", status)
            self._refresh = None
            return False
        self.refreshes += 1
        self._store(body, now)
        return True

    def _grant_password(self) -> None:
        now = self._clock()
        data = {
            "grant_type": "password",
            "username": self._credentials.user,
            "password": self._credentials.password,
            "client_id": CLIENT_ID,
        }
        if self._credentials.totp_secret:
            data["totp"] = totp_code(self._credentials.totp_secret, now)
        status, body = self._post(data)
        if status != 200:
            reason = str(body.get("error_description") or body.get("error") or "")[:100]
            raise LoginError(
                f"Copernicus refused the login (HTTP {status}{': ' + reason if reason else ''}): check "
                "COPERNICUS_USER and COPERNICUS_PASSWORD (and COPERNICUS_TOTP_SECRET if the account uses 2FA)"
            )
        self.logins += 1
        self._store(body, now)


# -- search -----------------------------------------------------------------------------------------------


def _odata_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def odata_filter(spec: ImagerySpec, aoi: BaseGeometry) -> str:
    """The ``$filter`` of a product search for ``spec`` over a WGS84 ``aoi``."""
    first, last = spec.date_range
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    wkt = shapely.to_wkt(search_polygon(aoi), rounding_precision=6).replace("POLYGON ((", "POLYGON((")
    clauses = [
        "Collection/Name eq 'SENTINEL-2'",
        "Attributes/OData.CSC.StringAttribute/any(att:att/Name eq 'productType' and "
        f"att/OData.CSC.StringAttribute/Value eq '{PRODUCT_TYPES[spec.product]}')",
        "Attributes/OData.CSC.DoubleAttribute/any(att:att/Name eq 'cloudCover' and "
        f"att/OData.CSC.DoubleAttribute/Value le {spec.max_cloud:.2f})",
        f"OData.CSC.Intersects(area=geography'SRID=4326;{wkt}')",
        f"ContentDate/Start ge {_odata_time(start)}",
        f"ContentDate/Start lt {_odata_time(end)}",
    ]
    if spec.tiles:
        clauses.append("(" + " or ".join(f"contains(Name,'_T{tile}_')" for tile in spec.tiles) + ")")
    return " and ".join(clauses)


def _attribute(product: dict[str, Any], name: str) -> Any:
    return next((a.get("Value") for a in product.get("Attributes") or [] if a.get("Name") == name), None)


def scene_from_odata(product: dict[str, Any]) -> FoundScene:
    """A :class:`FoundScene` from one entry of an OData ``value`` list."""
    name = str(product["Name"])
    start = str((product.get("ContentDate") or {}).get("Start") or "")
    cloud = _attribute(product, "cloudCover")
    tile = _attribute(product, "tileId")
    if tile is None and "_T" in name:
        tile = name.split("_T", 1)[1][:5]
    return FoundScene(
        source="copernicus",
        id=str(product["Id"]),
        name=name,
        sensed=datetime.fromisoformat(start.replace("Z", "+00:00")),
        cloud=float(cloud) if cloud is not None else None,
        tile=tile,
        size=product.get("ContentLength"),
        online=bool(product.get("Online", True)),
    )


def search(
    client: HttpClient, endpoints: CdseEndpoints, spec: ImagerySpec, aoi: BaseGeometry, *, page_size: int = 100
) -> list[FoundScene]:
    """Every product matching ``spec`` over ``aoi`` (no login needed), newest first."""
    url: str | None = f"{endpoints.catalogue_url}/Products"
    params: dict[str, Any] | None = {
        "$filter": odata_filter(spec, aoi),
        "$orderby": "ContentDate/Start desc",
        "$top": page_size,
        "$expand": "Attributes",
    }
    scenes: list[FoundScene] = []
    for _ in range(MAX_PAGES):
        if url is None:
            break
        page = client.get_json(url, params=params)
        try:
            scenes += [scene_from_odata(p) for p in page.get("value", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise HttpError(f"GET {url}: unexpected product entry in the search answer ({exc})") from None
        url, params = page.get("@odata.nextLink"), None  # the next link carries every query option
    else:
        log.warning("search stopped after %d pages; narrow the dates or the area", MAX_PAGES)
    return scenes


# -- download ---------------------------------------------------------------------------------------------


def node_url(endpoints: CdseEndpoints, scene: FoundScene, path: str = "") -> str:
    """``…/Products(<Id>)/Nodes(<name>.SAFE)/Nodes(GRANULE)/…`` for a path inside the product."""
    parts = [scene.name, *[p for p in path.split("/") if p]]
    return f"{endpoints.download_url}/Products({scene.id})" + "".join(f"/Nodes({quote(p, safe='')})" for p in parts)


def _checker(entry: ManifestEntry) -> Callable[[Path], bool]:
    def check(path: Path) -> bool:
        digest = file_digest(path, entry)
        if digest is not None and not entry.matches(digest):
            log.warning("%s: checksum mismatch (%s), fetching it again", entry.path, entry.algorithm)
            return False
        return True

    return check


def _manifest_size(client: HttpClient, endpoints: CdseEndpoints, scene: FoundScene, cancel: StopFlag) -> int | None:
    """Size of manifest.safe from the product's root Nodes listing (None if it does not say)."""
    listing = client.get_json(node_url(endpoints, scene) + "/Nodes", authorized=True, cancel=cancel)  # 404: none
    entries = listing.get("result", []) if isinstance(listing, dict) else []
    size = next(
        (e.get("ContentLength") for e in entries if isinstance(e, dict) and e.get("Name") == "manifest.safe"), None
    )
    if size is None:
        log.warning("%s: the Nodes listing gives no size for manifest.safe; fetching it unchecked", scene.name)
    return int(size) if isinstance(size, int) and size > 0 else None


def _parses(path: Path) -> bool:
    """Whether a fetched manifest.safe parses (a corrupted one is fetched again, never kept)."""
    try:
        parse_manifest(path.read_bytes(), "manifest.safe")
    except ManifestError as exc:
        log.warning("%s; fetching it again", exc)
        return False
    return True


def fetch_manifest(
    client: HttpClient,
    endpoints: CdseEndpoints,
    scene: FoundScene,
    safe_dir: Path,
    should_stop: Callable[[], bool] = lambda: False,
) -> Manifest:
    """The product's manifest: the copy in ``safe_dir`` if it parses, else fetched (again) and checked.

    ``should_stop`` ends the waits between tries (:class:`~torchbearer.imagery.http.TransferCancelled`)."""
    path = safe_dir / "manifest.safe"
    if path.is_file():
        try:
            return read_manifest(safe_dir)
        except ManifestError as exc:  # e.g. cut or damaged on disk after it was checked: not worth keeping
            log.warning("%s; fetching it again", exc)
            path.unlink()
    cancel = StopFlag(should_stop)
    size = _manifest_size(client, endpoints, scene, cancel)
    client.fetch_file(node_url(endpoints, scene, "manifest.safe") + "/$value", path, size=size, check=_parses,
                      authorized=True, cancel=cancel)  # fmt: skip
    return read_manifest(safe_dir)


def fetch_product(
    client: HttpClient,
    endpoints: CdseEndpoints,
    scene: FoundScene,
    products_dir: Path,
    spec: ImagerySpec,
    *,
    report: Report | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    select: Callable[[ManifestEntry], bool] | None = None,
) -> tuple[Path, Manifest]:
    """Fetch the files of ``scene`` a ``spec`` stack needs (or those ``select`` picks from the manifest) into
    ``products_dir/<name>.SAFE``.

    Files already in place were verified before they were renamed there and are kept; ``.part`` files are
    resumed. Returns the SAFE folder and its manifest.
    """
    safe_dir = products_dir / scene.name
    manifest = fetch_manifest(client, endpoints, scene, safe_dir, should_stop)
    if select is not None:
        entries = [entry for entry in manifest if select(entry)]
    else:
        entries = list(manifest) if spec.whole_product else needed_files(manifest, spec.bands, spec.resolution)
    tasks = [
        FileTask(node_url(endpoints, scene, e.path) + "/$value", safe_dir / e.path, e.size, _checker(e))
        for e in entries
    ]
    fetch_files(client, tasks, report=report, authorized=True, should_stop=should_stop,
                report_fields={"scene": scene.stem})  # fmt: skip
    return safe_dir, manifest


# -- the source's strategy: search → rank by AOI cloud → pick → fetch the needed files → stack ---------------

#: One CDSE token per identity server and account in this process, so a job that asks for scenes several
#: times (predict: once per resolution) still opens one session. It logs in on first use only: scenes already
#: in the cache cost no session at all.
_TOKENS: dict[tuple[str, Credentials], CdseToken] = {}
_TOKENS_LOCK = threading.Lock()


def session_token(credentials: Credentials, token_url: str, env: Callable[[str], str | None]) -> CdseToken:
    """This process's token for ``credentials`` at ``token_url`` (made on first use, shared after)."""
    with _TOKENS_LOCK:
        key = (token_url, credentials)
        if key not in _TOKENS:
            _TOKENS[key] = CdseToken(client_from_env(env), credentials, token_url)
        return _TOKENS[key]


def scene_stacks(
    spec: ImagerySpec,
    data_dir: Path,
    report: Report | None,
    env: Callable[[str], str | None],
    should_stop: Callable[[], bool],
) -> list[Path]:
    """The stacks of the scenes ``spec`` picks on CDSE; cached ones cost no login and no download."""
    credentials = Credentials.from_env(env)  # fail at once, before any search
    endpoints = CdseEndpoints.from_env(env)
    aoi = load_aoi(spec)
    with client_from_env(env, endpoints.auth_hosts, locks_dir(data_dir)) as client:
        client.token = session_token(credentials, endpoints.token_url, env)
        found = search(client, endpoints, spec, aoi)
        if spec.pick == "least-cloud" and spec.product == "L2A":
            found = rank_by_aoi_cloud(spec, found, _aoi_cloud(client, endpoints, spec, aoi, data_dir, should_stop))
        stacks = []
        for scene in pick_for_spec(spec, found):
            with scene_lock(data_dir, scene.stem, should_stop):
                stack = cached_stack(scene.stem, spec, data_dir)
                if stack is None:
                    safe_dir, _ = fetch_product(client, endpoints, scene, data_dir / "products", spec, report=report,
                                                should_stop=should_stop)  # fmt: skip
                    stack = stack_safe(safe_dir, spec, data_dir, report)
                stacks.append(stack)
    return stacks


def _aoi_cloud(
    client: HttpClient,
    endpoints: CdseEndpoints,
    spec: ImagerySpec,
    aoi: BaseGeometry,
    data_dir: Path,
    should_stop: Callable[[], bool],
) -> Callable[[FoundScene], float | None]:
    """Measures a scene's cloud over the AOI from its 60 m SCL layer (about 0.2 % of its bytes)."""
    from torchbearer.imagery.cloud import aoi_cloud_share

    def is_scl(entry: ManifestEntry) -> bool:
        return entry.path.endswith("_SCL_60m.jp2")

    def measure(scene: FoundScene) -> float | None:
        with scene_lock(data_dir, scene.stem, should_stop):
            safe_dir, manifest = fetch_product(client, endpoints, scene, data_dir / "products", spec,
                                               should_stop=should_stop, select=is_scl)  # fmt: skip
        scl = next((safe_dir / e.path for e in manifest if is_scl(e)), None)
        return aoi_cloud_share(scl, aoi) if scl is not None and scl.is_file() else None

    return measure
