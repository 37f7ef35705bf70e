"""CDSE through a real local server: login, search, Nodes download of only the needed files, and faults."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.imagery.conftest import SAMPLE_AOI, SAMPLE_ID
from torchbearer.imagery import copernicus
from torchbearer.imagery.aoi import load_aoi
from torchbearer.imagery.dataroot import scene_lock
from torchbearer.imagery.http import (
    CHUNK_BYTES,
    ChecksumError,
    DiskSpaceError,
    HttpClient,
    HttpError,
    RetryPolicy,
    TransferCancelled,
)
from torchbearer.imagery.manifest import needed_files, read_manifest, verify_product
from torchbearer.imagery.spec import ImagerySpec

SPEC = ImagerySpec(aoi=SAMPLE_AOI, dates="2022-10-01/2022-10-10", max_cloud=80, resolution=60)


class Session:
    """A client + token + endpoints as ensure_scenes makes them; ``sleeps`` records backoff waits (s)."""

    def __init__(
        self, env, *, auth_hosts=None, attempts: int = 4, backoff_s: float = 0.001, record: bool = True
    ) -> None:
        """``record``: waits are recorded in ``sleeps`` and return at once; else they really wait."""
        self.sleeps: list[float] = []
        self.endpoints = copernicus.CdseEndpoints.from_env(env)
        hosts = self.endpoints.auth_hosts if auth_hosts is None else auth_hosts
        self.client = HttpClient(
            auth_hosts=hosts,
            retry=RetryPolicy(attempts=attempts, backoff_s=backoff_s),
            sleep=self.sleeps.append if record else None,
        )
        self.token = copernicus.CdseToken(self.client, copernicus.Credentials.from_env(env), self.endpoints.token_url)
        self.client.token = self.token

    def scene(self, spec: ImagerySpec = SPEC):
        hits = copernicus.search(self.client, self.endpoints, spec, load_aoi(spec))
        return next(h for h in hits if h.id == SAMPLE_ID)

    def fetch(self, folder: Path, spec: ImagerySpec = SPEC, **kwargs):
        return copernicus.fetch_product(self.client, self.endpoints, self.scene(spec), folder, spec, **kwargs)


def needed_sizes(sample_safe: Path) -> dict[str, int]:
    entries = needed_files(read_manifest(sample_safe), SPEC.bands, 60)
    return {e.path.rsplit("/", 1)[-1]: e.size for e in entries}


def test_search_fetches_only_needed_files(services, env, sample_safe, data_dir):
    session = Session(env)
    scene = session.scene()
    assert (scene.cloud, scene.tile, scene.stem[:10]) == (61.5, "29UNU", "S2A_MSIL2A")
    events = []
    safe, _ = session.fetch(data_dir, report=lambda **event: events.append(event))
    sizes = needed_sizes(sample_safe)
    fetched = {p.name for p in safe.rglob("*") if p.is_file()}
    assert fetched == {*sizes, "manifest.safe"}
    assert verify_product(safe, [str(p.relative_to(safe)) for p in safe.rglob("*.jp2")]).complete
    # Bytes on the wire: exactly the needed files, each once; the token crossed to the zipper host.
    assert {name: count for name, count in services.bytes_served.items() if name != "manifest.safe"} == sizes
    zipper = [r for r in services.requests if r[1] == "127.0.0.2"]
    assert zipper and all(had_auth for *_, had_auth in zipper)
    assert services.logins == 1 and session.token.logins == 1
    assert events[-1]["done"] == events[-1]["total"] == sum(sizes.values())
    assert events[-1]["files_done"] == events[-1]["files_total"] == len(sizes)


def test_search_pages_through_next_links(services, env):
    everywhere = ImagerySpec(aoi=[-180, -90, 180, 90], dates="2015-01-01/2025-12-31", max_cloud=100)
    session = Session(env)
    hits = copernicus.search(session.client, session.endpoints, everywhere, load_aoi(everywhere), page_size=5)
    assert len(hits) == len({h.id for h in hits}) == 19
    assert sum(r[2].startswith("/odata/v1/Products?") for r in services.requests) == 4
    assert services.logins == 0  # searching needs no login


def test_dropped_connection_resumes_with_range(services, env, sample_safe, data_dir):
    sizes = needed_sizes(sample_safe)
    band = next(n for n in sizes if "_B05_" in n)
    services.faults.drop_after = {band: sizes[band] // 2}
    safe, _ = Session(env).fetch(data_dir)
    fetched = next(safe.rglob(band)).read_bytes()
    assert fetched == next(sample_safe.rglob(band)).read_bytes()
    # Fetched twice: at most the chunk in flight when the connection broke.
    assert sizes[band] <= services.bytes_served[band] <= sizes[band] + CHUNK_BYTES
    assert any(r[2].endswith(f"Nodes({band})/$value") for r in services.requests[-40:])


def test_server_without_range_restarts_the_file(services, env, sample_safe, data_dir):
    sizes = needed_sizes(sample_safe)
    band = next(n for n in sizes if "_B06_" in n)
    services.faults.drop_after = {band: 5000}
    services.faults.no_range = True
    safe, _ = Session(env).fetch(data_dir)
    assert next(safe.rglob(band)).read_bytes() == next(sample_safe.rglob(band)).read_bytes()
    assert services.bytes_served[band] == sizes[band] + 5000


def test_429_honours_retry_after(services, env, data_dir):
    services.faults.rate_limit = 2
    services.faults.retry_after = "7"
    session = Session(env)
    session.fetch(data_dir)
    assert session.sleeps.count(7.0) == 2


def test_expired_token_is_refreshed_not_relogged(services, env, data_dir):
    services.faults.revoke_tokens_after = 5
    session = Session(env)
    session.fetch(data_dir)
    assert services.refreshes >= 1 and services.logins == 1 and session.token.logins == 1


def test_token_renewed_before_expiry(services, env, data_dir):
    services.token_lifetime_s = 1  # renewal margin is a quarter of the life: every request after 0.75 s
    session = Session(env)
    clock = [1000.0]
    session.token._clock = lambda: clock[0]
    session.token.authorization()
    clock[0] += 0.8
    session.token.authorization()
    assert (session.token.logins, session.token.refreshes) == (1, 1)


def test_corrupted_file_is_fetched_again(services, env, sample_safe, data_dir):
    sizes = needed_sizes(sample_safe)
    band = next(n for n in sizes if "_B8A_" in n)
    services.faults.corrupt = {band: 1}
    safe, _ = Session(env).fetch(data_dir)
    assert next(safe.rglob(band)).read_bytes() == next(sample_safe.rglob(band)).read_bytes()
    assert services.bytes_served[band] == 2 * sizes[band]


def test_always_corrupted_file_fails_clearly(services, env, data_dir):
    services.faults.corrupt = {"MTD_TL.xml": 10}
    with pytest.raises(ChecksumError, match=r"MTD_TL\.xml: does not match its manifest checksum"):
        Session(env).fetch(data_dir)
    assert not list(data_dir.rglob("MTD_TL.xml"))


def test_500_storm_gives_up_with_a_clear_error(services, env, data_dir):
    services.faults.storm = True
    session = Session(env, attempts=3)
    with pytest.raises(HttpError, match=r"gave up after 3 attempts; last answer: HTTP 500"):
        session.fetch(data_dir)
    assert len(session.sleeps) == 2


def test_disk_space_refusal_before_any_band(services, env, data_dir):
    services.faults.inflate_sizes = True
    with pytest.raises(DiskSpaceError, match="not enough disk space"):
        Session(env).fetch(data_dir)
    assert set(services.bytes_served) == {"manifest.safe"}


def test_token_not_sent_to_unlisted_hosts(services, env, data_dir):
    with pytest.raises(HttpError, match="401") as error:
        Session(env, auth_hosts=()).fetch(data_dir)
    # The refusal says why: the hop went to a host that may not get the token, and where to list it.
    assert "to 127.0.0.2, which may not receive the token" in str(error.value)
    assert "add it to COPERNICUS_AUTH_HOSTS" in str(error.value)
    zipper = [r for r in services.requests if r[1] == "127.0.0.2"]
    assert zipper and not any(had_auth for *_, had_auth in zipper)


def test_login_errors_name_the_variables_not_the_values(services, env):
    with pytest.raises(copernicus.CredentialsMissing, match="COPERNICUS_PASSWORD"):
        copernicus.Credentials.from_env(lambda name: {"COPERNICUS_USER": "ada"}.get(name))
    wrong = {**services.env, "COPERNICUS_PASSWORD": "not-the-password"}
    session = Session(wrong.get)
    with pytest.raises(copernicus.LoginError, match="check COPERNICUS_USER and COPERNICUS_PASSWORD") as error:
        session.token.authorization()
    assert "not-the-password" not in str(error.value) and "ada@" not in str(error.value)
    assert "hidden" in repr(session.token._credentials)


def test_totp_code_matches_rfc6238():
    # RFC 6238 appendix B, SHA-1 secret "12345678901234567890" (base32 below), T = 59 s → 94287082 (8 digits).
    assert copernicus.totp_code("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", 59) == "287082"


def test_stopped_fetch_resumes_from_its_part_files(services, env, sample_safe, data_dir):
    total = sum(needed_sizes(sample_safe).values())
    services.faults.bandwidth = 200_000  # bytes/s per connection: the stop lands mid-file
    deadline = time.monotonic() + 0.6
    with pytest.raises(TransferCancelled):
        Session(env).fetch(data_dir, should_stop=lambda: time.monotonic() > deadline)
    assert list(data_dir.rglob("*.jp2.part"))
    services.faults.bandwidth = None
    safe, _ = Session(env).fetch(data_dir)
    assert verify_product(safe, [str(p.relative_to(safe)) for p in safe.rglob("*.jp2")]).complete
    assert not list(data_dir.rglob("*.part"))
    refetched = sum(services.bytes_served.values()) - services.bytes_served["manifest.safe"] - total
    assert 0 <= refetched < 0.1 * total


def test_two_fetchers_share_one_download(services, env, sample_safe, data_dir):
    results: list[Path] = []

    def fetch_locked() -> None:
        session = Session(env)
        with scene_lock(data_dir, "sample"):
            results.append(session.fetch(data_dir)[0])

    threads = [threading.Thread(target=fetch_locked) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2 and results[0] == results[1]
    assert dict(services.bytes_served) == {
        **needed_sizes(sample_safe),
        "manifest.safe": services.bytes_served["manifest.safe"],
    }


def test_range_past_the_end_of_a_file_of_unknown_size(services, env, sample_safe, tmp_path):
    """A partial file already complete (cut before its rename) is kept; one longer than the file restarts."""
    session = Session(env)
    url = copernicus.node_url(session.endpoints, session.scene(), "MTD_MSIL2A.xml") + "/$value"
    original = (sample_safe / "MTD_MSIL2A.xml").read_bytes()
    for leftover, fetched in ((original, 0), (original + b"junk", len(original))):
        dest = tmp_path / f"{len(leftover)}" / "MTD_MSIL2A.xml"
        dest.parent.mkdir()
        dest.with_name("MTD_MSIL2A.xml.part").write_bytes(leftover)
        before = services.bytes_served["MTD_MSIL2A.xml"]
        session.client.fetch_file(url, dest, authorized=True)
        assert dest.read_bytes() == original
        assert services.bytes_served["MTD_MSIL2A.xml"] - before == fetched


def test_corrupt_manifest_on_disk_is_fetched_again(services, env, sample_safe, data_dir):
    safe, _ = Session(env).fetch(data_dir)
    original = (sample_safe / "manifest.safe").read_bytes()
    (safe / "manifest.safe").write_bytes(original[: len(original) // 3])  # cut: not valid XML
    safe, manifest = Session(env).fetch(data_dir)
    assert (safe / "manifest.safe").read_bytes() == original
    assert len(manifest) == len(read_manifest(sample_safe))


def test_corrupted_manifest_download_is_fetched_again(services, env, sample_safe, data_dir):
    services.faults.corrupt = {"manifest.safe": 1}  # a flipped byte: right size, does not parse
    safe, _ = Session(env).fetch(data_dir)
    assert (safe / "manifest.safe").read_bytes() == (sample_safe / "manifest.safe").read_bytes()
    assert services.bytes_served["manifest.safe"] == 2 * len((sample_safe / "manifest.safe").read_bytes())


def test_concurrency_429s_are_waited_out(services, env, sample_safe, data_dir):
    """Another client holds the account's connections: 429 "too many concurrent connections" with
    Retry-After 1 s, far more often than the tries allowed. The waits grow and the fetch goes through."""
    services.faults.throttle = {"manifest.safe": 12}
    services.faults.retry_after = "1"
    session = Session(env, attempts=4, backoff_s=0.5)
    safe, _ = session.fetch(data_dir)
    assert (safe / "manifest.safe").read_bytes() == (sample_safe / "manifest.safe").read_bytes()
    assert len(session.sleeps) == 12 and min(session.sleeps) >= 1.0
    assert session.sleeps[:6] == sorted(session.sleeps[:6]) and session.sleeps[5] >= 16  # doubling
    assert max(session.sleeps) <= RetryPolicy().max_backoff_s * 1.25


def _fetch_in_thread(session: Session, data_dir: Path, **kwargs) -> list[BaseException]:
    """Runs a fetch; returns its exception once it ends (the test fails if it is still waiting after 120 s)."""
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            session.fetch(data_dir, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(120)  # the wait it must cut short is 900 s
    assert not thread.is_alive(), "the fetch kept waiting after the cancel"
    return errors


def test_a_failure_interrupts_retry_waits_and_starts_no_new_file(services, env, sample_safe, data_dir):
    by_size = sorted(needed_sizes(sample_safe).items(), key=lambda item: item[1], reverse=True)
    (waiting, _), (failing, _) = by_size[0], by_size[1]  # the two files the first two connections start
    services.faults.throttle = {waiting: 100}
    services.faults.retry_after = "900"
    services.faults.missing = {failing}
    session = Session(env, record=False)
    session.client.connections = 2
    errors = _fetch_in_thread(session, data_dir)
    assert len(errors) == 1 and isinstance(errors[0], HttpError) and "404" in str(errors[0])
    asked = {r[2].split("Nodes(")[-1].removesuffix(")/$value") for r in services.requests if r[2].endswith("$value")}
    assert asked == {"manifest.safe", waiting, failing}  # no file started after the failure


@pytest.mark.parametrize("which", ["manifest", "band"])
def test_a_stop_interrupts_a_retry_wait(services, env, sample_safe, data_dir, which):
    largest = max(needed_sizes(sample_safe).items(), key=lambda item: item[1])[0]
    largest = "manifest.safe" if which == "manifest" else largest
    services.faults.throttle = {largest: 100}
    services.faults.retry_after = "900"
    errors = _fetch_in_thread(
        Session(env, record=False), data_dir, should_stop=lambda: services.faults.throttle[largest] < 100
    )
    assert len(errors) == 1 and isinstance(errors[0], TransferCancelled)


def test_token_refreshed_as_often_as_a_request_needs(services, env, data_dir):
    services.faults.revoke_each = 3  # three 401s in a row on the first file, each after a fresh token
    session = Session(env)
    session.fetch(data_dir)
    assert services.refreshes >= 3 and services.logins == 1


def test_cut_before_the_first_chunk_resumes_with_range(services, env, sample_safe, data_dir):
    sizes = needed_sizes(sample_safe)
    band = next(n for n in sizes if "_B07_" in n)
    assert sizes[band] > CHUNK_BYTES
    services.faults.drop_after = {band: 5000}
    safe, _ = Session(env).fetch(data_dir)
    assert next(safe.rglob(band)).read_bytes() == next(sample_safe.rglob(band)).read_bytes()
    assert services.bytes_served[band] == sizes[band]  # the 5000 bytes received were kept, not fetched again
