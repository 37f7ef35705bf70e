"""Notifications from a real daemon to real HTTP receivers on 127.0.0.1, through Apprise's ``json://`` and
``ntfy://`` and the shell-command hook; receivers that are down, slow or answer 500 fail no job; the password
in a notifier URL appears nowhere (logs, run folders, the store, ``status/show --json``, the messages)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.cli.conftest import tb
from tests.conftest import DaemonProcess, wait_for, wait_state, write_job
from tests.daemon.conftest import job_named, logged, stop_daemon
from torchbearer.redact import url_secrets
from torchbearer.settings import Settings, split_urls
from torchbearer.store import Store

PASSWORD = "n0tify-Pa55word"


class Receiver(ThreadingHTTPServer):
    """An HTTP server that records every request; ``status`` and ``delay_s`` make it a bad receiver."""

    daemon_threads = True

    def __init__(self, status: int = 200, delay_s: float = 0.0) -> None:
        self.requests: list[dict] = []
        self.status = status
        self.delay_s = delay_s
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the slow receiver's client gave up: a broken pipe is expected

    def bodies(self, path: str | None = None) -> list[dict]:
        return [json.loads(r["body"]) for r in list(self.requests) if path is None or r["path"] == path]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        time.sleep(self.server.delay_s)  # a slow receiver: Apprise's read timeout ends the wait, not the daemon
        self.send_response(self.server.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve(Receiver())


def _serve(server: Receiver) -> Iterator[Receiver]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    server = Receiver()
    port = server.port
    server.server_close()
    return port


def test_url_list_and_secrets() -> None:
    """URLs split on whitespace and on commas before ``scheme://``; each one's credentials are found."""
    urls = split_urls("json://h:1/a, ntfy://u:p%40ss@h/t  mailto://u:pw@x.org?to=a@x.org,b@x.org")
    assert urls == ("json://h:1/a", "ntfy://u:p%40ss@h/t", "mailto://u:pw@x.org?to=a@x.org,b@x.org")
    assert "p@ss" in url_secrets(urls[1])
    assert "0123456789abcdefXYZ" in url_secrets("tgram://0123456789abcdefXYZ/12345")
    assert "tk_abcdefghijklmnop1" in url_secrets("ntfys://tk_abcdefghijklmnop1@ntfy.sh/topic")


def test_events_reach_json_ntfy_and_the_command(project: Settings, store: Store, receiver: Receiver) -> None:
    urls = f"json://127.0.0.1:{receiver.port}/hook, ntfy://bob:{PASSWORD}@127.0.0.1:{receiver.port}/nightly"
    env = {
        "TORCHBEARER_NOTIFY_URLS": urls,
        "TORCHBEARER_NOTIFY_EVENTS": "failed,succeeded,queue-empty",
        "TORCHBEARER_NOTIFY_COMMAND": "cat >> events.jsonl && echo >> events.jsonl",
        "TORCHBEARER_CRASH_LOOP_COUNT": "1000",
    }
    daemon = DaemonProcess(project, extra_env=env).start()
    try:
        write_job(project.queue_dir, "night.yaml", (
            "defaults: {kind: probe, steps: 3}\njobs:\n  - {name: good}\n"
            "  - {name: bad, after: [good], action: raise, at_step: 2, echo_env: TORCHBEARER_NOTIFY_URLS}\n"
        ))  # fmt: skip
        bad = wait_state(store, job_named(store, "bad").id, "failed")
        good = store.find_job("good")
        hook = wait_for(lambda: len(receiver.bodies("/hook")) >= 3 and receiver.bodies("/hook"), 30, what="3 json")
        ntfy = wait_for(lambda: len(receiver.bodies("/")) >= 3 and receiver.bodies("/"), 30, what="3 ntfy posts")
        events_file = project.project_dir / "events.jsonl"
        events = wait_for(lambda: events_file.exists() and len(_lines(events_file)) >= 3 and _lines(events_file))
    finally:
        stop_daemon(daemon)

    # json:// — Apprise's generic webhook: type, title and the message with every field
    assert [b["type"] for b in hook] == ["success", "failure", "info"]
    failed = hook[1]
    assert f"bad (#{bad.id}) failed" in failed["title"]
    for text in (f"#{bad.id}", "kind probe", "failed", "failed on purpose", "duration", "best probe/value 0.5",
                 "jobs left 0", "RuntimeError"):  # fmt: skip
        assert text in failed["message"], (text, failed["message"])
    assert f"good (#{good.id}, kind probe) succeeded" in hook[0]["message"]
    assert "best probe/value 1" in hook[0]["message"]
    assert "queue is empty" in hook[2]["message"] and "1 failed, 1 succeeded" in hook[2]["message"]
    # ntfy:// — JSON to the server's root with the topic, the user's credentials as HTTP basic auth
    assert {b["topic"] for b in ntfy} == {"nightly"}
    assert "failed on purpose" in ntfy[1]["message"]
    auth = next(r["headers"]["Authorization"] for r in receiver.requests if r["path"] == "/")
    assert base64.b64decode(auth.split()[1]).decode() == f"bob:{PASSWORD}"
    # the command hook: the event as JSON on stdin
    first, second = (json.loads(line) for line in events[:2])
    assert (first["event"], first["job_id"], first["state"]) == ("succeeded", good.id, "succeeded")
    assert (second["event"], second["name"], second["kind"], second["state"]) == ("failed", "bad", "probe", "failed")
    assert "failed on purpose" in second["reason"] and second["duration_s"] > 0
    assert second["best_metric"] == {"name": "probe/value", "value": 0.5}
    assert "RuntimeError" in second["log_tail"] and second["jobs_left"] == 0

    # the password is nowhere: not in what was sent, logged, stored or shown (the job printed it and failed on it)
    assert "***" in failed["message"] and "***" in bad.reason
    shown = [tb("status", "--json").stdout, tb("show", "bad", "--json").stdout, tb("show", "bad").stdout]
    texts = [daemon.log(), *shown, *(r["body"] for r in receiver.requests), *events]
    texts += [p.read_text(errors="replace") for p in project.runs_dir.rglob("*") if p.is_file()]
    stored = b"".join(p.read_bytes() for p in project.state_path.parent.iterdir() if p.is_file())
    assert PASSWORD.encode() not in stored
    for text in texts:
        assert PASSWORD not in text


