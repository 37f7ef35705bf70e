"""The HTTP layer imagery sources share: one session, retries, redirects with the token kept, resumable files.

- Retries with exponential backoff on 5xx, dropped or timed-out connections; a download that made progress
  before the connection dropped does not use up an attempt. HTTP 429 (CDSE: "too many concurrent
  connections", when another client uses the account's slots) is waited out with growing waits (``Retry-After``
  honoured as a floor) for up to ``RetryPolicy.max_rate_limited_s``, not counted as a failed try.
- Waits between tries end at once when the transfer is cancelled (a stop request, or another file failed).
- A 401 with a token renews the token and tries again, once per token value (threads share the token).
- Redirects are followed by hand so that the ``Authorization`` header survives a hop to another host of the
  same service (CDSE sends downloads from ``download.`` to ``zipper.``), and only to such hosts; a refusal after
  a hop that did not get the token says so and names the setting that lists the hosts.
- Files are written to ``<name>.part`` as the bytes arrive (a cut keeps every byte received), resumed with an
  HTTP ``Range`` request when the server allows it, checked (size, checksum), re-fetched on a mismatch, then
  renamed into place.
- :func:`fetch_files` runs up to ``connections`` transfers at once and reports progress from the calling
  thread only (the job context's store connection is not shared across threads).
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from torchbearer.locks import LockWaitCancelled, any_lock

log = logging.getLogger(__name__)

#: Bytes read per chunk: small enough that a dropped connection loses little, large enough to be cheap.
CHUNK_BYTES = 64 * 1024
#: Statuses worth another try: rate limiting and server-side failures.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
#: Free disk kept beyond what the files need (the scene stack is built next to them), bytes.
DISK_MARGIN_BYTES = 256 * 1024 * 1024

Report = Callable[..., Any]


class HttpError(RuntimeError):
    """A request failed for good; the message has the method, URL, status and what the server said."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ChecksumError(RuntimeError):
    """A file kept failing its manifest checksum after the re-fetches allowed."""


class DiskSpaceError(OSError):
    """Not enough free disk for the files to fetch (says how much is needed and where)."""


class TransferCancelled(RuntimeError):
    """A transfer stopped because another one failed or the job was asked to stop."""


class TokenSource(Protocol):
    """Something that gives an ``Authorization`` header value and can be told it was refused."""

    def authorization(self) -> str: ...

    def invalidate(self, value: str) -> None: ...


class StopFlag:
    """A stop request polled from a callable (a job's ``should_stop``), usable where a transfer takes a
    ``cancel`` event: :meth:`wait` returns as soon as the callable turns true (checked every ``poll_s``)."""

    def __init__(self, should_stop: Callable[[], bool], poll_s: float = 0.2) -> None:
        self.should_stop = should_stop
        self.poll_s = poll_s

    def is_set(self) -> bool:
        return bool(self.should_stop())

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.poll_s, left))
        return True


class ConnectionSlots:
    """A cap on simultaneous transfers shared by every process using ``folder``: ``count`` lock files, one
    held per transfer (:func:`torchbearer.locks.any_lock`). CDSE allows 4 connections per user, so jobs
    fetching side by side share 4."""

    def __init__(self, folder: Path, count: int, poll_s: float = 0.05) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = [folder / f"connection-{index}.lock" for index in range(count)]
        self.poll_s = poll_s

    @contextmanager
    def hold(self, cancel: threading.Event | StopFlag | None = None) -> Iterator[None]:
        """Wait for a free slot (raising :class:`TransferCancelled` if ``cancel`` is set meanwhile)."""
        try:
            with any_lock(self.paths, should_stop=lambda: cancel is not None and cancel.is_set(), poll_s=self.poll_s):
                yield
        except LockWaitCancelled:
            raise TransferCancelled("cancelled while waiting for a free connection") from None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. Delays are seconds; attempts count tries without progress."""

    attempts: int = 6
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    max_retry_after_s: float = 900.0
    #: Total wait on HTTP 429 answers for one request before giving up, seconds.
    max_rate_limited_s: float = 3600.0
    #: Re-fetches of a file whose checksum does not match before giving up.
    refetches: int = 2

    def delay(self, failures: int) -> float:
        """Backoff before try ``failures + 1``: doubling, with up to 25 % jitter so clients spread out."""
        base = min(self.max_backoff_s, self.backoff_s * 2 ** max(0, failures - 1))
        return base * (1 + random.random() / 4)

    def retry_after(self, response: requests.Response, failures: int) -> float:
        """The server's ``Retry-After`` (seconds or an HTTP date), capped; else the backoff."""
        raw = response.headers.get("Retry-After")
        if raw:
            try:
                seconds = float(raw)
            except ValueError:
                try:
                    seconds = email.utils.parsedate_to_datetime(raw).timestamp() - time.time()
                except (TypeError, ValueError):
                    seconds = self.delay(failures)
            return min(max(seconds, 0.0), self.max_retry_after_s)
        return self.delay(failures)

    def rate_limited(self, response: requests.Response, count: int) -> float:
        """Wait after the ``count``-th 429 in a row: growing backoff, never less than the ``Retry-After``.

        CDSE answers 429 with ``Retry-After: 1`` while the account's connections are taken; retrying every
        second would use up the tries in seconds, so the wait doubles up to ``max_backoff_s``.
        """
        return max(self.retry_after(response, count), self.delay(count))


