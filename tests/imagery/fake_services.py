"""Real HTTP servers on 127.0.0.1 / 127.0.0.2 that speak the CDSE and Earth Search APIs, with fault injection.

- ``127.0.0.1``: the identity server's token endpoint (password and refresh-token grants), the OData catalogue
  (``/odata/v1/Products?$filter=…`` answered from real CDSE responses, filtered and paged with
  ``@odata.nextLink``), the download host (``/download/odata/v1/…``: checks the token, redirects to the zipper
  host), and Earth Search (``/stac/v1/search`` + COG files served with HTTP range reads).
- ``127.0.0.2``: the "zipper" host: Nodes listings and ``$value`` with ``Range``; needs the same token, so a
  client that drops ``Authorization`` on the cross-host redirect fails.

Faults (:class:`Faults`) are switched on per test: a connection cut mid-file, 429 with Retry-After (for every
file or one), tokens revoked mid-job (once, or at each of several requests), files missing, corrupted bytes, a
500 storm, inflated manifest sizes (disk-space refusal), no Range support, and a per-connection bandwidth limit
(for the benchmark).
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import shapely

DATA = Path(__file__).parent / "data"
USER, PASSWORD = "ada@example.org", "s3cret-Pa55word!"
_NODES = re.compile(r"^/odata/v1/Products\(([^)]+)\)((?:/Nodes\([^)]*\))*)(/Nodes|/\$value)?$")


@dataclass
class Faults:
    """What goes wrong, and how often. Counters go down as faults fire, so each fires a bounded number of times."""

    #: file name → bytes sent before the connection is cut (once per file).
    drop_after: dict[str, int] = field(default_factory=dict)
    #: the first this-many ``$value`` requests get 429 with ``Retry-After: retry_after``.
    rate_limit: int = 0
    retry_after: str = "1"
    #: after this many ``$value`` requests, every access token issued so far is revoked (once).
    revoke_tokens_after: int | None = None
    #: file name → how many times to serve it with a flipped byte.
    corrupt: dict[str, int] = field(default_factory=dict)
    #: every ``$value`` request answers 500.
    storm: bool = False
    #: manifest.safe announces every file 1 PB large.
    inflate_sizes: bool = False
    #: ignore Range headers (answer 200 with the whole file).
    no_range: bool = False
    #: bytes per second per connection (None: unlimited).
    bandwidth: float | None = None
    #: file name → how many of its ``$value`` requests get 429 with ``Retry-After: retry_after``.
    throttle: dict[str, int] = field(default_factory=dict)
    #: file names whose ``$value`` answers 404.
    missing: set[str] = field(default_factory=set)
    #: the next this-many ``$value`` requests on the zipper host revoke every access token and answer 401.
    revoke_each: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-body (a killed fetch, a cut we injected) is expected: no traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Product:
    """A product the fake serves: OData Id, name, its SAFE folder on disk."""

    id: str
    name: str
    safe_dir: Path


class FakeServices:
    """Both hosts and their state. Use as a context manager; ``env`` points the product at it."""

    def __init__(self, products: list[Product], catalogue: list[dict[str, Any]], *, token_lifetime_s: int = 600,
                 stac_items: list[dict[str, Any]] | None = None, cog_dir: Path | None = None) -> None:  # fmt: skip
        self.products = {p.id: p for p in products}
        self.catalogue = catalogue
        self.stac_items = stac_items or []
        self.cog_dir = cog_dir
        self.faults = Faults()
        self.token_lifetime_s = token_lifetime_s
        self.lock = threading.Lock()
        self.access: dict[str, float] = {}
        self.refresh: dict[str, float] = {}
        self.logins = self.refreshes = self.value_requests = 0
        self.active = self.most_active = 0  # $value answers being sent now, and the most at once
        self.bytes_served: Counter[str] = Counter()
        self.requests: list[tuple[str, str, str, bool]] = []  # method, host, path, had Authorization
        self._servers: list[ThreadingHTTPServer] = []

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> FakeServices:
        for host in ("127.0.0.1", "127.0.0.2"):
            server = _Server((host, 0), _handler(self))
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        return self

    def __exit__(self, *_exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def main(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def zipper(self) -> str:
        return f"http://127.0.0.2:{self._servers[1].server_address[1]}"

    @property
    def env(self) -> dict[str, str]:
        """Variables pointing torchbearer at these servers, with the test account's credentials."""
        return {
            "COPERNICUS_USER": USER,
            "COPERNICUS_PASSWORD": PASSWORD,
            "COPERNICUS_TOKEN_URL": f"{self.main}/auth/realms/CDSE/protocol/openid-connect/token",
            "COPERNICUS_CATALOGUE_URL": f"{self.main}/odata/v1",
            "COPERNICUS_DOWNLOAD_URL": f"{self.main}/download/odata/v1",
            "COPERNICUS_AUTH_HOSTS": "127.0.0.2",
            "EARTH_SEARCH_URL": f"{self.main}/stac/v1",
            "TORCHBEARER_HTTP_BACKOFF_S": "0.01",
        }

    def issued_tokens(self) -> list[str]:
        """Every access and refresh token handed out (for the log-scan test)."""
        with self.lock:
            return [*self.access, *self.refresh]

    # -- tokens ----------------------------------------------------------------------------------------------

    def grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if form.get("client_id") != "cdse-public":
                return 401, {"error": "invalid_client"}
            if form.get("grant_type") == "password":
                if form.get("username") != USER or form.get("password") != PASSWORD:
                    return 401, {"error": "invalid_grant", "error_description": "Invalid user credentials"}
                self.logins += 1
            elif form.get("grant_type") == "refresh_token":
                if self.refresh.get(form.get("refresh_token", ""), 0) < time.time():
                    return 400, {"error": "invalid_grant", "error_description": "Token is not active"}
                self.refreshes += 1
            else:
                return 400, {"error": "unsupported_grant_type"}
            access, refresh = "eyJ" + secrets.token_urlsafe(24), "eyR" + secrets.token_urlsafe(24)
            self.access[access] = time.time() + self.token_lifetime_s
            self.refresh[refresh] = time.time() + 3600
            return 200, {
                "access_token": access, "expires_in": self.token_lifetime_s, "refresh_token": refresh,
                "refresh_expires_in": 3600, "token_type": "Bearer", "not-before-policy": 0, "scope": "AUDIENCE_PUBLIC",
            }  # fmt: skip

    def authorized(self, header: str | None) -> bool:
        token = (header or "").removeprefix("Bearer ")
        with self.lock:
            return self.access.get(token, 0) > time.time()

    def inflated(self, manifest: Path) -> bytes:
        """A manifest.safe claiming every file is 1 PB large."""
        return re.sub(rb'size="\d+"', b'size="1000000000000000"', manifest.read_bytes())

    def size_of(self, node: Path) -> int:
        """ContentLength of a Nodes entry: 0 for folders, the served size for files."""
        if not node.is_file():
            return 0
        if node.name == "manifest.safe" and self.faults.inflate_sizes:
            return len(self.inflated(node))
        return node.stat().st_size

    def count_value_request(self) -> None:
        with self.lock:
            self.value_requests += 1
            if self.faults.revoke_tokens_after is not None and self.value_requests > self.faults.revoke_tokens_after:
                self.access = dict.fromkeys(self.access, 0.0)
                self.faults.revoke_tokens_after = None

    # -- catalogue ------------------------------------------------------------------------------------------

    def search(self, query: dict[str, list[str]], base: str) -> tuple[int, dict[str, Any]]:
        text = (query.get("$filter") or [""])[0]
        try:
            terms = _parse_filter(text)
        except ValueError as exc:
            return 400, {"detail": {"ErrorMessage": f"Invalid filter: {exc}", "ErrorCode": 400}}
        hits = [p for p in self.catalogue if _matches(p, terms)]
        order = (query.get("$orderby") or ["ContentDate/Start asc"])[0]
        hits.sort(key=lambda p: p["ContentDate"]["Start"], reverse=order.endswith("desc"))
        top, skip = int((query.get("$top") or ["20"])[0]), int((query.get("$skip") or ["0"])[0])
        page = hits[skip : skip + top]
        answer: dict[str, Any] = {"@odata.context": "$metadata#Products(Attributes())", "value": page}
        if skip + top < len(hits):
            following = {k: v[0] for k, v in query.items()} | {"$skip": str(skip + top)}
            answer["@odata.nextLink"] = f"{base}/odata/v1/Products?{urlencode(following, quote_via=quote)}"
        return 200, answer


