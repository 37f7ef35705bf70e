"""Drop a file → the job runs in a worker → succeeded, with its outputs and history in the store."""

from __future__ import annotations

from tests.conftest import wait_state, write_job


def test_drop_run_succeed(project, store, daemon):
    write_job(project.queue_dir, "hello.yaml", "name: hello\nkind: probe\nsteps: 3\n")
    job = wait_state(store, 1, "succeeded")
    assert job.name == "hello" and job.attempts == 1 and job.exit_code == 0
    assert [o["kind"] for o in store.outputs(job.id)] == ["result"]
    states = [t["to_state"] for t in store.transitions(job.id)]
    assert states == ["queued", "running", "succeeded"]
    assert (project.queue_dir / "accepted" / "1-hello.yaml").exists()
    assert "probe" in (project.runs_dir / "1-hello" / "log.txt").read_text()
