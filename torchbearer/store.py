"""The state store: one SQLite database (WAL) that every process shares.

The daemon, the workers, the CLI and the dashboard each open their own :class:`Store` on the same file. It
holds the jobs (their spec as given and as resolved), their attempts, every state transition with its time,
metrics, progress events, outputs, recurring schedules and a few queue-wide flags. Nothing else is shared
between processes, so a process that dies loses nothing that was committed.

The schema is versioned with ``PRAGMA user_version`` and upgraded by :data:`MIGRATIONS` inside one
transaction, after a copy of the file is kept next to it. A database written by a newer version is refused,
never rewritten: an unversioned state format once wiped pueue users' queues on upgrade.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import Enum, StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torchbearer.redact import scrub, scrub_value

if TYPE_CHECKING:
    import sqlite_utils


class JobState(StrEnum):
    """Where a job is in its life. Values are what the store, the CLI and the JSON output show."""

    QUEUED = "queued"
    WAITING = "waiting"  # on dependencies, not_before, or a retry's backoff
    HELD = "held"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # stopped by a daemon stop or crash; runs again
    DEPENDENCY_FAILED = "dependency-failed"


#: The legal moves of a job: ``TRANSITIONS[a]`` holds every state a job in state ``a`` may move to, and
#: ``TRANSITIONS[None]`` the states a new job starts in. :meth:`Store.transition` refuses any other move, so a
#: bug that would, say, run a succeeded job again fails loudly instead of corrupting the queue.
#: ``docs/architecture.md`` draws this table.
TRANSITIONS: dict[JobState | None, frozenset[JobState]] = {
    None: frozenset({JobState.QUEUED, JobState.WAITING, JobState.HELD}),  # submitted
    # queued: started, held or cancelled by hand, or failed at placement (needs more slots than exist)
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.HELD, JobState.CANCELLED, JobState.FAILED}),
    # waiting: its gates opened, a dependency failed, or held / cancelled by hand
    JobState.WAITING: frozenset({JobState.QUEUED, JobState.DEPENDENCY_FAILED, JobState.HELD, JobState.CANCELLED}),
    # held: released (queued, or waiting while its gates are shut) or cancelled
    JobState.HELD: frozenset({JobState.QUEUED, JobState.WAITING, JobState.CANCELLED}),
    # running: how the attempt ended; waiting is a failed attempt with retries left (its backoff); queued is a
    # submission a cluster's controller could not take (nothing started, the attempt discarded)
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.INTERRUPTED,
            JobState.WAITING,
            JobState.QUEUED,
        }
    ),
    # interrupted: runs again like a queued job
    JobState.INTERRUPTED: frozenset({JobState.RUNNING, JobState.HELD, JobState.CANCELLED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),  # done for good
    # failed, cancelled, dependency-failed: `torchbearer retry` queues them again (or waiting, behind gates)
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.WAITING}),
    JobState.CANCELLED: frozenset({JobState.QUEUED, JobState.WAITING}),
    JobState.DEPENDENCY_FAILED: frozenset({JobState.QUEUED, JobState.WAITING}),
}


class IllegalTransitionError(ValueError):
    """A move of a job that :data:`TRANSITIONS` does not allow (a bug in the caller, not in the job)."""


def check_transition(from_state: JobState | str | None, to_state: JobState | str) -> None:
    """Raise :class:`IllegalTransitionError` unless a job may move from ``from_state`` to ``to_state``."""
    source = None if from_state is None else JobState(from_state)
    target = JobState(to_state)
    if target not in TRANSITIONS[source]:
        allowed = ", ".join(sorted(TRANSITIONS[source])) or "nothing"
        raise IllegalTransitionError(
            f"a job cannot move from {source or 'submitted'} to {target} (from {source or 'submitted'}: {allowed})"
        )


class AttemptOutcome(StrEnum):
    """How one attempt of a job ended (``attempts.outcome``): written by the worker or the supervisor."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # stopped at a safe point or by a daemon stop; the job runs again


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEPENDENCY_FAILED})
RUNNABLE_STATES = frozenset({JobState.QUEUED, JobState.INTERRUPTED})
PENDING_STATES = frozenset({JobState.QUEUED, JobState.WAITING, JobState.HELD, JobState.INTERRUPTED})

SCHEMA_VERSION = 3