def _with_attributes(record: dict[str, Any], cloud: float) -> dict[str, Any]:
    """A catalogue entry with the attributes ``$expand=Attributes`` returns (as in cop_dataspace_search.json)."""
    tile = re.search(r"_T(\w{5})_", record["Name"])
    attributes = [
        ("productType", "String", "S2MSI2A" if "MSIL2A" in record["Name"] else "S2MSI1C"),
        ("cloudCover", "Double", cloud),
        ("tileId", "String", tile.group(1) if tile else ""),
    ]
    return record | {
        "Attributes": [
            {"@odata.type": f"#OData.CSC.{kind}Attribute", "Name": name, "Value": value, "ValueType": kind}
            for name, kind, value in attributes
        ]
    }


def footprint(safe_dir: Path) -> dict[str, Any]:
    """GeoJSON polygon (EPSG:4326) of a SAFE crop, from the bounds of its first R60m band."""
    import rasterio
    from rasterio.warp import transform_geom

    band = next(safe_dir.glob("GRANULE/*/IMG_DATA/R60m/*_B01_60m.jp2"))
    with rasterio.open(band) as src:
        return transform_geom(src.crs, "EPSG:4326", shapely.geometry.mapping(shapely.box(*src.bounds)))


def build_catalogue(extra: list[tuple[Product, float, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The 18 real products of ``odata_S2_L2A_products.json``, plus ``extra`` (product, cloud %, size,
    GeoJSON footprint) entries made by rewriting the first real one: Id, name, dates, S3 path, footprint, size."""
    real = json.loads((DATA / "odata_S2_L2A_products.json").read_text())["value"]
    records = [_with_attributes(r, float(int(r["Id"][:2], 16) % 100)) for r in real]
    for product, cloud, size, shape in extra:
        sensed = re.search(r"_(\d{8}T\d{6})_", product.name).group(1)
        start = datetime.strptime(sensed, "%Y%m%dT%H%M%S").strftime("%Y-%m-%dT%H:%M:%S.024000Z")
        rewritten = real[0] | {
            "Id": product.id, "Name": product.name, "ContentLength": size,
            "S3Path": f"/eodata/Sentinel-2/MSI/L2A/{start[:4]}/{start[5:7]}/{start[8:10]}/{product.name}",
            "ContentDate": {"Start": start, "End": start}, "GeoFootprint": shape,
            "Footprint": f"geography'SRID=4326;{shapely.geometry.shape(shape).wkt}'",
        }  # fmt: skip
        records.append(_with_attributes(rewritten, cloud))
    return records


def _parse_filter(text: str) -> dict[str, Any]:
    """The parts of a CDSE ``$filter`` the client is expected to send; refuses a filter missing one."""
    needs = {
        "collection": r"Collection/Name eq '([^']+)'",
        "product_type": r"Name eq 'productType' and att/OData\.CSC\.StringAttribute/Value eq '([^']+)'",
        "cloud": r"Name eq 'cloudCover' and att/OData\.CSC\.DoubleAttribute/Value le ([\d.]+)",
        "area": r"OData\.CSC\.Intersects\(area=geography'SRID=4326;([^']+)'\)",
        "start": r"ContentDate/Start ge (\S+Z)",
        "end": r"ContentDate/Start lt (\S+Z)",
    }
    terms: dict[str, Any] = {}
    for key, pattern in needs.items():
        match = re.search(pattern, text)
        if not match:
            raise ValueError(f"no {key} clause")
        terms[key] = match.group(1)
    terms["area"] = shapely.from_wkt(terms["area"])
    terms["cloud"] = float(terms["cloud"])
    terms["tiles"] = re.findall(r"contains\(Name,'_T(\w{5})_'\)", text)
    return terms


def _matches(product: dict[str, Any], terms: dict[str, Any]) -> bool:
    attributes = {a["Name"]: a["Value"] for a in product.get("Attributes", [])}
    start = product["ContentDate"]["Start"]
    return (
        terms["collection"] == "SENTINEL-2"
        and attributes.get("productType") == terms["product_type"]
        and attributes.get("cloudCover", 100.0) <= terms["cloud"]
        and _stamp(terms["start"]) <= _stamp(start) < _stamp(terms["end"])
        and shapely.geometry.shape(product["GeoFootprint"]).intersects(terms["area"])
        and (not terms["tiles"] or attributes.get("tileId") in terms["tiles"])
    )


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _handler(state: FakeServices) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: Any) -> None:  # keep test output quiet
            pass

        # -- plumbing -------------------------------------------------------------------------------------------

        def _record(self) -> None:
            with state.lock:
                state.requests.append(
                    (self.command, self.server.server_address[0], self.path, "Authorization" in self.headers)
                )

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        # -- routes ------------------------------------------------------------------------------------------------

        def do_POST(self) -> None:
            self._record()
            url = urlsplit(self.path)
            if url.path.endswith("/protocol/openid-connect/token"):
                form = {k: v[0] for k, v in parse_qs(self._body().decode()).items()}
                self._json(*state.grant(form))
            elif url.path == "/stac/v1/search":
                self._json(200, self._stac_search(json.loads(self._body() or b"{}")))
            else:
                self._json(404, {"detail": "not found"})

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            self._record()
            url = urlsplit(self.path)
            zipper = self.server.server_address[0] == "127.0.0.2"
            if not zipper and url.path == "/odata/v1/Products":
                self._json(*state.search(parse_qs(url.query), state.main))
            elif not zipper and url.path.startswith("/download/odata/v1/"):
                if not state.authorized(self.headers.get("Authorization")):
                    self._json(401, {"detail": "Expired signature!"})
                    return
                self.send_response(301)
                self.send_header("Location", state.zipper + self.path.removeprefix("/download"))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif zipper and _NODES.match(url.path):
                self._nodes(url.path)
            elif not zipper and url.path.startswith("/cogs/") and state.cog_dir is not None:
                self._file(state.cog_dir / unquote(url.path.removeprefix("/cogs/")), faults=False)
            else:
                self._json(404, {"detail": {"ErrorMessage": "loadFromStore - Not Found", "ErrorCode": 404}})

        def _nodes(self, path: str) -> None:
            if not state.authorized(self.headers.get("Authorization")):
                self._json(401, {"detail": "Expired signature!"})
                return
            match = _NODES.match(path)
            product = state.products.get(match.group(1))
            names = [unquote(n) for n in re.findall(r"/Nodes\(([^)]*)\)", match.group(2))]
            if product is None or not names or names[0] != product.name:
                self._json(404, {"detail": {"ErrorMessage": "loadFromStore - Not Found", "ErrorCode": 404}})
                return
            target = product.safe_dir.joinpath(*names[1:])
            if match.group(3) == "/$value" and state.faults.revoke_each > 0:
                with state.lock:
                    state.faults.revoke_each -= 1
                    state.access = dict.fromkeys(state.access, 0.0)
                self._json(401, {"detail": "Expired signature!"})
                return
            if match.group(3) == "/$value":
                state.count_value_request()
                with state.lock:
                    state.active += 1
                    state.most_active = max(state.most_active, state.active)
                try:
                    self._value(names, target)
                finally:
                    with state.lock:
                        state.active -= 1
            elif target.is_dir():
                base = state.zipper + path.removesuffix("/Nodes")
                result = [
                    {
                        "Id": child.name,
                        "Name": child.name,
                        "ContentLength": state.size_of(child),
                        "ChildrenNumber": len(list(child.iterdir())) if child.is_dir() else 0,
                        "Nodes": {"uri": f"{base}/Nodes({quote(child.name)})/Nodes"},
                    }
                    for child in sorted(target.iterdir())
                ]
                self._json(200, {"result": result})
            else:
                self._json(404, {"detail": {"ErrorMessage": "loadFromStore - Not Found", "ErrorCode": 404}})

        def _value(self, names: list[str], target: Path) -> None:
            if state.faults.storm:
                self._json(500, {"detail": "Internal Server Error"})
            elif target.name in state.faults.missing:
                self._json(404, {"detail": {"ErrorMessage": "loadFromStore - Not Found", "ErrorCode": 404}})
            elif state.faults.throttle.get(target.name, 0) > 0:
                with state.lock:
                    state.faults.throttle[target.name] -= 1
                self._json(
                    429, {"detail": "Too many concurrent connections"}, {"Retry-After": state.faults.retry_after}
                )
            elif state.faults.rate_limit > 0:
                with state.lock:
                    state.faults.rate_limit -= 1
                self._json(429, {"detail": "Too Many Requests"}, {"Retry-After": state.faults.retry_after})
            elif names[1:] == ["manifest.safe"] and state.faults.inflate_sizes:
                self._bytes(state.inflated(target), target.name)
            else:
                self._file(target, faults=True)

        def _file(self, target: Path, *, faults: bool) -> None:
            if not target.is_file():
                self._json(404, {"detail": {"ErrorMessage": "loadFromStore - Not Found", "ErrorCode": 404}})
                return
            data = target.read_bytes()
            if faults and state.faults.corrupt.get(target.name, 0) > 0:
                with state.lock:
                    state.faults.corrupt[target.name] -= 1
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
            self._bytes(data, target.name, faults=faults)

        def _bytes(self, data: bytes, name: str, *, faults: bool = True) -> None:
            start, end = 0, len(data) - 1
            ranged = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
            if ranged and not (faults and state.faults.no_range):
                start = int(ranged.group(1))
                end = min(int(ranged.group(2) or end), end)
                if start > end:
                    self._json(416, {"detail": "Range Not Satisfiable"}, {"Content-Range": f"bytes */{len(data)}"})
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end + 1 - start))
            self.end_headers()
            if self.command == "HEAD":
                return
            cut = state.faults.drop_after.pop(name, None) if faults else None
            self._send(data[start : end + 1], cut, name)

        def _send(self, body: bytes, cut: int | None, name: str) -> None:
            """Write ``body`` at the bandwidth limit; stop after ``cut`` bytes and close the connection."""
            limit = state.faults.bandwidth
            step = 16 * 1024
            began = time.monotonic()
            sent = 0
            while sent < len(body):
                size = min(step, len(body) - sent, (cut - sent) if cut is not None else step)
                if size <= 0:
                    break
                with state.lock:  # counted before the write: the client may return before we run again
                    state.bytes_served[name] += size
                self.wfile.write(body[sent : sent + size])
                sent += size
                if limit and sent < len(body):  # pace the next chunk (none after the last)
                    ahead = sent / limit - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)

        def _stac_search(self, body: dict[str, Any]) -> dict[str, Any]:
            area = shapely.geometry.shape(body["intersects"]) if "intersects" in body else shapely.box(*body["bbox"])
            first, last = (body.get("datetime") or "../..").split("/")
            limit, skip = int(body.get("limit", 10)), int(body.get("next") or 0)
            cloud = (body.get("query") or {}).get("eo:cloud_cover", {}).get("lte", 100)
            hits = [
                item for item in state.stac_items
                if shapely.geometry.shape(item["geometry"]).intersects(area)
                and (first == ".." or item["properties"]["datetime"] >= first)
                and (last == ".." or item["properties"]["datetime"] <= last)
                and item["properties"]["eo:cloud_cover"] <= cloud
                and item["collection"] in body.get("collections", [])
            ]  # fmt: skip
            page = hits[skip : skip + limit]
            links = []
            if skip + limit < len(hits):
                links.append({"rel": "next", "href": f"{state.main}/stac/v1/search", "method": "POST",
                              "body": {**body, "next": str(skip + limit)}, "merge": False})  # fmt: skip
            return {"type": "FeatureCollection", "features": page, "links": links,
                    "numberMatched": len(hits), "numberReturned": len(page)}  # fmt: skip

    return Handler
