"""`validate`, `submit` and `run FILE` (the foreground run), as a user types them."""

from __future__ import annotations

from tests.cli.conftest import flat, tb, tb_process
from tests.conftest import wait_state, write_job
from tests.daemon.conftest import completions, probe
from tests.spec.corpus import CORPUS


def test_validate_good_and_bad(project, night):
    good = tb("validate", night)
    assert good.returncode == 0 and f"✓ {night}: 2 jobs: a (probe), b (probe)" in flat(good.stdout)
    bad = tb("validate", night, CORPUS / "unknown_key_typo.yaml", CORPUS / "binary_garbage.yaml")
    assert bad.returncode == 1
    errors = flat(bad.stderr)
    assert f"{CORPUS / 'unknown_key_typo.yaml'}:3: prority: unknown key 'prority'; did you mean 'priority'?" in errors
    assert "binary data (NUL byte at offset 0)" in errors
    assert "✓" in bad.stdout  # the good file is still reported good


def test_validate_missing_file(project, tmp_path):
    result = tb("validate", tmp_path / "nope.yaml")
    assert result.returncode == 1 and "cannot read: No such file or directory" in flat(result.stderr)


def test_submit_without_daemon(project, store, night):
    result = tb("submit", night)
    assert result.returncode == 0, result.stderr
    assert f"✓ {night}: queued #1, #2" in flat(result.stdout)
    assert "no daemon is running" in flat(result.stderr)
    assert [(j.name, j.state, j.after) for j in store.jobs()] == [("a", "queued", []), ("b", "waiting", [1])]
    assert (project.queue_dir / "accepted" / "1-night.yaml").read_text() == night.read_text()
    assert night.exists()  # submit copies; the user's file stays where it was


def test_submit_bad_file_queues_nothing(project, store, night):
    result = tb("submit", CORPUS / "cycle.yaml", night)
    assert result.returncode == 1 and "dependency cycle" in flat(result.stderr)
    assert [j.name for j in store.jobs()] == ["a", "b"]


def test_submit_held(project, store, night):
    assert tb("submit", "--held", night).returncode == 0
    assert {j.state for j in store.jobs()} == {"held"}


def test_submit_to_a_running_daemon(project, store, daemon, night):
    result = tb("submit", night)
    assert result.returncode == 0 and "no daemon" not in result.stderr
    wait_state(store, 2, "succeeded")


def test_run_in_the_foreground(project, store, night):
    result = tb_process("run", night)
    assert result.returncode == 0, result.stderr
    assert "a (#1): succeeded" in result.stdout and "b (#2): succeeded" in result.stdout
    assert [(j.name, j.state, j.attempts) for j in store.jobs()] == [("a", "succeeded", 1), ("b", "succeeded", 1)]
    assert len(completions(project)) == 2
    assert (project.runs_dir / "1-a" / "log.txt").exists()
    assert store.daemon_info()["alive"] is False  # a foreground run is not a daemon


def test_run_exit_codes(project, store, tmp_path):
    failing = tmp_path / "failing.yaml"
    failing.write_text(probe("boom", action="raise", steps=1))
    result = tb_process("run", failing)
    assert result.returncode == 1 and "boom (#1): failed RuntimeError: probe boom failed on purpose" in flat(
        result.stdout
    )
    refused = tb_process("run", CORPUS / "wrong_kind.yaml")
    assert refused.returncode == 2 and "unknown job kind 'prob'; did you mean 'probe'?" in flat(refused.stderr)
    assert len(store.jobs()) == 1


def test_run_refused_while_a_daemon_serves_the_queue(project, store, daemon, night):
    result = tb_process("run", night)
    assert result.returncode == 1 and "a daemon is serving this queue" in flat(result.stderr)
    assert store.jobs() == []


def test_run_leaves_files_in_the_queue_alone(project, store, tmp_path):
    """`run` serves only its own files' jobs: a file sitting in queue/ waits for the daemon."""
    write_job(project.queue_dir, "other.yaml", probe("other"))
    only = tmp_path / "only.yaml"
    only.write_text(probe("only"))
    assert tb_process("run", only).returncode == 0
    assert [j.name for j in store.jobs()] == ["only"]
    assert (project.queue_dir / "other.yaml").exists()


def test_run_refuses_jobs_waiting_on_jobs_outside_it(project, store, tmp_path):
    """`run` serves only its own jobs: one waiting on a pending job elsewhere would wait forever."""
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(probe("a"))
    second.write_text("name: b\nkind: probe\nafter: [a]\n")
    assert tb("submit", "--held", first).returncode == 0
    result = tb_process("run", second)
    assert result.returncode == 1
    assert "b (#2) waits for a (#1, held), which this run does not include" in flat(result.stderr)
    assert tb_process("run", first, second).returncode == 0  # the held a is not this run's a: a new one runs


def test_submit_refuses_a_file_already_in_the_queue_folder(project, store):
    """The daemon queues such a file itself (now or at its next start): submitting it too would queue it twice."""
    path = write_job(project.queue_dir, "dropped.yaml", probe("dropped"))
    result = tb("submit", path)
    assert result.returncode == 1 and "already in the queue folder: the daemon queues it by itself" in flat(
        result.stderr
    )
    assert store.jobs() == [] and path.exists()
