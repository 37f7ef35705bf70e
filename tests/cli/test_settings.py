"""Settings from flags, the environment and an env file, in that order, with defaults under the project."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import flat, tb
from torchbearer import redact
from torchbearer.settings import Settings, SettingsError
from torchbearer.store import Store

REPO = Path(__file__).resolve().parent.parent.parent


def test_defaults_are_under_the_project(tmp_path):
    settings = Settings.load(tmp_path, environ={"TORCHBEARER_ENV_FILE": str(tmp_path / "none")})
    assert settings.queue_dir == tmp_path / "queue" and settings.runs_dir == tmp_path / "runs"
    assert settings.data_dir == tmp_path / "data" and settings.state_path == tmp_path / "state" / "torchbearer.db"
    assert settings.slots == ("",) and settings.kill_grace_s == 30


def test_flag_beats_environment_beats_env_file(tmp_path):
    env_file = tmp_path / "site.env"
    env_file.write_text(
        "# comment\nexport TORCHBEARER_QUEUE=from-file/queue\nTORCHBEARER_RUNS='from-file/runs'\n"
        'TORCHBEARER_STATE="from-file/state.db"\nTORCHBEARER_KILL_GRACE_S=7\n'
    )
    environ = {"TORCHBEARER_ENV_FILE": str(env_file), "TORCHBEARER_RUNS": "/abs/runs", "TORCHBEARER_STATE": "env.db"}
    settings = Settings.load(tmp_path, state_path="flag.db", environ=environ)
    assert settings.queue_dir == tmp_path / "from-file" / "queue"  # env file only
    assert settings.runs_dir == Path("/abs/runs")  # environment beats env file
    assert settings.state_path == tmp_path / "flag.db"  # flag beats both; relative to the project
    assert settings.kill_grace_s == 7


def test_project_from_environment(tmp_path):
    settings = Settings.load(environ={"TORCHBEARER_PROJECT": str(tmp_path), "TORCHBEARER_ENV_FILE": "/nonexistent"})
    assert settings.project_dir == tmp_path and settings.queue_dir == tmp_path / "queue"


def test_bad_values_say_which_variable(tmp_path):
    with pytest.raises(SettingsError, match=r"TORCHBEARER_KILL_GRACE_S='soon' is not a number"):
        Settings.load(tmp_path, environ={"TORCHBEARER_KILL_GRACE_S": "soon", "TORCHBEARER_ENV_FILE": "/none"})
    env_file = tmp_path / ".env"
    env_file.write_text("TORCHBEARER_QUEUE=q\nthis line is wrong\n")
    with pytest.raises(SettingsError, match=rf"{env_file}:2: expected KEY=VALUE"):
        Settings.load(tmp_path, environ={})


def test_secrets_are_not_passed_on_as_settings(tmp_path):
    (tmp_path / ".env").write_text("COPERNICUS_PASSWORD=hunter2\n")
    settings = Settings.load(tmp_path, environ={})
    assert settings.secret("COPERNICUS_PASSWORD") == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.as_environ())


def test_cli_flags(project, tmp_path, night):
    state, queue = tmp_path / "elsewhere" / "s.db", tmp_path / "elsewhere" / "q"
    assert tb("--state", state, "--queue", queue, "submit", night).returncode == 0
    assert [j.name for j in Store(state).jobs()] == ["a", "b"]
    assert (queue / "accepted" / "1-night.yaml").exists()
    assert not project.state_path.exists() or Store(project.state_path).jobs() == []


def test_cli_environment_and_env_file(project, tmp_path, night):
    env_file = tmp_path / "custom.env"
    env_file.write_text(f"TORCHBEARER_STATE={tmp_path / 'from-file.db'}\n")
    assert tb("submit", night, env={"TORCHBEARER_ENV_FILE": str(env_file)}).returncode == 0
    assert len(Store(tmp_path / "from-file.db").jobs()) == 2
    assert tb("submit", night, env={"TORCHBEARER_STATE": str(tmp_path / "from-env.db")}).returncode == 0
    assert len(Store(tmp_path / "from-env.db").jobs()) == 2


def test_cli_reports_bad_settings(project):
    result = tb("pause", env={"TORCHBEARER_CRASH_WINDOW_S": "-3"})
    assert result.returncode == 2 and "TORCHBEARER_CRASH_WINDOW_S='-3' must not be negative" in flat(result.stderr)


_STATUS_IN_PROCESS = """
import sys
from torchbearer.cli import app
try:
    app(["status", "--json"])
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = {"pydantic", "pydantic_settings", "torch", "socket"}  # and rich's console: --json prints without one
loaded = sorted(name for name in sys.modules if name.split(".")[0] in heavy or name == "rich.console")
assert not loaded, loaded
"""


def test_status_reads_only_the_locations(project, tmp_path, night):
    """``status`` finds the state database the way every command does (here from the env file) but loads no
    other setting: it answers with a setting the daemon would refuse, and never imports pydantic (a quarter of a
    second, most of what ``status`` over 10 000 jobs may take)."""
    (project.project_dir / ".env").write_text(f"TORCHBEARER_STATE={tmp_path / 'from-file.db'}\n")
    assert tb("submit", night).returncode == 0
    result = tb("status", "--json", env={"TORCHBEARER_CRASH_WINDOW_S": "-3"})
    assert result.returncode == 0, result.stderr
    assert [job["name"] for job in json.loads(result.stdout)["jobs"]] == ["a", "b"]
    done = subprocess.run([sys.executable, "-c", _STATUS_IN_PROCESS], cwd=project.project_dir, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_env_example_documents_every_variable_and_nothing_else():
    fields = {str(field.validation_alias) for field in Settings.model_fields.values()}
    documented = set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", (REPO / "env.example").read_text(), flags=re.MULTILINE))
    assert fields - documented == set(), "settings missing from env.example"
    # TORCHBEARER_ENV_FILE names the env file, so it can only come from the environment
    assert documented - fields - {"TORCHBEARER_ENV_FILE"} == set(), "env.example names variables no setting reads"


def test_secrets_cannot_be_printed_by_accident(tmp_path):
    (tmp_path / ".env").write_text(
        "COPERNICUS_USER=ada@example.org\nCOPERNICUS_PASSWORD='s3cret-pass'\n"
        "TORCHBEARER_NOTIFY_URLS=ntfys://bob:hook-pass-77@ntfy.sh/night json://127.0.0.1:9/h\n"
    )
    settings = Settings.load(tmp_path, environ={})
    shown = "\n".join([repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())])
    for secret in ("ada@example.org", "s3cret-pass", "hook-pass-77"):
        assert secret not in shown
    assert settings.secret("COPERNICUS_PASSWORD") == "s3cret-pass"  # revealed only when asked by name
    assert settings.copernicus_password.get_secret_value() == "s3cret-pass"
    assert settings.notify_urls[0].get_secret_value() == "ntfys://bob:hook-pass-77@ntfy.sh/night"
    redact.register_settings(settings)
    assert redact.scrub("login s3cret-pass, hook hook-pass-77") == f"login {redact.MASK}, hook {redact.MASK}"
