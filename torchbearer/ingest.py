"""Job files into the store: validate, expand, queue; or refuse with the reasons, moved aside.

Used by the daemon for files dropped into ``queue/`` and by ``torchbearer submit``. A file is first renamed
into ``queue/accepted/`` under an ``.ingesting-<token>-`` name (atomic, so it is never read twice), then
validated; accepted files end as ``accepted/<first job id>-<file>``, refused ones in ``rejected/`` next to a
``<file>.error.txt``. The token is stored in the jobs' ``source`` so a crash between the store commit and the
final rename is mended at the next start without queueing the file twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchbearer.spec import JobFileError, JobSpec, ParsedJob, PathRules, SpecIssue, load_job_file
from torchbearer.store import DependencyError, NewJob, Store

#: The pre-flight check a caller runs on a file's parsed jobs (``preflight.check_jobs`` bound to its settings).
Preflight = Callable[[list[ParsedJob]], list]

log = logging.getLogger("torchbearer.ingest")

INGESTING_PREFIX = ".ingesting-"
#: Longest file name kept in accepted/ and rejected/ (bytes; file systems allow 255).
MAX_STORED_NAME_BYTES = 200


@dataclass(frozen=True)
class IngestResult:
    """What became of one file: job ids (accepted) or the error text (refused), and where the file went."""

    source: str
    job_ids: tuple[int, ...] = ()
    error: str | None = None
    moved_to: Path | None = None

    @property
    def accepted(self) -> bool:
        return self.error is None


def job_row(spec: JobSpec, given: dict, source: str, *, held: bool = False, schedule_id: int | None = None) -> NewJob:
    """The store row of one validated job (a file's, or a fired schedule's copy)."""
    return NewJob(
        name=spec.name,
        kind=spec.kind,
        spec_given=given,
        spec=spec.model_dump(mode="json"),
        priority=spec.priority,
        source=source,
        after=list(spec.after),
        not_before=spec.not_before_ts,
        retries=spec.retries,
        retry_backoff_s=spec.retry_backoff,
        timeout_s=spec.timeout,
        devices=spec.devices,
        schedule_id=schedule_id,
        held=held,
    )


def new_jobs(parsed: list[ParsedJob], source: str, *, held: bool = False) -> tuple[list[NewJob], list[tuple]]:
    """Store rows for a file's jobs, and the ``(spec, given)`` of those that are recurring schedules."""
    rows: list[NewJob] = []
    schedules: list[tuple] = []
    for job in parsed:
        if job.spec.schedule:
            schedules.append((job.spec, job.given))
        else:
            rows.append(job_row(job.spec, job.given, source, held=held))
    return rows, schedules


def queue_parsed(store: Store, parsed: list[ParsedJob], source: str, *, held: bool = False) -> list[int]:
    """Put validated jobs (and schedules) into the store; returns the ids of the jobs queued now."""
    rows, schedules = new_jobs(parsed, source, held=held)
    ids = store.add_jobs(rows) if rows else []
    for spec, given in schedules:
        store.add_schedule(spec.name, spec.schedule, given, spec.model_dump(mode="json"), source)
    return ids