#: The light columns of a job (no specs): what ``status`` and the dashboard's queue table show.
SUMMARY_COLUMNS = (
    "id", "name", "kind", "state", "priority", "stage", "progress", "eta_s", "created_at", "started_at",
    "finished_at", "attempts", "reason", "slot",
)  # fmt: skip

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            source TEXT,
            spec_given TEXT NOT NULL,
            spec TEXT NOT NULL,
            after TEXT NOT NULL DEFAULT '[]',
            not_before REAL,
            retries INTEGER NOT NULL DEFAULT 0,
            retry_backoff_s REAL NOT NULL DEFAULT 60,
            timeout_s REAL,
            devices INTEGER NOT NULL DEFAULT 1,
            schedule_id INTEGER,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_try_at REAL,
            reason TEXT,
            error_tail TEXT,
            run_dir TEXT,
            stage TEXT,
            progress REAL,
            eta_s REAL,
            pid INTEGER,
            slot TEXT,
            executor TEXT,
            external_id TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            exit_code INTEGER
        )""",
        "CREATE INDEX jobs_state ON jobs (state, priority, id)",
        "CREATE INDEX jobs_name ON jobs (name)",
        """CREATE TABLE attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            number INTEGER NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            outcome TEXT,
            exit_code INTEGER,
            reason TEXT,
            pid INTEGER,
            slot TEXT,
            executor TEXT
        )""",
        "CREATE INDEX attempts_job ON attempts (job_id, number)",
        """CREATE TABLE transitions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            time REAL NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            reason TEXT
        )""",
        "CREATE INDEX transitions_job ON transitions (job_id, id)",
        """CREATE TABLE metrics (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            attempt INTEGER,
            time REAL NOT NULL,
            name TEXT NOT NULL,
            value REAL,
            step INTEGER,
            epoch INTEGER
        )""",
        "CREATE INDEX metrics_job ON metrics (job_id, name, id)",
        """CREATE TABLE progress (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            time REAL NOT NULL,
            stage TEXT,
            done REAL,
            total REAL,
            unit TEXT,
            epoch INTEGER,
            step INTEGER,
            eta_s REAL,
            fields TEXT
        )""",
        "CREATE INDEX progress_job ON progress (job_id, id)",
        """CREATE TABLE outputs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            time REAL NOT NULL,
            kind TEXT NOT NULL,
            path TEXT NOT NULL,
            UNIQUE (job_id, kind, path)
        )""",
        """CREATE TABLE schedules (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            cron TEXT NOT NULL,
            spec_given TEXT NOT NULL,
            spec TEXT NOT NULL,
            source TEXT,
            created_at REAL NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 1,
            last_fired_at REAL
        )""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
    # the daemon ingests each attempt's events file (runs.py) from the byte offset it reached, kept here
    2: ["ALTER TABLE attempts ADD COLUMN events_offset INTEGER NOT NULL DEFAULT 0"],
    # the warnings and errors a worker logged (its ``log`` events): what ``show`` and the dashboard list
    3: [
        """CREATE TABLE log_marks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            attempt INTEGER NOT NULL,
            time REAL NOT NULL,
            level TEXT NOT NULL,
            logger TEXT,
            message TEXT NOT NULL
        )""",
        "CREATE INDEX log_marks_job ON log_marks (job_id, id)",
    ],
}


class StoreError(RuntimeError):
    """The state database cannot be used (says which file and why)."""


#: SQLite's words for a store that cannot take writes for now (read-only, full, failing disk, locked for
#: too long): the daemon waits these out instead of dying.
TRANSIENT_WORDS = ("readonly", "read-only", "disk i/o error", "disk is full", "database is locked", "unable to open")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a store fault that may pass (read-only, I/O error, full disk), not a damaged file."""
    return isinstance(exc, sqlite3.OperationalError) and any(w in str(exc).lower() for w in TRANSIENT_WORDS)


def unusable(path: Path, exc: BaseException) -> StoreError:
    """The :class:`StoreError` for a database that cannot be opened or read: read-only or damaged, and what to do."""
    folder = path.parent
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        where = folder if not os.access(folder, os.W_OK) else path
        return StoreError(
            f"{where} is read-only ({exc}): the state database needs a writable folder (for its -wal and -shm "
            "files); make it writable, or point --state / TORCHBEARER_STATE at a writable place"
        )
    backups = sorted(folder.glob(f"{path.name}.bak-v*"))
    restore = f"restore the copy the last schema upgrade kept ({backups[-1]}), or " if backups else ""
    return StoreError(
        f"{path} is not a usable SQLite database ({exc}): the file is damaged or is not a torchbearer state "
        f"database. Stop every torchbearer process, then {restore}move it aside "
        f"(mv {path} {path}.broken) to start with an empty queue"
    )


class DependencyError(ValueError):
    """A job's ``after`` names a job that does not exist, or the jobs of a batch wait on each other."""


