"""Download benchmark: bytes a 60 m training job fetches, bytes fetched twice after a cut, 4 connections vs 1.

Runs against the fake CDSE of the tests (real HTTP on 127.0.0.1/127.0.0.2, token, OData search, Nodes and
``$value`` with Range) serving a product with the real file list and sizes of the T29UNU L2A product
(``tests/imagery/data/manifest_T29UNU_full.safe``, 574 MB listed). The files a 60 m stack needs are filled
with seeded random bytes (JP2 does not compress further, so the size is what matters) and the manifest's
SHA3-256 rewritten for them; the rest are never asked for. Every connection is limited to ``--bandwidth``
MB/s, as CDSE's download servers limit each connection.

- ``bytes_ratio_60m``: bytes of file bodies served for the 60 m file set ÷ the full product (manifest total);
- ``refetched_share``: a fetch process is SIGKILLed halfway, a new one finishes: bytes served beyond the
  needed set ÷ the needed set;
- ``parallel_speedup``: wall time of the fetch with 1 connection ÷ with 4.

Usage: python bench/download.py [--bandwidth 6]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.imagery.fake_services import DATA, FakeServices, Product, build_catalogue, footprint  # noqa: E402
from torchbearer.imagery import copernicus  # noqa: E402
from torchbearer.imagery.aoi import load_aoi  # noqa: E402
from torchbearer.imagery.http import client_from_env  # noqa: E402
from torchbearer.imagery.manifest import needed_files, parse_manifest  # noqa: E402
from torchbearer.imagery.spec import BANDS_BY_RESOLUTION, ImagerySpec  # noqa: E402

NAME = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
PRODUCT_ID = "0b7e4a52-3c1d-4f7a-9e2b-5a6c7d8e9f01"
SPEC = ImagerySpec(aoi=[-8.2, 52.9, -8.0, 53.0], dates="2022-10-01/2022-10-10", max_cloud=80, resolution=60)


def make_product(folder: Path) -> tuple[Product, int, int]:
    """The benchmark product: (product, bytes of the 60 m file set incl. manifest.safe, full product bytes)."""
    text = (DATA / "manifest_T29UNU_full.safe").read_text()
    manifest = parse_manifest(text)
    safe = folder / NAME
    rng = np.random.default_rng(0)
    needed = needed_files(manifest, BANDS_BY_RESOLUTION[60], 60)
    for entry in needed:
        body = rng.bytes(entry.size or 0)
        (safe / entry.path).parent.mkdir(parents=True, exist_ok=True)
        (safe / entry.path).write_bytes(body)
        text = text.replace(entry.checksum or "", hashlib.sha3_256(body).hexdigest())
    (safe / "manifest.safe").write_text(text)
    needed_bytes = sum(e.size or 0 for e in needed) + (safe / "manifest.safe").stat().st_size
    return Product(PRODUCT_ID, NAME, safe), needed_bytes, manifest.total_size


def fetch(env: dict[str, str], dest: Path, connections: int) -> float:
    """Search, log in and fetch the 60 m file set; returns the wall time of the whole fetch, seconds."""
    values = {**env, "TORCHBEARER_HTTP_CONNECTIONS": str(connections)}
    endpoints = copernicus.CdseEndpoints.from_env(values.get)
    started = time.perf_counter()
    with client_from_env(values.get, endpoints.auth_hosts) as client:
        client.token = copernicus.CdseToken(client, copernicus.Credentials.from_env(values.get), endpoints.token_url)
        [scene] = [s for s in copernicus.search(client, endpoints, SPEC, load_aoi(SPEC)) if s.id == PRODUCT_ID]
        copernicus.fetch_product(client, endpoints, scene, dest, SPEC)
    return time.perf_counter() - started


def served(fake: FakeServices) -> int:
    with fake.lock:
        return sum(fake.bytes_served.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bandwidth", type=float, default=6.0, help="MB/s per connection")
    args = parser.parse_args()
    os.environ["NO_PROXY"] = "127.0.0.1,127.0.0.2"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        product, needed, full = make_product(folder / "served")
        sample = ROOT / "data" / NAME  # the committed crop: same tile, gives the catalogue footprint
        catalogue = build_catalogue([(product, 61.5, full, footprint(sample))])
        with FakeServices([product], catalogue) as fake:
            fake.faults.bandwidth = args.bandwidth * 1e6
            one = fetch(fake.env, folder / "one", 1)
            before = served(fake)
            four = fetch(fake.env, folder / "four", 4)
            fetched_60m = served(fake) - before
            print(f"60 m file set: {needed / 1e6:.1f} MB of a {full / 1e6:.1f} MB product; "
                  f"1 connection {one:.2f} s, 4 connections {four:.2f} s at {args.bandwidth:g} MB/s each")  # fmt: skip

            before = served(fake)
            child = multiprocessing.get_context("fork").Process(target=fetch, args=(fake.env, folder / "cut", 4))
            child.start()
            deadline = time.monotonic() + 120
            while served(fake) - before < needed / 2 and child.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            at_cut = served(fake) - before
            fetch(fake.env, folder / "cut", 4)
            refetched = served(fake) - before - needed
            print(f"cut after {at_cut / 1e6:.1f} MB (SIGKILL); resumed: {refetched / 1e3:.0f} kB fetched twice")
    figures = {
        "bytes_ratio_60m": round(fetched_60m / full, 4),
        "refetched_share": round(max(refetched, 0) / needed, 4),
        "parallel_speedup": round(one / four, 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
