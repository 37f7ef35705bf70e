"""No secret in any message: an identity server that echoes the login request back in its error (password,
user name, as sent and URL-encoded) leaves no trace of them in the store, the logs, the run folder or the output
of ``status --json``, ``show --json`` and ``logs``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, quote_plus

import pytest

from tests.cli.conftest import tb
from tests.conftest import wait_state, write_job
from tests.imagery.conftest import SAMPLE_AOI
from tests.imagery.fake_services import PASSWORD, USER
from torchbearer import redact

JOB = f"""\
name: scenes
kind: download
imagery: {{aoi: {SAMPLE_AOI}, dates: 2022-10-01/2022-10-10, max_cloud: 80, resolution: 60}}
"""


class _EchoingIdentity(BaseHTTPRequestHandler):
    """Refuses every login, quoting the credentials and the whole request body back (as some servers do)."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        answer = json.dumps(
            {"error": "invalid_grant", "error_description": f"login of {USER} with {PASSWORD} refused; request: {body}"}
        )
        data = answer.encode()  # fmt: skip
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def echoing_identity() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingIdentity)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


def _forms(*secrets: str) -> list[str]:
    return sorted({form for s in secrets for form in (s, quote(s, safe=""), quote_plus(s))})


def test_an_echoed_password_leaves_no_trace(project, store, daemon, services, echoing_identity, capfd):
    env = {**services.env, "COPERNICUS_TOKEN_URL": echoing_identity}
    (project.project_dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    write_job(project.queue_dir, "scenes.yaml", JOB)
    job = wait_state(store, 1, "failed", timeout=60)
    assert "Copernicus refused the login (HTTP 401" in job.reason and redact.MASK in job.reason, job.reason

    redact.register_settings(project)  # this process prints through the same scrubbing as the CLI
    printed = [tb(*args).stdout for args in (["status", "--json"], ["show", "--json", "1"], ["logs", "1"])]
    assert "Copernicus refused the login" in printed[1] and "Copernicus refused the login" in printed[2]
    written = [p for p in project.project_dir.rglob("*") if p.is_file() and p.name != ".env"]
    assert {"log.txt", "daemon.log", "torchbearer.db"} <= {p.name for p in written}
    captured = capfd.readouterr()
    for secret in _forms(PASSWORD, USER):
        for path in written:
            assert secret.encode() not in path.read_bytes(), f"{secret!r} is in {path}"
        for text in [*printed, captured.out, captured.err]:
            assert secret not in text, f"{secret!r} is in the output"


def test_scrub_masks_known_values_in_every_encoding_and_secret_looking_pairs():
    redact.register("hunter2-Pass!", "ab")  # "ab" is too short to mask
    text = 'x hunter2-Pass! hunter2-Pass%21 {"pwd": "hunter2-Pass\\u0021"} ab token=eyJabc.def&access_token=zz'
    assert redact.scrub(text) == 'x *** *** {"pwd": "***"} ab token=***&access_token=***'
    assert redact.scrub("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload") == "Authorization: Bearer ***"