@dataclass(frozen=True)
class Job:
    """One row of the ``jobs`` table, with JSON columns decoded. Times are UNIX seconds."""

    id: int
    name: str
    kind: str
    state: str
    priority: int
    source: str | None
    spec_given: dict[str, Any]
    spec: dict[str, Any]
    after: list[int]
    not_before: float | None
    retries: int
    retry_backoff_s: float
    timeout_s: float | None
    devices: int
    schedule_id: int | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    next_try_at: float | None
    reason: str | None
    error_tail: str | None
    run_dir: str | None
    stage: str | None
    progress: float | None
    eta_s: float | None
    pid: int | None
    slot: str | None
    executor: str | None
    external_id: str | None
    cancel_requested: int
    exit_code: int | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        values = dict(row)
        for key in ("spec_given", "spec", "after"):
            values[key] = json.loads(values[key]) if values.get(key) else ({} if key != "after" else [])
        return cls(**{f.name: values.get(f.name) for f in fields(cls)})

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def duration_s(self) -> float | None:
        """Seconds from the latest start to the end (or to now while running)."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at and self.finished_at >= self.started_at else time.time()
        return end - self.started_at


@dataclass(frozen=True)
class NewJob:
    """What ingest hands the store for one job."""

    name: str
    kind: str
    spec_given: dict[str, Any]
    spec: dict[str, Any]
    priority: int = 0
    source: str | None = None
    after: Sequence[str | int] = ()  # names (batch first, then store) or ids
    not_before: float | None = None
    retries: int = 0
    retry_backoff_s: float = 60.0
    timeout_s: float | None = None
    devices: int = 1
    schedule_id: int | None = None
    held: bool = False


def _now() -> float:
    return time.time()


class _Keep(Enum):
    KEEP = "keep"


#: The default of a write method's column arguments: leave the column as it is (``None`` clears it).
KEEP = _Keep.KEEP
Keep = Literal[_Keep.KEEP]


def _given(**columns: Any) -> dict[str, Any]:
    """The columns a caller set (not :data:`KEEP`), text scrubbed of credentials, flags as 0/1."""
    given = {}
    for key, value in columns.items():
        if value is KEEP:
            continue
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, str):
            value = scrub(value)  # a server's answer in a reason or a log tail may echo a credential
        given[key] = value
    return given


def _too_new(path: Path, version: int) -> StoreError:
    return StoreError(
        f"{path} has schema version {version}, newer than this torchbearer knows "
        f"({SCHEMA_VERSION}): upgrade torchbearer; the database was left untouched"
    )


class Store:
    """A connection to the state database. Cheap to open; one per process (or per thread)."""

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unusable(self.path, exc) from None
        try:
            conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:  # refuse before switching to WAL, which rewrites the file's header
                conn.close()
                raise _too_new(self.path, version)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise unusable(self.path, exc) from None
        if mode.lower() != "wal":
            raise StoreError(f"{self.path}: could not switch to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        self.conn = conn
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and not is_transient(exc):
                raise  # a migration's own error (rolled back), not a damaged file
            raise unusable(self.path, exc) from None

    def check(self) -> None:
        """Raise :class:`StoreError` (saying what to do) unless SQLite's ``quick_check`` finds the file sound.

        Run by the daemon at start: a damaged page would otherwise surface as a traceback mid-night.
        """
        try:
            found = [row[0] for row in self.conn.execute("PRAGMA quick_check(5)").fetchall()]
            self.conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
        except sqlite3.DatabaseError as exc:
            raise unusable(self.path, exc) from None
        if found != ["ok"]:
            raise unusable(self.path, sqlite3.DatabaseError("; ".join(found)))

    @cached_property
    def db(self) -> sqlite_utils.Database:
        """The same connection through sqlite-utils, for ad-hoc queries and introspection.

        Imported on first use: sqlite-utils pulls in pandas when installed (0.3 s), too slow for ``status``.
        """
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a SELECT as dicts."""
        cursor = self.conn.execute(sql, list(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # -- schema ---------------------------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise _too_new(self.path, current)
        if current == SCHEMA_VERSION:
            return
        if current > 0:
            shutil.copy2(self.path, self.path.with_name(f"{self.path.name}.bak-v{current}"))
        with self.transaction():
            if self.schema_version >= SCHEMA_VERSION:  # another process migrated while we waited
                return
            for version in range(self.schema_version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={version}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken at once (``BEGIN IMMEDIATE``), so read-then-write steps cannot race."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # a COMMIT that failed (disk full, read-only) leaves it open
                with contextlib.suppress(sqlite3.Error):  # the original error says more
                    self.conn.execute("ROLLBACK")
            raise

    def data_version(self) -> int:
        """A number that changes whenever another connection commits: a cheap "anything new?" check."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        self.conn.close()

    # -- jobs -----------------------------------------------------------------------------------------------

    def add_jobs(self, new_jobs: Iterable[NewJob]) -> list[int]:
        """Insert jobs in one transaction; returns their ids in order.

        ``after`` entries name jobs of the same batch first, then the newest job of that name in the store, or
        give an id; an unknown reference (or a cycle) raises :class:`DependencyError` and nothing is inserted.
        """
        batch = list(new_jobs)
        now = _now()
        ids: list[int] = []
        with self.transaction() as conn:
            for new in batch:
                state = self._initial_state(new)
                check_transition(None, state)
                cursor = conn.execute(
                    """INSERT INTO jobs (name, kind, state, priority, source, spec_given, spec, not_before,
                       retries, retry_backoff_s, timeout_s, devices, schedule_id, created_at, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        new.name, new.kind, state, new.priority, new.source,
                        json.dumps(new.spec_given, default=str), json.dumps(new.spec, default=str),
                        new.not_before, new.retries, new.retry_backoff_s, new.timeout_s, new.devices,
                        new.schedule_id, now, now,
                    ),
                )  # fmt: skip
                ids.append(int(cursor.lastrowid))
                conn.execute(
                    "INSERT INTO transitions (job_id, time, from_state, to_state, reason) VALUES (?, ?, NULL, ?, ?)",
                    (ids[-1], now, state, f"submitted from {new.source}" if new.source else "submitted"),
                )
            in_batch = {new.name: job_id for new, job_id in zip(batch, ids, strict=True)}
            for new, job_id in zip(batch, ids, strict=True):
                if new.after:
                    after = [self._resolve_ref(ref, in_batch, new.name) for ref in new.after]
                    conn.execute("UPDATE jobs SET after = ? WHERE id = ?", (json.dumps(after), job_id))
            self._check_acyclic(batch, ids, in_batch)
        return ids

    def _resolve_ref(self, ref: str | int, in_batch: dict[str, int], owner: str) -> int:
        text = str(ref).strip().lstrip("#")
        if text in in_batch:
            return in_batch[text]
        if text.isdigit():
            if self.conn.execute("SELECT 1 FROM jobs WHERE id = ?", (int(text),)).fetchone():
                return int(text)
            raise DependencyError(f"job {owner!r}: after: no job with id {text}")
        row = self.conn.execute("SELECT id FROM jobs WHERE name = ? ORDER BY id DESC LIMIT 1", (text,)).fetchone()
        if row is None:
            raise DependencyError(f"job {owner!r}: after: no job named {text!r} in this file or the store")
        return int(row[0])

    def _check_acyclic(self, batch: list[NewJob], ids: list[int], in_batch: dict[str, int]) -> None:
        edges = {
            job_id: {in_batch[str(r)] for r in new.after if str(r) in in_batch}
            for new, job_id in zip(batch, ids, strict=True)
        }
        names = {job_id: new.name for new, job_id in zip(batch, ids, strict=True)}
        visiting: set[int] = set()
        done: set[int] = set()

        def visit(node: int) -> None:
            if node in done:
                return
            if node in visiting:
                raise DependencyError(f"job {names[node]!r}: after: dependency cycle")
            visiting.add(node)
            for nxt in edges[node]:
                visit(nxt)
            visiting.discard(node)
            done.add(node)

        for node in edges:
            visit(node)

    @staticmethod
    def _initial_state(new: NewJob) -> JobState:
        if new.held:
            return JobState.HELD
        if new.after or (new.not_before and new.not_before > _now()):
            return JobState.WAITING
        return JobState.QUEUED

    def job(self, job_id: int) -> Job | None:
        rows = self.query("SELECT * FROM jobs WHERE id = ?", [job_id])
        return Job.from_row(rows[0]) if rows else None

    def find_job(self, ref: str | int) -> Job | None:
        """A job by id, or by name (the newest job of that name)."""
        text = str(ref).strip().lstrip("#")
        if text.isdigit():
            return self.job(int(text))
        rows = self.query("SELECT * FROM jobs WHERE name = ? ORDER BY id DESC LIMIT 1", [text])
        return Job.from_row(rows[0]) if rows else None

    def jobs(
        self,
        *,
        states: Iterable[str] | None = None,
        ids: Iterable[int] | None = None,
        since: float | None = None,
        order: str = "id",
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs filtered by state, id and update time; ``order`` is ``id`` or ``run`` (priority, then id)."""
        where, params = self._where(states=states, ids=ids, since=since)
        order_sql = "priority DESC, id ASC" if order == "run" else "id ASC"
        sql = f"SELECT * FROM jobs {where} ORDER BY {order_sql}" + (f" LIMIT {int(limit)}" if limit else "")
        return [Job.from_row(row) for row in self.query(sql, params)]

    def job_summaries(self, *, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The light columns of every job (no specs): what ``status`` and the queue table show."""
        where, params = self._where(states=states)
        return self.query(f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM jobs {where} ORDER BY id", params)

    def job_summaries_json(self) -> str:
        """:meth:`job_summaries` of every job as a JSON array, built by SQLite itself (10 000 jobs in ~35 ms)."""
        pairs = ", ".join(f"'{c}', {c}" for c in SUMMARY_COLUMNS)
        columns = ", ".join(SUMMARY_COLUMNS)  # not SELECT *: the specs are most of a row's bytes
        sql = f"SELECT json_group_array(json_object({pairs})) FROM (SELECT {columns} FROM jobs ORDER BY id)"
        return self.conn.execute(sql).fetchone()[0]

    def job_columns(self, columns: Sequence[str], *, since: float | None = None) -> list[tuple[Any, ...]]:
        """The given columns of every job (or of those updated at or after ``since``) as tuples, by id.

        Plain tuples, no :class:`Job`: the dashboard reads the queue table this way every tick.
        """
        unknown = set(columns) - {f.name for f in fields(Job)}
        if unknown:
            raise ValueError(f"jobs has no column {', '.join(sorted(unknown))}")
        where, params = self._where(since=since)
        return self.conn.execute(f"SELECT {', '.join(columns)} FROM jobs {where} ORDER BY id", params).fetchall()

    def job_ids(self, *, states: Iterable[str] | None = None, limit: int | None = None) -> list[int]:
        """Ids of the jobs in ``states`` (all without), lowest first, at most ``limit``."""
        where, params = self._where(states=states)
        sql = f"SELECT id FROM jobs {where} ORDER BY id" + (f" LIMIT {int(limit)}" if limit else "")
        return [row[0] for row in self.conn.execute(sql, params)]

    def job_ids_from(self, sources: Iterable[str]) -> list[int]:
        """Ids of the jobs whose ``source`` is one of ``sources`` (a claimed file, a parent job), lowest first."""
        sources = list(sources)
        if not sources:
            return []
        marks = ",".join("?" * len(sources))
        return [
            row[0] for row in self.conn.execute(f"SELECT id FROM jobs WHERE source IN ({marks}) ORDER BY id", sources)
        ]

    def ended_jobs(self, since: float, *, limit: int = 500) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs that ended at or after ``since``, oldest first: id, name, kind, state,
        started_at, finished_at, reason."""
        rows = self.query(
            "SELECT id, name, kind, state, started_at, finished_at, reason FROM jobs WHERE finished_at >= ? "
            "ORDER BY finished_at DESC LIMIT ?",
            [since, limit],
        )
        return rows[::-1]

    def counts_by_state(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())

    @staticmethod
    def _where(
        *, states: Iterable[str] | None = None, ids: Iterable[int] | None = None, since: float | None = None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if states is not None:
            states = [str(s) for s in states]
            clauses.append(f"state IN ({','.join('?' * len(states))})")
            params += states
        if ids is not None:
            ids = [int(i) for i in ids]
            clauses.append(f"id IN ({','.join('?' * len(ids))})")
            params += ids
        if since is not None:
            clauses.append("updated_at >= ?")
            params.append(since)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

    def transition(
        self,
        job_id: int,
        to_state: JobState | str,
        *,
        expect: Iterable[str] | None = None,
        reason: str | None = None,
        started_at: float | Keep | None = KEEP,
        finished_at: float | Keep | None = KEEP,
        next_try_at: float | Keep | None = KEEP,
        run_dir: str | Keep | None = KEEP,
        slot: str | Keep | None = KEEP,
        executor: str | Keep | None = KEEP,
        pid: int | Keep | None = KEEP,
        exit_code: int | Keep | None = KEEP,
        cancel_requested: bool | Keep = KEEP,
        error_tail: str | Keep | None = KEEP,
        stage: str | Keep | None = KEEP,
        progress: float | Keep | None = KEEP,
        eta_s: float | Keep | None = KEEP,
    ) -> bool:
        """Move a job to ``to_state`` (and set the columns given; ``None`` clears one) if its state is one of
        ``expect``.

        ``reason`` replaces the job's reason (None clears it): it always describes the latest move. A move that
        :data:`TRANSITIONS` does not allow raises :class:`IllegalTransitionError` (nothing is written).

        The check and the write are one transaction, so the daemon and a client cannot both act on a job.
        Returns whether the job moved. Every move is recorded in ``transitions`` with its time and reason.
        """
        now = _now()
        reason = scrub(reason) if reason else reason  # a server's answer may echo a credential
        columns = _given(
            started_at=started_at, finished_at=finished_at, next_try_at=next_try_at, run_dir=run_dir, slot=slot,
            executor=executor, pid=pid, exit_code=exit_code, cancel_requested=cancel_requested,
            error_tail=error_tail, stage=stage, progress=progress, eta_s=eta_s,
        )  # fmt: skip
        with self.transaction() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or (expect is not None and row[0] not in {str(s) for s in expect}):
                return False
            check_transition(row[0], to_state)
            values = {"state": str(to_state), "updated_at": now, "reason": reason, **columns}
            assignments = ", ".join(f"{key} = ?" for key in values)
            conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*values.values(), job_id])
            conn.execute(
                "INSERT INTO transitions (job_id, time, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
                (job_id, now, row[0], str(to_state), reason),
            )
        return True

    def update_job(
        self,
        job_id: int,
        *,
        priority: int | Keep = KEEP,
        cancel_requested: bool | Keep = KEEP,
        pid: int | Keep | None = KEEP,
        external_id: str | Keep | None = KEEP,
        next_try_at: float | Keep | None = KEEP,
    ) -> None:
        """Set columns of a job without a state change (the columns given; ``None`` clears one)."""
        columns = _given(
            priority=priority, cancel_requested=cancel_requested, pid=pid, external_id=external_id,
            next_try_at=next_try_at,
        )  # fmt: skip
        columns["updated_at"] = _now()
        assignments = ", ".join(f"{key} = ?" for key in columns)
        self.conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*columns.values(), job_id])

    def transitions(self, job_id: int) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM transitions WHERE job_id = ? ORDER BY id", [job_id])

    # -- attempts -------------------------------------------------------------------------------------------

    def start_attempt(self, job_id: int, *, pid: int | None, slot: str, executor: str = "local") -> int:
        """Record a new attempt of a running job; returns its number (1, 2, …)."""
        with self.transaction() as conn:
            number = conn.execute("SELECT attempts + 1 FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            conn.execute(
                "INSERT INTO attempts (job_id, number, started_at, pid, slot, executor) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, number, _now(), pid, slot, executor),
            )
            conn.execute("UPDATE jobs SET attempts = ? WHERE id = ?", (number, job_id))
        return number

    def finish_attempt(
        self,
        job_id: int,
        number: int,
        *,
        outcome: AttemptOutcome,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Close an attempt. The worker calls this itself before exiting, the supervisor only if it did not."""
        self.conn.execute(
            """UPDATE attempts SET finished_at = ?, outcome = ?, exit_code = COALESCE(?, exit_code),
               reason = COALESCE(?, reason) WHERE job_id = ? AND number = ?""",
            (_now(), AttemptOutcome(outcome), exit_code, scrub(reason) if reason else reason, job_id, number),
        )

    def discard_attempt(self, job_id: int, number: int) -> None:
        """Forget the latest attempt, which never started (its worker could not be submitted): the next attempt
        takes its number, and a job's retries are not spent on a cluster that was out of reach."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM attempts WHERE job_id = ? AND number = ?", (job_id, number))
            conn.execute("UPDATE jobs SET attempts = ? WHERE id = ? AND attempts = ?", (number - 1, job_id, number))

    def set_attempt_pid(self, job_id: int, number: int, pid: int) -> None:
        self.conn.execute("UPDATE attempts SET pid = ? WHERE job_id = ? AND number = ?", (pid, job_id, number))

    def attempt(self, job_id: int, number: int) -> dict[str, Any] | None:
        """One attempt's row; its ``outcome`` is an :class:`AttemptOutcome`, or None while it runs."""
        rows = self.query("SELECT * FROM attempts WHERE job_id = ? AND number = ?", [job_id, number])
        return _typed_attempt(rows[0]) if rows else None

    def attempts(self, job_id: int) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM attempts WHERE job_id = ? ORDER BY number", [job_id])
        return [_typed_attempt(row) for row in rows]

    def open_attempts(self) -> list[tuple[int, str, int | None, str | None]]:
        """``(job_id, job name, pid, slot)`` of every attempt still open of a running job, by job id."""
        return self.conn.execute(
            "SELECT a.job_id, j.name, a.pid, a.slot FROM attempts a JOIN jobs j ON j.id = a.job_id "
            "WHERE j.state = ? AND a.finished_at IS NULL ORDER BY a.job_id",
            (JobState.RUNNING,),
        ).fetchall()

    def attempt_seconds(self, since: float, until: float) -> float:
        """Seconds of attempts that ran between ``since`` and ``until`` (UNIX s), each cut to that window."""
        return float(
            self.conn.execute(
                "SELECT COALESCE(SUM(MIN(finished_at, ?) - MAX(started_at, ?)), 0) FROM attempts "
                "WHERE finished_at >= ? AND started_at <= ?",
                (until, since, since, until),
            ).fetchone()[0]
        )

    # -- progress, metrics, outputs -------------------------------------------------------------------------

    def add_progress(
        self,
        job_id: int,
        *,
        stage: str | None = None,
        done: float | None = None,
        total: float | None = None,
        unit: str = "",
        epoch: int | None = None,
        step: int | None = None,
        eta_s: float | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """Record a progress event and mirror stage / fraction / ETA onto the job row for the queue table."""
        now = _now()
        stage = scrub(stage) if stage else stage
        fraction = (done / total) if (done is not None and total) else None
        with self.transaction() as conn:
            conn.execute(
                """INSERT INTO progress (job_id, time, stage, done, total, unit, epoch, step, eta_s, fields)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (job_id, now, stage, done, total, unit, epoch, step, eta_s,
                 json.dumps(scrub_value(fields), default=str) if fields else None),
            )  # fmt: skip
            conn.execute(
                """UPDATE jobs SET stage = COALESCE(?, stage), progress = COALESCE(?, progress), eta_s = ?,
                   updated_at = ? WHERE id = ?""",
                (stage, fraction, eta_s, now, job_id),
            )

    def latest_progress(self, job_id: int) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM progress WHERE job_id = ? ORDER BY id DESC LIMIT 1", [job_id])
        if not rows:
            return None
        row = rows[0]
        row["fields"] = json.loads(row["fields"]) if row["fields"] else {}
        return row

    def add_metrics(
        self,
        job_id: int,
        values: dict[str, float],
        *,
        attempt: int | None = None,
        step: int | None = None,
        epoch: int | None = None,
    ) -> None:
        now = _now()
        rows = [(job_id, attempt, now, name, float(value), step, epoch) for name, value in values.items()]
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO metrics (job_id, attempt, time, name, value, step, epoch) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def metrics(self, job_id: int, name: str | None = None) -> list[dict[str, Any]]:
        if name is None:
            return self.query("SELECT * FROM metrics WHERE job_id = ? ORDER BY id", [job_id])
        return list(self.query("SELECT * FROM metrics WHERE job_id = ? AND name = ? ORDER BY id", [job_id, name]))

    def metric_points(
        self, job_id: int, *, after_id: int = 0, curves_only: bool = False, validation_only: bool = False
    ) -> list[tuple[int, str, int | None, int | None, float | None]]:
        """``(row id, name, epoch, step, value)`` of a job's metrics after row ``after_id``, oldest first.

        ``curves_only`` keeps the values a curve draws once an epoch (no NULLs, no per-step series: ``…_step``,
        ``lr``, ``samples_per_s``, ``data_wait_share``); ``validation_only`` keeps ``val/…``, ``test/…`` and
        ``…_epoch`` values.
        """
        sql = "SELECT id, name, epoch, step, value FROM metrics WHERE job_id = ? AND id > ?"
        if curves_only:
            sql += (
                " AND value IS NOT NULL AND name NOT IN ('lr', 'samples_per_s', 'data_wait_share')"
                " AND name NOT LIKE '%!_step' ESCAPE '!'"
            )
        if validation_only:
            sql += " AND value IS NOT NULL AND (name LIKE 'val/%' OR name LIKE 'test/%' OR name LIKE '%_epoch')"
        return self.conn.execute(sql + " ORDER BY id", (job_id, after_id)).fetchall()

    def metric_extremes(self, job_ids: Sequence[int]) -> dict[int, dict[str, tuple[float, float]]]:
        """``{job id: {metric: (highest, lowest)}}`` of the given jobs."""
        extremes: dict[int, dict[str, tuple[float, float]]] = {}
        if not job_ids:
            return extremes
        marks = ",".join("?" * len(job_ids))
        for job_id, name, high, low in self.conn.execute(
            f"SELECT job_id, name, MAX(value), MIN(value) FROM metrics WHERE job_id IN ({marks}) GROUP BY job_id, name",
            list(job_ids),
        ):
            extremes.setdefault(job_id, {})[name] = (high, low)
        return extremes

    def jobs_with_metric(self, prefix: str, *, limit: int = 200) -> list[tuple[int, str, str, str]]:
        """``(id, name, kind, state)`` of the jobs with a metric whose name starts with ``prefix``, newest first."""
        return self.conn.execute(
            "SELECT id, name, kind, state FROM jobs WHERE id IN (SELECT DISTINCT job_id FROM metrics "
            "WHERE substr(name, 1, ?) = ?) ORDER BY id DESC LIMIT ?",
            (len(prefix), prefix, limit),
        ).fetchall()

    def metric_names(self, job_id: int) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT name FROM metrics WHERE job_id = ?", (job_id,))]

    def add_output(self, job_id: int, path: str | Path, kind: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO outputs (job_id, time, kind, path) VALUES (?, ?, ?, ?)",
            (job_id, _now(), kind, str(path)),
        )

    def outputs(self, job_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        if kind is None:
            return self.query("SELECT * FROM outputs WHERE job_id = ? ORDER BY id", [job_id])
        return list(self.query("SELECT * FROM outputs WHERE job_id = ? AND kind = ? ORDER BY id", [job_id, kind]))

    # -- ingesting a worker's events (the daemon only; see runs.py) ---------------------------------------

    def events_offset(self, job_id: int, number: int) -> int:
        """The byte offset of the attempt's events file up to which its events are in the store."""
        row = self.conn.execute(
            "SELECT events_offset FROM attempts WHERE job_id = ? AND number = ?", (job_id, number)
        ).fetchone()
        return int(row[0]) if row else 0

    def ingest_events(self, job_id: int, number: int, events: Sequence[dict[str, Any]], end_offset: int) -> None:
        """Write a batch of a worker's events (``progress``, ``metrics``, ``output``, ``log``, ``resumed``; others
        are the caller's) and the offset they end at, in one transaction: a daemon killed midway re-reads them all,
        none twice.

        Progress events become rows of ``progress`` and the latest is mirrored onto the job's row. A ``resumed``
        event deletes the metrics earlier attempts logged after its global step, the checkpoint's: the resumed
        attempt logs them again. An attempt killed between an epoch's validation and its checkpoint otherwise
        leaves two values of that epoch, and a best that no saved weights hold. By step, not epoch: Lightning
        restores a checkpoint saved at an epoch's end with that epoch as the current one, and that epoch's
        validation, logged at the checkpoint's step, is the checkpoint's.
        """
        metrics: list[tuple] = []
        progress: list[tuple] = []
        outputs: list[tuple] = []
        marks: list[tuple] = []
        resumed: list[tuple] = []
        for event in events:
            kind, when = event.get("type"), float(event.get("t") or _now())
            if kind == "metrics":
                for name, value in (event.get("values") or {}).items():
                    metrics.append((job_id, number, when, str(name), value, event.get("step"), event.get("epoch")))
            elif kind == "progress":
                stage = scrub(event["stage"]) if event.get("stage") else None
                fields = event.get("fields")
                progress.append((job_id, when, stage, event.get("done"), event.get("total"), event.get("unit") or "",
                                 event.get("epoch"), event.get("step"), event.get("eta_s"),
                                 json.dumps(scrub_value(fields), default=str) if fields else None))  # fmt: skip
            elif kind == "output":
                outputs.append((job_id, when, str(event["kind"]), str(event["path"])))
            elif kind == "resumed":
                resumed.append((job_id, number, int(event["step"])))
            elif kind == "log":
                marks.append((job_id, number, when, str(event.get("level") or "warning"), event.get("logger"),
                              scrub(str(event.get("message") or ""))))  # fmt: skip
        with self.transaction() as conn:
            if resumed:  # before this batch's metrics, which may be the resumed attempt's first
                conn.executemany("DELETE FROM metrics WHERE job_id = ? AND attempt < ? AND step > ?", resumed)
            if metrics:
                conn.executemany(
                    "INSERT INTO metrics (job_id, attempt, time, name, value, step, epoch) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    metrics,
                )
            if progress:
                conn.executemany(
                    """INSERT INTO progress (job_id, time, stage, done, total, unit, epoch, step, eta_s, fields)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    progress,
                )
                _, when, stage, done, total, *_, eta_s, _ = progress[-1]
                fraction = (done / total) if (done is not None and total) else None
                conn.execute(
                    """UPDATE jobs SET stage = COALESCE(?, stage), progress = COALESCE(?, progress), eta_s = ?,
                       updated_at = ? WHERE id = ?""",
                    (stage, fraction, eta_s, _now(), job_id),
                )
            if outputs:
                conn.executemany("INSERT OR IGNORE INTO outputs (job_id, time, kind, path) VALUES (?, ?, ?, ?)",
                                 outputs)  # fmt: skip
            if marks:
                conn.executemany("INSERT INTO log_marks (job_id, attempt, time, level, logger, message) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", marks)  # fmt: skip
            conn.execute(
                "UPDATE attempts SET events_offset = ? WHERE job_id = ? AND number = ?", (end_offset, job_id, number)
            )

    def log_marks(self, job_id: int) -> list[dict[str, Any]]:
        """The warnings and errors the job's workers logged, oldest first: ``attempt``, ``time``, ``level``,
        ``logger``, ``message``."""
        return self.query("SELECT attempt, time, level, logger, message FROM log_marks WHERE job_id = ? ORDER BY id",
                          [job_id])  # fmt: skip

    def outputs_of(self, job_ids: Sequence[int]) -> dict[int, list[tuple[str, str]]]:
        """``{job id: [(kind, path), …]}`` of the given jobs, each in the order written."""
        outputs: dict[int, list[tuple[str, str]]] = {}
        if not job_ids:
            return outputs
        marks = ",".join("?" * len(job_ids))
        for job_id, kind, path in self.conn.execute(
            f"SELECT job_id, kind, path FROM outputs WHERE job_id IN ({marks}) ORDER BY id", list(job_ids)
        ):
            outputs.setdefault(job_id, []).append((kind, path))
        return outputs

    # -- schedules ------------------------------------------------------------------------------------------

    def add_schedule(
        self, name: str, cron: str, spec_given: dict[str, Any], spec: dict[str, Any], source: str | None
    ) -> int:
        cursor = self.conn.execute(
            "INSERT INTO schedules (name, cron, spec_given, spec, source, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (name, cron, json.dumps(spec_given, default=str), json.dumps(spec, default=str), source, _now()),
        )
        return int(cursor.lastrowid)

    def schedules(self, *, enabled_only: bool = True) -> list[dict[str, Any]]:
        where = "WHERE enabled = 1" if enabled_only else ""
        rows = self.query(f"SELECT * FROM schedules {where} ORDER BY id")
        for row in rows:
            row["spec_given"] = json.loads(row["spec_given"])
            row["spec"] = json.loads(row["spec"])
        return rows

    def set_schedule_enabled(self, schedule_id: int, enabled: bool) -> bool:
        """Arm or disarm a recurring schedule (the daemon follows within a second); False if there is none."""
        cursor = self.conn.execute("UPDATE schedules SET enabled = ? WHERE id = ?", (int(enabled), schedule_id))
        return cursor.rowcount == 1

    def mark_schedule_fired(self, schedule_id: int) -> None:
        self.conn.execute("UPDATE schedules SET last_fired_at = ? WHERE id = ?", (_now(), schedule_id))

    # -- queue-wide flags -----------------------------------------------------------------------------------

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(scrub_value(value), default=str)),
        )

    def queue_paused(self) -> dict[str, Any] | None:
        """``None`` when the queue runs, else ``{"reason": …, "since": …}``."""
        return self.meta("queue_paused")

    def set_queue_paused(self, reason: str | None) -> None:
        """Pause the queue with a reason (the running job finishes, nothing new starts) or resume (None)."""
        self.set_meta("queue_paused", {"reason": reason, "since": _now()} if reason else None)

    def record_daemon(self, *, started_at: float, executor: str = "local", pid: int | None = None) -> None:
        self.set_meta(
            "daemon",
            {
                "pid": pid or os.getpid(),
                "host": _hostname(),
                "started_at": started_at,
                "heartbeat_at": _now(),
                "executor": executor,
            },
        )

    def daemon_info(self, *, stale_after_s: float = 15.0) -> dict[str, Any]:
        """The daemon's record plus ``alive``: heartbeat fresh and (on this host) its pid exists."""
        info = self.meta("daemon") or {}
        alive = bool(info) and _now() - float(info.get("heartbeat_at", 0)) < stale_after_s
        if alive and info.get("host") == _hostname():
            alive = pid_alive(int(info["pid"]))
        return {**info, "alive": alive}


def _hostname() -> str:
    """This host's name, as ``socket.gethostname()`` gives it on Linux, without importing socket (``status``
    starts in a blink)."""
    return os.uname().nodename


def _typed_attempt(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("outcome") is not None:
        row["outcome"] = AttemptOutcome(row["outcome"])
    return row


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True
