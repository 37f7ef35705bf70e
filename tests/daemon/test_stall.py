"""The stall watchdog: a job that stops reporting progress has its stacks written into its log, is stopped,
recorded as stalled (reason, notification) and retried, the retry resuming where it was."""

from __future__ import annotations

import json
import re

from tests.conftest import DaemonProcess, wait_state, write_job
from tests.daemon.conftest import completions, job_named, stop_daemon
from tests.daemon.test_notify import Receiver, _serve
from torchbearer.settings import Settings
from torchbearer.store import Store


def test_silent_job_is_stalled_dumped_and_retried(project: Settings, store: Store) -> None:
    receiver = _serve(Receiver())
    server = next(receiver)
    env = {
        "TORCHBEARER_KILL_GRACE_S": "1",
        "TORCHBEARER_NOTIFY_URLS": f"json://127.0.0.1:{server.port}/hook",
        "TORCHBEARER_NOTIFY_EVENTS": "stalled",
    }
    daemon = DaemonProcess(project, extra_env=env).start()
    try:
        # step 2 of attempt 1 sleeps forever without a word; the retry goes on from its state file
        write_job(project.queue_dir, "hang.yaml", "name: sleeper\nkind: probe\nsteps: 4\naction: hang\nat_step: 2\n"
                  "action_attempts: 1\nstall_after: 3\nretries: 1\nretry_backoff: 0\n")  # fmt: skip
        job = wait_state(store, job_named(store, "sleeper").id, "succeeded", timeout=60)
    finally:
        stop_daemon(daemon)
        next(receiver, None)
    first, second = store.attempts(job.id)
    assert first["outcome"] == "failed"
    assert re.match(r"stalled: no progress for \d+ s \(stall_after 3 s\)", first["reason"])
    assert second["outcome"] == "succeeded"
    log = (project.runs_dir / f"{job.id}-sleeper" / "log.txt").read_text()
    # faulthandler's dump: the worker's main thread was in the probe's sleep loop
    assert "most recent call first" in log and re.search(r'File ".*kinds\.py", line \d+ in _act', log)
    # the retry resumed after the 2 steps done: each step's metric was logged once
    assert [row["step"] for row in store.metrics(job.id, "probe/value")] == [1, 2, 3, 4]
    state = json.loads((project.runs_dir / f"{job.id}-sleeper" / "probe-state.json").read_text())
    assert state == {"done": 4} and [line.split()[1] for line in completions(project)] == ["sleeper"]
    assert [json.loads(r["body"])["type"] for r in server.requests] == ["warning"]
    assert "stalled: no progress" in json.loads(server.requests[0]["body"])["message"]


def test_stall_after_field(project: Settings) -> None:
    from torchbearer.spec import JobSpec

    assert JobSpec(name="a", kind="probe", stall_after="2m").stall_after == 120.0
    assert JobSpec(name="a", kind="probe", stall_after=0).stall_after == 0.0
