"""The state store's schema versions: an old file is migrated (a copy kept), a newer one refused untouched."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from torchbearer import store as store_module
from torchbearer.store import SCHEMA_VERSION, NewJob, Store, StoreError


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _job(name: str) -> NewJob:
    return NewJob(name, "probe", {"name": name, "kind": "probe"}, {"name": name, "kind": "probe"})


def test_v0_file_is_migrated(tmp_path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:  # what an empty file, or a pre-versioning one, looks like: user_version 0
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.execute("INSERT INTO notes VALUES ('kept')")
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    assert store.add_jobs([_job("a")]) == [1]
    assert store.query("SELECT text FROM notes") == [{"text": "kept"}]
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_version_is_refused_untouched(tmp_path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, future TEXT)")
        conn.execute("INSERT INTO jobs VALUES (1, 'from the future')")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    before = _digest(path)
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than .*left untouched"):
        Store(path)
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]


def test_upgrade_keeps_a_copy_and_the_data(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    old = Store(path)
    old.add_jobs([_job("kept")])
    old.close()
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_module.MIGRATIONS, SCHEMA_VERSION + 1, ["ALTER TABLE jobs ADD COLUMN note TEXT"])
    new = Store(path)
    assert new.schema_version == SCHEMA_VERSION + 1
    assert new.query("SELECT name, note FROM jobs") == [{"name": "kept", "note": None}]
    backup = tmp_path / f"state.db.bak-v{SCHEMA_VERSION}"
    assert sqlite3.connect(backup).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_failed_migration_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    Store(path).add_jobs([_job("kept")])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_module.MIGRATIONS, SCHEMA_VERSION + 1,
                        ["ALTER TABLE jobs ADD COLUMN note TEXT", "THIS IS NOT SQL"])  # fmt: skip
    with pytest.raises(sqlite3.OperationalError):
        Store(path)
    monkeypatch.undo()
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    assert [r["name"] for r in store.query("SELECT * FROM jobs")] == ["kept"]
    assert "note" not in store.query("SELECT * FROM jobs")[0]


def test_not_a_database_is_refused(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store(path)


def test_transitions_are_recorded_and_compare_and_set(tmp_path):
    store = Store(tmp_path / "state.db")
    (job_id,) = store.add_jobs([_job("a")])
    assert store.transition(job_id, "running", expect=["queued"], reason="go")
    assert not store.transition(job_id, "running", expect=["queued"])  # a second claim loses
    assert [(t["from_state"], t["to_state"]) for t in store.transitions(job_id)] == [
        (None, "queued"),
        ("queued", "running"),
    ]
