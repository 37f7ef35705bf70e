"""Known secrets scrubbed from every text torchbearer stores or prints.

A server that echoes a request back in an error (``…&password=…``) would otherwise put a credential into a
job's reason, the store, ``show --json``, the daemon's log and the run folder's ``log.txt``. Each process
registers the secret values it knows (:func:`register_settings`: every ``SecretStr`` setting, and the
credentials inside notifier URLs; :func:`register`: a token obtained at run time; :func:`add_source`: more
kinds of secrets later), and :func:`scrub` replaces each, as written
and URL-encoded, with :data:`MASK`. Values after a secret-looking key (``password=``, ``access_token=``,
``Bearer``) are masked too, known or not. The store scrubs what it writes, the logging handlers and the
worker's stdout/stderr scrub what they print.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

if TYPE_CHECKING:  # logging is imported where a filter is used: status never loads it
    import logging

MASK = "***"
#: Shorter values are not scrubbed: masking every "ab" in every message would destroy the text.
MIN_SECRET_CHARS = 4
#: ``key=value`` pairs (query strings, form bodies) whose value is secret whatever it is.
_KEY_VALUE = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|totp|token|access_token|refresh_token|id_token|client_secret|api_key|apikey)"
    r"(=|\"\s*:\s*\")([^&\s'\",}]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")

_lock = threading.Lock()
_values: set[str] = set()
_pattern: re.Pattern[str] | None = None
#: Callables ``settings -> secret values``, asked by :func:`register_settings`.
_sources: list[Callable[[Any], Iterable[str | None]]] = []


def _forms(value: str) -> set[str]:
    """A secret as it may appear: as is, URL-encoded both ways, and escaped inside JSON."""
    return {value, quote(value, safe=""), quote_plus(value, safe=""), json.dumps(value)[1:-1]}


def register(*values: str | None) -> None:
    """Scrub these values (and their encodings) from now on in this process; short or empty ones are ignored."""
    global _pattern
    fresh = {form for v in values if v and len(v) >= MIN_SECRET_CHARS for form in _forms(v)} - _values
    if not fresh:
        return
    with _lock:
        _values.update(fresh)
        _pattern = re.compile("|".join(re.escape(v) for v in sorted(_values, key=len, reverse=True)))


def add_source(source: Callable[[Any], Iterable[str | None]]) -> None:
    """Another kind of secret: ``source(settings)`` returns its values (e.g. passwords inside notifier URLs)."""
    _sources.append(source)


def _settings_secrets(settings: Any) -> Iterable[str | None]:
    """Every ``SecretStr`` setting (credentials, notifier URLs and command) and the credentials inside each URL."""
    values = list(settings.secret_values())
    return values + [part for url in values if "://" in url for part in url_secrets(url)]


add_source(_settings_secrets)


#: Query keys of a notifier URL whose value is a credential.
_SECRET_KEYS = ("pass", "pwd", "token", "key", "secret", "auth", "webhook", "apikey")
#: A path segment or host part this long, mixing letters and digits, is taken for a token (Slack, Telegram …).
_TOKEN_MIN_CHARS = 16


def url_secrets(url: str) -> list[str]:
    """The credentials inside one URL (a notifier's): its password, secret query values, token-like parts,
    itself."""
    found = [url]
    try:
        parts = urlsplit(url)
    except ValueError:
        return found
    userinfo, _, host = parts.netloc.rpartition("@")
    if userinfo:
        user, _, password = userinfo.partition(":")
        found += [unquote(password)] if password else [unquote(user)]  # a lone user part is a token (ntfy)
    for key, value in parse_qsl(parts.query):
        if any(word in key.lower() for word in _SECRET_KEYS):
            found.append(value)
    for piece in [*host.replace(":", "/").split("/"), *parts.path.split("/")]:
        piece = unquote(piece)
        if len(piece) >= _TOKEN_MIN_CHARS and any(c.isdigit() for c in piece) and any(c.isalpha() for c in piece):
            found.append(piece)
    return found


def register_settings(settings: Any) -> None:
    """Register every secret the settings know (environment and env file), through every source."""
    for source in _sources:
        register(*source(settings))


def scrub(text: str) -> str:
    """``text`` with every known secret and every secret-looking ``key=value`` masked."""
    if not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)


def scrub_value(value: Any) -> Any:
    """:func:`scrub` applied to a string, or to the strings inside a JSON-like value."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v) for v in value]
    return value


class ScrubFilter:
    """A handler filter (logging takes any object with this ``filter``) that formats the record's message (and
    traceback) and scrubs them."""

    def filter(self, record: logging.LogRecord) -> bool:
        import logging

        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = scrub(message), None
        return True


def scrub_logging(logger: logging.Logger | None = None) -> None:
    """Add a :class:`ScrubFilter` to each handler of ``logger`` (the root logger by default)."""
    import logging

    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())


class ScrubbingStream:
    """A text stream that scrubs what is written through it (the worker's stdout and stderr → ``log.txt``)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(scrub(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def __getattr__(self, name: str) -> Any:  # encoding, buffer, … of the wrapped stream
        return getattr(self._stream, name)
