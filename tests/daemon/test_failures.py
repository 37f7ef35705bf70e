"""A worker that raises, segfaults, is OOM-killed, exits badly or hangs costs its job, never the daemon."""

from __future__ import annotations

from tests.conftest import wait_for, wait_state, write_job
from tests.daemon.conftest import job_named, logged, probe

FAILURES = {
    "raise": ("RuntimeError: probe raise failed on purpose", "Traceback"),
    "segfault": ("segmentation fault (SIGSEGV)", "Fatal Python error: Segmentation fault"),
    "sigkill": ("killed by SIGKILL, not by torchbearer", "attempt 1: kind probe"),  # no OOM killer: not claimed
    "exit3": ("the worker exited with code 3", "attempt 1: kind probe"),
}


def test_failed_workers_are_recorded_and_the_daemon_goes_on(project, store, tolerant_daemon):
    lines = [f"  - {{name: {action}, action: {action}, at_step: 1}}" for action in FAILURES]
    write_job(
        project.queue_dir, "bad.yaml", "defaults: {kind: probe, steps: 3, priority: 1}\njobs:\n" + "\n".join(lines)
    )
    # The good file goes in once the bad jobs are queued, so it surely waits behind them (priority 1 > 0).
    wait_for(lambda: len(store.jobs()) == len(FAILURES), what="the failing jobs queued")
    write_job(project.queue_dir, "good.yaml", probe("good"))
    for action, (reason, tail) in FAILURES.items():
        bad = wait_state(store, job_named(store, action).id, "failed")
        assert reason in bad.reason, (action, bad.reason)
        assert tail in bad.error_tail, (action, bad.error_tail)
        assert bad.attempts == 1 and bad.finished_at is not None
        (attempt,) = store.attempts(bad.id)
        assert attempt["outcome"] == "failed" and reason in attempt["reason"]
    good = wait_state(store, job_named(store, "good").id, "succeeded")
    assert good.started_at >= max(j.finished_at for j in store.jobs() if j.name != "good")
    assert tolerant_daemon.process.poll() is None


def test_hung_job_hits_its_timeout(project, store, tolerant_daemon):
    write_job(project.queue_dir, "hang.yaml", probe("hang", action="hang", at_step=1, steps=3, timeout=1))
    job = wait_state(store, job_named(store, "hang").id, "failed")
    assert job.reason.startswith("timed out after 1 s")
    assert store.attempts(job.id)[0]["outcome"] == "failed"


def test_timeout_of_a_job_ignoring_sigterm_ends_with_sigkill(project, store, tolerant_daemon):
    # 3 s: the worker must have started (imports, settings) and ignored SIGTERM before the timeout hits
    text = probe("stubborn", action="hang", at_step=1, steps=3, timeout=3, ignore_sigterm="true")
    write_job(project.queue_dir, "stubborn.yaml", text)
    job = wait_state(store, job_named(store, "stubborn").id, "failed")
    assert job.reason.startswith("timed out after 3 s") and job.exit_code == -9
    assert "ignored SIGTERM" in logged(tolerant_daemon)


def test_retries_with_backoff(project, store, tolerant_daemon):
    text = probe("flaky", action="raise", at_step=0, steps=1, retries=2, retry_backoff=0.2)
    write_job(project.queue_dir, "flaky.yaml", text)
    job = wait_state(store, job_named(store, "flaky").id, "failed")
    assert job.attempts == 3 and job.reason == "RuntimeError: probe flaky failed on purpose"
    attempts = store.attempts(job.id)
    assert [a["outcome"] for a in attempts] == ["failed"] * 3
    # the backoff doubles: 0.2 s before the second attempt, 0.4 s before the third
    assert attempts[1]["started_at"] - attempts[0]["finished_at"] >= 0.2
    assert attempts[2]["started_at"] - attempts[1]["finished_at"] >= 0.4
    states = [t["to_state"] for t in store.transitions(job.id)]
    assert states == ["queued", "running", "waiting", "queued", "running", "waiting", "queued", "running", "failed"]
    waits = [t["reason"] for t in store.transitions(job.id) if t["to_state"] == "waiting"]
    assert "retry 1/2" in waits[0] and "retry 2/2" in waits[1]