def _describe(response: requests.Response) -> str:
    text = response.text[:200].strip()
    described = f"HTTP {response.status_code} {response.reason or ''}".strip() + (f": {text}" if text else "")
    return described + getattr(response, "withheld_note", "")


def _pause(seconds: float, cancel: threading.Event | StopFlag | None, sleep: Callable[[float], None] | None) -> None:
    """Wait ``seconds`` between tries; :class:`TransferCancelled` as soon as ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise TransferCancelled("cancelled while waiting to try again")
    if sleep is not None:
        sleep(seconds)
    elif cancel is not None:
        cancel.wait(seconds)
    else:
        time.sleep(seconds)
    if cancel is not None and cancel.is_set():
        raise TransferCancelled("cancelled while waiting to try again")


class HttpClient:
    """One ``requests`` session with retries, token handling and a pool of ``connections`` connections.

    ``auth_hosts``: host names (or domain suffixes such as ``dataspace.copernicus.eu``) the token may be sent
    to after a redirect; the host a request starts at always gets it; ``auth_hosts_setting`` names where a user
    sets that list (in the error of a refusal after a hop without the token). ``slots``: a cap on file transfers
    shared with other processes (held for each transfer, on top of this client's own ``connections``).
    ``sleep``: called for the waits between tries instead of an interruptible wait (tests record them).
    """

    def __init__(
        self,
        *,
        token: TokenSource | None = None,
        auth_hosts: Iterable[str] = (),
        connections: int = 4,
        retry: RetryPolicy | None = None,
        timeout: tuple[float, float] = (15.0, 60.0),
        sleep: Callable[[float], None] | None = None,
        slots: ConnectionSlots | None = None,
        auth_hosts_setting: str = "COPERNICUS_AUTH_HOSTS",
    ) -> None:
        if not 1 <= connections <= 16:
            raise ValueError(f"connections must be 1..16, got {connections}")
        self.token = token
        self.auth_hosts = tuple(h.lower().lstrip(".") for h in auth_hosts)
        self.connections = connections
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.sleep = sleep
        self.slots = slots
        self.auth_hosts_setting = auth_hosts_setting
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=connections, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "torchbearer (+https://github.com/torchbearer)"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- single requests ----------------------------------------------------------------------------------

    def _may_authorize(self, start_url: str, url: str) -> bool:
        start, here = urlsplit(start_url), urlsplit(url)
        if start.scheme == "https" and here.scheme != "https":
            return False  # never send a token over a downgraded connection
        host = (here.hostname or "").lower()
        if host == (start.hostname or "").lower():
            return True
        return any(host == allowed or host.endswith("." + allowed) for allowed in self.auth_hosts)

    def _send(
        self, method: str, url: str, *, headers: dict[str, str], authorized: bool, stream: bool, **kwargs: Any
    ) -> tuple[requests.Response, str | None]:
        """One try: the request and its redirects. Returns the response and the token value sent (if any)."""
        start, sent = url, None
        for _ in range(_MAX_REDIRECTS + 1):
            hop_headers, withheld = dict(headers), False
            if authorized and self.token is not None:
                if self._may_authorize(start, url):
                    sent = self.token.authorization()
                    hop_headers["Authorization"] = sent
                else:
                    withheld, sent = True, None
            response = self.session.request(
                method, url, headers=hop_headers, stream=stream, allow_redirects=False, timeout=self.timeout,
                **kwargs,
            )  # fmt: skip
            if response.status_code not in _REDIRECTS or "Location" not in response.headers:
                if withheld and response.status_code in (401, 403):
                    response.withheld_note = self._withheld_note(start, url)  # type: ignore[attr-defined]
                return response, sent
            response.close()
            url = urljoin(url, response.headers["Location"])
            kwargs.pop("params", None)  # the Location carries the query already
            if response.status_code == 303:
                method, kwargs = "GET", {k: v for k, v in kwargs.items() if k not in ("data", "json")}
        raise HttpError(f"{method} {start}: more than {_MAX_REDIRECTS} redirects")

    def _withheld_note(self, start: str, url: str) -> str:
        here, there = urlsplit(start).hostname, urlsplit(url).hostname
        return (
            f" (redirected from {here} to {there}, which may not receive the token, so it was sent without: "
            f"if {there} belongs to the service, add it to {self.auth_hosts_setting})"
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        authorized: bool = False,
        stream: bool = False,
        cancel: threading.Event | StopFlag | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """A request retried on 429/5xx/connection errors; a 401 renews the token (once per token value).

        Returns the final response whatever its status (callers check it); raises :class:`HttpError` when
        the retries are used up, :class:`TransferCancelled` when ``cancel`` is set during a wait.
        """
        failures, limited, limited_s, last = 0, 0, 0.0, ""
        refused: set[str] = set()  # token values the server refused in this request
        while True:
            try:
                response, sent = self._send(
                    method, url, headers=headers or {}, authorized=authorized, stream=stream, **kwargs
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                failures += 1
                last = f"{type(exc).__name__}: {exc}"
                if failures >= self.retry.attempts:
                    break
                _pause(self.retry.delay(failures), cancel, self.sleep)
                continue
            if response.status_code == 401 and sent is not None and sent not in refused:
                # Another thread may have renewed it already: invalidate is a no-op then, and the next
                # authorization() hands out the new token. The same value refused twice is a real refusal.
                response.close()
                refused.add(sent)
                self.token.invalidate(sent)  # type: ignore[union-attr]
                continue
            if response.status_code == 429:
                limited += 1
                last = _describe(response)
                response.close()
                wait = self.retry.rate_limited(response, limited)
                if limited_s + wait > self.retry.max_rate_limited_s:
                    failures = limited
                    break
                if limited == 1 or limited % 10 == 0:
                    log.info("%s %s: %s; waiting %.0f s for a free slot", method, url, last, wait)
                limited_s += wait
                _pause(wait, cancel, self.sleep)
                continue
            if response.status_code not in RETRY_STATUSES:
                return response
            failures += 1
            last = _describe(response)
            response.close()
            if failures >= self.retry.attempts:
                break
            _pause(self.retry.retry_after(response, failures), cancel, self.sleep)
        raise HttpError(f"{method} {url}: gave up after {failures} attempts; last answer: {last}")

    def get_json(
        self,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        authorized: bool = False,
        cancel: threading.Event | StopFlag | None = None,
    ) -> Any:
        """GET a JSON document; raises :class:`HttpError` on a non-2xx answer or a body that is not JSON."""
        response = self.request("GET", url, params=params, authorized=authorized, cancel=cancel)
        return _json(response, f"GET {url}")

    def post_json(self, url: str, *, json: Any, authorized: bool = False) -> Any:
        """POST a JSON body, return the JSON answer (errors as in :meth:`get_json`)."""
        response = self.request("POST", url, json=json, authorized=authorized)
        return _json(response, f"POST {url}")

    # -- files ----------------------------------------------------------------------------------------------

    def fetch_file(
        self,
        url: str,
        dest: Path,
        *,
        size: int | None = None,
        check: Callable[[Path], bool] | None = None,
        on_bytes: Callable[[int], None] = lambda n: None,
        authorized: bool = False,
        cancel: threading.Event | StopFlag | None = None,
    ) -> None:
        """Fetch ``url`` to ``dest`` through ``dest.part``, resuming what an earlier try left there.

        ``size`` (bytes) and ``check`` (e.g. the manifest checksum) are verified before the rename; a file
        failing them is fetched again up to ``retry.refetches`` times. ``on_bytes`` is called per chunk, from
        this thread; a negative count takes back bytes of a discarded partial file.
        """
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        failures = refetches = 0
        while True:
            if cancel is not None and cancel.is_set():  # also keeps a queued file from starting after a cancel
                raise TransferCancelled(f"{dest.name}: cancelled")
            offset = part.stat().st_size if part.exists() else 0
            if size is not None and offset > size:
                on_bytes(-offset)
                part.unlink()
                offset = 0
            if size is None or offset < size or size == 0:
                try:
                    self._transfer(url, part, offset, on_bytes, authorized, cancel)
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                    progressed = part.exists() and part.stat().st_size > offset
                    failures = 0 if progressed else failures + 1
                    if failures >= self.retry.attempts:
                        raise HttpError(
                            f"GET {url}: gave up after {failures} dropped connections ({type(exc).__name__})"
                        ) from None
                    if not progressed:
                        _pause(self.retry.delay(failures), cancel, self.sleep)
                    continue
            if not part.exists():  # the server refused our partial file's range: start again from 0
                failures += 1
                if failures >= self.retry.attempts:
                    raise HttpError(f"GET {url}: the server keeps refusing the range requests")
                continue
            got = part.stat().st_size
            if size is not None and got < size:
                failures += 1  # the server ended the body early without an error
                if failures >= self.retry.attempts:
                    raise HttpError(f"GET {url}: the server keeps sending {got} of {size} bytes")
                continue
            if (size is not None and got != size) or (check is not None and not check(part)):
                refetches += 1
                on_bytes(-got)
                part.unlink()
                if refetches > self.retry.refetches:
                    raise ChecksumError(
                        f"{dest.name}: does not match its manifest checksum/size after {refetches} fetches"
                    )
                continue
            os.replace(part, dest)
            return

    def _transfer(
        self,
        url: str,
        part: Path,
        offset: int,
        on_bytes: Callable[[int], None],
        authorized: bool,
        cancel: threading.Event | StopFlag | None,
    ) -> None:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self.slots.hold(cancel) if self.slots is not None else nullcontext():
            self._stream(url, part, offset, headers, on_bytes, authorized, cancel)

    def _stream(
        self,
        url: str,
        part: Path,
        offset: int,
        headers: dict[str, str],
        on_bytes: Callable[[int], None],
        authorized: bool,
        cancel: threading.Event | StopFlag | None,
    ) -> None:
        response = self.request("GET", url, headers=headers, authorized=authorized, stream=True, cancel=cancel)
        with response:
            if response.status_code == 416 and offset:
                if response.headers.get("Content-Range", "").endswith(f"/{offset}"):
                    return  # the partial file was complete already (cut between last byte and rename)
                on_bytes(-offset)  # our partial file is longer than theirs: start over
                part.unlink()
                return
            if not 200 <= response.status_code < 300:
                raise HttpError(f"GET {url}: {_describe(response)}", response.status_code)
            resumed = response.status_code == 206 and _range_start(response) == offset
            if offset and not resumed:
                on_bytes(-offset)  # the server ignored the Range: what we had is replaced
            with part.open("ab" if resumed else "wb") as handle:
                for chunk in _arriving(response):
                    handle.write(chunk)  # kept even when cancelled: a resume starts after it
                    on_bytes(len(chunk))
                    if cancel is not None and cancel.is_set():
                        raise TransferCancelled(f"{part.name}: cancelled")


def _arriving(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: each read returns what the connection has, up to :data:`CHUNK_BYTES`.

    ``iter_content`` waits for whole chunks and drops a partial one when the connection breaks, so a cut
    before the first 64 KiB left nothing to resume from. urllib3's errors become requests' as in
    ``iter_content``.
    """
    try:
        while chunk := response.raw.read1(CHUNK_BYTES, decode_content=True):
            yield chunk
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc


def _range_start(response: requests.Response) -> int | None:
    """First byte of a 206 answer from ``Content-Range: bytes a-b/n``."""
    raw = response.headers.get("Content-Range", "")
    try:
        return int(raw.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _json(response: requests.Response, what: str) -> Any:
    if not 200 <= response.status_code < 300:
        raise HttpError(f"{what}: {_describe(response)}", response.status_code)
    try:
        return response.json()
    except ValueError:
        raise HttpError(f"{what}: the answer is not JSON ({response.text[:120]!r})") from None


def ensure_free_space(folder: Path, needed: int, margin: int = DISK_MARGIN_BYTES) -> None:
    """Raise :class:`DiskSpaceError` unless ``folder``'s disk has ``needed`` + ``margin`` bytes free."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed + margin > free:
        raise DiskSpaceError(
            f"not enough disk space in {folder}: the files need {needed / 1e9:.2f} GB "
            f"(+{margin / 1e9:.2f} GB margin), {free / 1e9:.2f} GB free"
        )


@dataclass(frozen=True)
class FileTask:
    """One file to fetch: where from, where to, expected size (bytes) and an optional content check."""

    url: str
    dest: Path
    size: int | None = None
    check: Callable[[Path], bool] | None = None


@dataclass
class _Tally:
    """Bytes and files done across transfer threads (read by the reporting thread)."""

    done: int = 0
    files: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, count: int) -> None:
        with self.lock:
            self.done += count


def fetch_files(
    client: HttpClient,
    tasks: Sequence[FileTask],
    *,
    report: Report | None = None,
    authorized: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    report_fields: dict[str, Any] | None = None,
    interval_s: float = 0.25,
) -> None:
    """Fetch files ``client.connections`` at a time; files already in place are skipped.

    Checks free disk first. ``report(stage="downloading", done=, total=, unit="B", files_done=, files_total=,
    force=)`` is called from this thread every ``interval_s`` seconds. The first failure cancels the rest
    (their ``.part`` files stay for a later resume) and is raised.
    """
    # Largest first: the connections finish together instead of one trailing with a big file.
    todo = sorted((t for t in tasks if not t.dest.is_file()), key=lambda t: t.size or 0, reverse=True)
    partial = sum((t.dest.with_name(t.dest.name + ".part")).stat().st_size for t in todo if _has_part(t))
    total = sum(t.size or 0 for t in todo)
    if todo:
        ensure_free_space(todo[0].dest.parent, max(0, total - partial))
    tally, cancel = _Tally(done=partial), threading.Event()

    def run(task: FileTask) -> None:
        if cancel.is_set():  # another file failed (or a stop came): this one does not start
            return
        try:
            client.fetch_file(
                task.url, task.dest, size=task.size, check=task.check, on_bytes=tally.add, authorized=authorized,
                cancel=cancel,
            )  # fmt: skip
        except BaseException:
            # Set here, in the failing thread, before the pool hands it the next file: the main thread only
            # notices the failure on its next wake-up, by which time a queued file could already have started.
            cancel.set()
            raise
        with tally.lock:
            tally.files += 1

    def emit(force: bool = False) -> None:
        if report is not None:
            report(
                stage="downloading", done=tally.done, total=total, unit="B", files_done=tally.files,
                files_total=len(todo), force=force, **(report_fields or {}),
            )  # fmt: skip

    if not todo:
        return
    emit(force=True)
    with ThreadPoolExecutor(max_workers=client.connections, thread_name_prefix="fetch") as pool:
        futures: set[Future] = {pool.submit(run, task) for task in todo}
        pending = futures
        while pending:
            _, pending = wait(pending, timeout=interval_s, return_when=FIRST_EXCEPTION)
            if _first_error(futures) is not None or should_stop():
                cancel.set()  # ends the waits between tries; files not started yet do not start
                for future in pending:
                    future.cancel()
                wait(pending)
                failed = _first_error(futures)  # every file has ended now: the cause is among them
                if failed is not None:
                    raise failed
                raise TransferCancelled("download stopped on request; partial files are kept for a resume")
            emit()
    emit(force=True)


def _first_error(futures: set[Future]) -> BaseException | None:
    """The error of an ended file, preferring a cause to the TransferCancelled of the files it cancelled."""
    errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
    return next((e for e in errors if not isinstance(e, TransferCancelled)), errors[0] if errors else None)


def _has_part(task: FileTask) -> bool:
    return task.dest.with_name(task.dest.name + ".part").is_file()


#: Simultaneous connections per job (CDSE allows 4 per user).
MAX_CONNECTIONS = 4


def client_from_env(
    env: Callable[[str], str | None], auth_hosts: tuple[str, ...] = (), slots_dir: Path | None = None
) -> HttpClient:
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
