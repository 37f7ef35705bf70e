"""`status`, `show` and `logs`: what they print, the versioned JSON shapes, and that they never load torch."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.cli.conftest import flat, tb, tb_process
from torchbearer.store import SUMMARY_COLUMNS

HEAVY = ("torch", "lightning", "torchgeo", "rasterio", "pandas")


def test_status_json_shape(project, store, night, tmp_path):
    assert tb_process("run", night).returncode == 0
    (tmp_path / "held.yaml").write_text("name: later\nkind: probe\n")
    assert tb("submit", "--held", tmp_path / "held.yaml").returncode == 0
    result = tb("status", "--json")
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert set(document) == {"format", "version", "generated_at", "daemon", "queue", "jobs"}
    assert (document["format"], document["version"]) == ("torchbearer.status", 1)
    assert set(document["daemon"]) == {"alive", "pid", "host", "started_at", "heartbeat_at"}
    assert document["daemon"]["alive"] is False
    assert document["queue"] == {"paused": False, "pause_reason": None, "counts": {"succeeded": 2, "held": 1}}
    assert [tuple(job) for job in document["jobs"]] == [SUMMARY_COLUMNS] * 3
    a, b, later = document["jobs"]
    assert (a["id"], a["name"], a["kind"], a["state"], a["attempts"]) == (1, "a", "probe", "succeeded", 1)
    assert a["progress"] == 1.0 and a["finished_at"] >= a["started_at"] >= a["created_at"]
    assert b["state"] == "succeeded" and later["state"] == "held" and later["started_at"] is None


def test_status_json_of_an_empty_store(project):
    document = json.loads(tb("status", "--json").stdout)
    assert document["jobs"] == [] and document["queue"]["counts"] == {}


def test_status_table(project, store, night):
    assert tb("submit", night).returncode == 0
    tb("pause")
    result = tb("status")
    assert result.returncode == 0
    text = flat(result.stdout)
    assert "daemon down" in text and "paused on request" in text
    assert "1 a probe queued" in text and "2 b probe waiting" in text


def test_show_text_and_json(project, store, night):
    assert tb_process("run", night).returncode == 0
    text = flat(tb("show", "a").stdout)
    assert "a #1 probe succeeded" in text and "queued → running" in text and "running → succeeded" in text
    assert "probe/value=0.5" in text and "result:" in text and "name: a" in text
    document = json.loads(tb("show", "--json", "2").stdout)
    assert (document["format"], document["version"]) == ("torchbearer.job", 1)
    assert set(document) == {"format", "version", "job", "transitions", "attempts", "progress", "outputs", "metrics",
                             "warnings"}  # fmt: skip
    job = document["job"]
    assert (job["id"], job["name"], job["state"], job["after"]) == (2, "b", "succeeded", [1])
    assert job["spec"]["steps"] == 2 and job["spec_given"] == {"kind": "probe", "steps": 2, "name": "b", "after": ["a"]}
    assert [t["to_state"] for t in document["transitions"]] == ["waiting", "queued", "running", "succeeded"]
    assert [(a["number"], a["outcome"], a["exit_code"]) for a in document["attempts"]] == [(1, "succeeded", 0)]
    assert document["metrics"] == {"probe/value": 0.5}
    assert document["progress"]["step"] == 2 and document["progress"]["stage"] == "probing"
    assert [o["kind"] for o in document["outputs"]] == ["result"]
    missing = tb("show", "nope")
    assert missing.returncode == 1 and "no job 'nope'" in flat(missing.stderr)


def test_show_failed_job_has_the_end_of_its_log(project, store, tmp_path):
    path = tmp_path / "boom.yaml"
    path.write_text("name: boom\nkind: probe\naction: raise\nsteps: 1\n")
    tb_process("run", path)
    text = tb("show", "boom").stdout
    assert "reason: RuntimeError: probe boom failed on purpose" in text
    assert "end of the log" in text and "Traceback (most recent call last)" in text


def test_logs(project, store, night, tmp_path):
    assert tb_process("run", night).returncode == 0
    result = tb("logs", "a")
    assert result.returncode == 0 and "job a (#1) attempt 1: kind probe" in result.stdout
    assert "job a (#1) succeeded" in result.stdout
    assert tb("logs", "-n", "1", "a").stdout.strip().endswith("job a (#1) succeeded")
    follow = tb("logs", "-f", "a")  # a finished job: prints and returns
    assert follow.returncode == 0 and "succeeded" in follow.stdout
    (tmp_path / "later.yaml").write_text("name: later\nkind: probe\n")
    tb("submit", tmp_path / "later.yaml")
    missing = tb("logs", "later")
    assert missing.returncode == 1 and "later (#3) has no log yet" in flat(missing.stderr)


def test_status_show_and_commands_never_import_heavy_libraries(project, night):
    assert tb("submit", night).returncode == 0
    script = (
        "import sys\nfrom torchbearer.cli import app\n"
        "for args in (['status', '--json'], ['status'], ['show', 'a'], ['hold', 'a'], ['validate', sys.argv[1]]):\n"
        "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(night)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_status_at_80_columns_keeps_id_state_and_name_whole(project, store, monkeypatch):
    """In an 80-column terminal the less important columns give way; every state is printed in full."""
    from tests.tui.conftest import seed_store
    from torchbearer.store import JobState

    with monkeypatch.context() as patch:
        ids = seed_store(store, project, patch)
    result = tb("status", "--all", env={"COLUMNS": "80"})
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if line.split()[:2] == ["id", "name"])
    assert "state" in header.split() and "started" not in header.split()  # started gave way first
    for name, job_id in ids.items():
        job = store.job(job_id)
        row = next(line for line in lines if line.split()[:1] == [str(job_id)])
        assert row.split()[1] == name and job.state in row.split(), row
    assert {str(s) for s in JobState} <= set(result.stdout.split())


def test_status_drops_columns_without_values(project, store, night):
    assert tb("submit", night).returncode == 0
    header = next(line for line in tb("status").stdout.splitlines() if line.split()[:2] == ["id", "name"])
    assert header.split() == ["id", "name", "kind", "state", "prio"]  # nothing ran: no stage, eta, started …


def test_the_command_line_builds_only_the_command_it_invokes():
    """``torchbearer status`` builds one click command, not the ~35 of the app (0.04 s of its start-up)."""
    import inspect

    from torchbearer.cli import _GLOBAL_OPTIONS, app, app_for, invoked_name, main

    # the global options it skips are main()'s, each taking a value
    assert {f"--{name}" for name in inspect.signature(main).parameters if name != "ctx"} == _GLOBAL_OPTIONS

    assert invoked_name(["--project", "p", "--state=s.db", "status", "--json"]) == "status"
    assert invoked_name(["--help"]) is None and invoked_name([]) is None and invoked_name(["--state"]) is None
    only = app_for(["--project", "p", "status", "--json"])
    assert [c.callback.__name__ for c in only.registered_commands] == ["status"] and only.registered_groups == []
    assert [g.name for g in app_for(["prepare", "chip"]).registered_groups] == ["prepare"]
    assert app_for(["nosuch"]) is app and app_for(["--help"]) is app
    assert len(app.registered_commands) > 20  # the app itself keeps every command
    shown = subprocess.run([sys.executable, "-m", "torchbearer", "status", "--no-such-flag"], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 2 and "No such option: --no-such-flag" in " ".join(shown.stderr.split())