def _write_error(path: Path, text: str) -> None:
    path.with_name(path.name + ".error.txt").write_text(text + "\n", encoding="utf-8")


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    stem, suffix = path.stem, path.suffix
    for n in range(1, 10_000):
        candidate = path.with_name(f"{stem}.{n}{suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(path)


def ingest_queue_file(
    path: Path, queue_dir: Path, store: Store, *, paths: PathRules | None = None, preflight: Preflight | None = None
) -> IngestResult:
    """Take one complete file out of the queue folder and queue its jobs, or refuse it.

    ``paths``: where its paths may point (see :class:`~torchbearer.spec.PathRules`); None skips that check.
    ``preflight``: the deep check (``preflight.py``): certain problems refuse the file, warnings stay with its jobs.
    """
    accepted_dir, rejected_dir = queue_dir / "accepted", queue_dir / "rejected"
    accepted_dir.mkdir(exist_ok=True)
    rejected_dir.mkdir(exist_ok=True)
    token = uuid.uuid4().hex[:12]
    name = storable_name(path.name)
    claimed = accepted_dir / f"{INGESTING_PREFIX}{token}-{name}"
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return IngestResult(path.name, error="vanished before it could be read")
    return _ingest_claimed(claimed, name, token, rejected_dir, store, paths, preflight)


def _checked(parsed: list[ParsedJob], source: str, preflight: Preflight | None) -> list:
    """The pre-flight warnings of a file's jobs; raises JobFileError when it finds certain failures."""
    from torchbearer.preflight import apply

    return apply(preflight(parsed), source) if preflight is not None else []


def storable_name(name: str) -> str:
    """A queue file's name cut to :data:`MAX_STORED_NAME_BYTES`, keeping its suffix: with the prefixes and
    suffixes ingest adds (``.ingesting-<token>-``, ``<id>-``, ``.error.txt``) a longer one would pass the file
    system's 255-byte limit and the rename would fail."""
    data = name.encode()
    if len(data) <= MAX_STORED_NAME_BYTES:
        return name
    suffix = Path(name).suffix
    stem = data[: MAX_STORED_NAME_BYTES - len(suffix.encode()) - 1].decode(errors="ignore")
    return f"{stem}_{suffix}"


def _ingest_claimed(
    claimed: Path,
    name: str,
    token: str,
    rejected_dir: Path,
    store: Store,
    paths: PathRules | None = None,
    preflight: Preflight | None = None,
) -> IngestResult:
    source = f"{name}#{token}"
    try:
        parsed = load_job_file(claimed, paths=paths)
        warnings = _checked(parsed, str(claimed), preflight)
        ids = queue_parsed(store, parsed, source)
        if warnings:
            from torchbearer.preflight import keep_warnings

            keep_warnings(store, parsed, ids, warnings)
            log.warning("%s: pre-flight warnings:\n%s", name, "\n".join(w.format() for w in warnings))
    except (JobFileError, DependencyError) as exc:
        error = str(exc).replace(str(claimed), name)
        if isinstance(exc, DependencyError):
            error = SpecIssue("after", str(exc)).format(name)
        target = _unique(rejected_dir / name)
        os.rename(claimed, target)
        _write_error(target, error)
        log.warning("refused %s:\n%s", name, error)
        return IngestResult(name, error=error, moved_to=target)
    target = _unique(claimed.with_name(f"{ids[0]}-{name}" if ids else f"schedule-{name}"))
    os.rename(claimed, target)
    log.info("accepted %s: job%s %s", name, "s" if len(ids) != 1 else "", ", ".join(f"#{i}" for i in ids))
    return IngestResult(name, job_ids=tuple(ids), moved_to=target)


def recover_claimed(
    queue_dir: Path, store: Store, *, paths: PathRules | None = None, preflight: Preflight | None = None
) -> list[IngestResult]:
    """Finish files a previous daemon claimed but did not file away (it died in between)."""
    results = []
    accepted_dir = queue_dir / "accepted"
    if not accepted_dir.is_dir():
        return results
    for claimed in sorted(accepted_dir.glob(f"{INGESTING_PREFIX}*")):
        token, _, name = claimed.name.removeprefix(INGESTING_PREFIX).partition("-")
        source = f"{name}#{token}"
        ids = store.job_ids_from([source])
        if ids:
            target = _unique(claimed.with_name(f"{ids[0]}-{name}"))
            os.rename(claimed, target)
            results.append(IngestResult(name, job_ids=tuple(ids), moved_to=target))
        else:
            results.append(_ingest_claimed(claimed, name, token, queue_dir / "rejected", store, paths, preflight))
    return results


def submit_file(
    path: Path,
    queue_dir: Path,
    store: Store,
    *,
    held: bool = False,
    paths: PathRules | None = None,
    preflight: Preflight | None = None,
) -> list[int]:
    """Validate and queue a file directly through the store (no daemon needed); keeps a copy in accepted/.

    Raises :class:`JobFileError` (or :class:`DependencyError`) with every issue when the file is refused.
    """
    if path.resolve().parent == queue_dir.resolve():  # the daemon takes it from there: queued twice otherwise
        message = "already in the queue folder: the daemon queues it by itself (submit files from elsewhere)"
        raise JobFileError(str(path), [SpecIssue("", message)])
    parsed = load_job_file(path, paths=paths)
    warnings = _checked(parsed, str(path), preflight)
    ids = queue_parsed(store, parsed, f"{path.name}#submit-{int(time.time())}", held=held)
    if warnings:
        from torchbearer.preflight import keep_warnings

        keep_warnings(store, parsed, ids, warnings)
    accepted_dir = queue_dir / "accepted"
    accepted_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, _unique(accepted_dir / (f"{ids[0]}-{path.name}" if ids else f"schedule-{path.name}")))
    return ids