def _lines(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow  # ~20 s: Apprise waits out the slow receiver's read timeout, the daemon its last sends
def test_bad_receivers_fail_no_job(project: Settings, store: Store) -> None:
    """A receiver that is down, one that answers 500 and one that hangs: every job still succeeds."""
    servers = [Receiver(status=500), Receiver(delay_s=10)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    error, slow = servers
    urls = (f"json://127.0.0.1:{_free_port()}/down json://127.0.0.1:{error.port}/error "
            f"json://127.0.0.1:{slow.port}/slow")  # fmt: skip
    env = {"TORCHBEARER_NOTIFY_URLS": urls, "TORCHBEARER_NOTIFY_EVENTS": "succeeded,failed"}
    daemon = DaemonProcess(project, extra_env=env).start()
    try:
        write_job(project.queue_dir, "night.yaml", "defaults: {kind: probe, steps: 1}\njobs:\n"
                  + "".join(f"  - {{name: n{i}}}\n" for i in range(3)))  # fmt: skip
        for i in range(2):  # each ends while the slow receiver still holds the first message
            wait_state(store, job_named(store, f"n{i}").id, "succeeded")
        wait_for(lambda: error.requests and slow.requests, 30, what="both receivers asked")
        wait_for(lambda: "did not take" in logged(daemon), 30, what="the failed notification logged")
        assert store.daemon_info()["alive"]
    finally:
        stop_daemon(daemon)
        for server in servers:
            server.shutdown()
            server.server_close()
    assert daemon.process.returncode == 0


def test_crash_loop_pause_is_notified_and_success_is_opt_in(project: Settings, store: Store) -> None:
    """Default events: a success (not asked for) → nothing, but the queue then empty → ``queue-empty``; two jobs
    dying at once → ``failed`` twice and the crash-loop pause → ``paused``. Through the command hook."""
    env = {"TORCHBEARER_NOTIFY_COMMAND": "cat >> events.jsonl && echo >> events.jsonl",
           "TORCHBEARER_CRASH_LOOP_COUNT": "2"}  # fmt: skip
    daemon = DaemonProcess(project, extra_env=env).start()
    events_file = project.project_dir / "events.jsonl"
    try:
        write_job(project.queue_dir, "ok.yaml", "name: ok\nkind: probe\nsteps: 1\n")
        wait_state(store, job_named(store, "ok").id, "succeeded")
        write_job(project.queue_dir, "crash.yaml", "defaults: {kind: probe, action: exit3}\n"
                  "jobs:\n  - {name: c1}\n  - {name: c2}\n")  # fmt: skip
        wait_for(store.queue_paused, 30, what="the queue paused")
        events = wait_for(lambda: events_file.exists() and len(_lines(events_file)) >= 4 and _lines(events_file))
    finally:
        stop_daemon(daemon)
    names = [json.loads(line)["event"] for line in events]
    assert names[:4] == ["queue-empty", "failed", "failed", "paused"]  # no "succeeded" for ok: opt-in
    paused = json.loads(events[3])
    assert "crash loop" in paused["message"] and paused["job_id"] is None
