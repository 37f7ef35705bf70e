"""Files into the live queue: many at once, the whole bad-file corpus, files still being written, editors' files."""

from __future__ import annotations

import os
import shutil
import time

from tests.conftest import wait_for, wait_state, write_job
from tests.daemon.conftest import job_named, logged, probe
from tests.spec.corpus import CORPUS, DEPENDENCY_EXPECTED, EXPECTED, write_huge_file
from torchbearer import commands


def test_200_files_dropped_at_once_are_all_accepted(project, store, daemon):
    commands.pause(store)  # only ingest is under test: keep 200 workers from starting
    for n in range(200):
        write_job(project.queue_dir, f"job-{n:03d}.yaml", probe(f"job-{n:03d}", steps=0))
    wait_for(lambda: len(store.jobs()) >= 200, 90, what="200 jobs in the store")
    jobs = store.jobs()
    assert sorted(j.name for j in jobs) == [f"job-{n:03d}" for n in range(200)]
    assert {j.state for j in jobs} == {"queued"}
    assert len({j.source for j in jobs}) == 200
    accepted = sorted(p.name for p in (project.queue_dir / "accepted").iterdir())
    assert accepted == sorted(f"{j.id}-{j.name}.yaml" for j in jobs)
    assert list(project.queue_dir.glob("*.yaml")) == []
    assert not (project.queue_dir / "rejected").exists() or not any((project.queue_dir / "rejected").iterdir())


def test_bad_file_corpus_refused_while_the_daemon_stays_up(project, store, daemon):
    names = sorted(EXPECTED) + sorted(DEPENDENCY_EXPECTED)
    for name in names:
        shutil.copy(CORPUS / name, project.queue_dir / name)
    write_huge_file(project.queue_dir / "huge.yaml")
    rejected = project.queue_dir / "rejected"
    wanted = {f"{name}.error.txt" for name in [*names, "huge.yaml"]}
    wait_for(lambda: rejected.is_dir() and wanted <= {p.name for p in rejected.iterdir()}, 60, what="all refused")
    for name, (text, line) in EXPECTED.items():
        error = (rejected / f"{name}.error.txt").read_text()
        assert text in error, (name, error)
        assert error.startswith(f"{name}:{line}:" if line else f"{name}:"), (name, error)
        assert (rejected / name).read_bytes() == (CORPUS / name).read_bytes()
    for name, text in DEPENDENCY_EXPECTED.items():
        assert text in (rejected / f"{name}.error.txt").read_text()
    assert "job files are limited to" in (rejected / "huge.yaml.error.txt").read_text()
    assert store.jobs() == []
    assert daemon.process.poll() is None and "Traceback" not in daemon.log()
    write_job(project.queue_dir, "good.yaml", probe("good"))
    wait_state(store, job_named(store, "good").id, "succeeded")


def test_file_written_in_two_parts_is_read_whole(project, store, daemon):
    path = project.queue_dir / "slow.yaml"
    with open(path, "w") as file:
        file.write("name: slow\nkind: pro")
        file.flush()
        time.sleep(1.5)  # longer than the watcher's settle time: the half alone is not a valid job
        file.write("be\nsteps: 2\n")
    job = wait_state(store, job_named(store, "slow").id, "succeeded")
    assert job.spec["steps"] == 2
    assert not (project.queue_dir / "rejected").exists() or not any((project.queue_dir / "rejected").iterdir())


def test_file_whose_first_part_is_valid_is_not_read_before_it_is_closed(project, store, daemon):
    path = project.queue_dir / "growing.yaml"
    with open(path, "w") as file:
        file.write("name: growing\nkind: probe\nsteps: 1")
        file.flush()
        time.sleep(1.5)  # "steps: 1" parses: only the open file tells the watcher it is not done
        file.write("2\n")
    job = wait_state(store, job_named(store, "growing").id, "succeeded")
    assert job.spec["steps"] == 12


def test_editor_temp_and_hidden_files_are_ignored(project, store, daemon):
    for name in (".night.yaml.swp", ".hidden.yaml", "night.yaml~", "#night.yaml#", "notes.txt", "~lock.yaml"):
        (project.queue_dir / name).write_text("not: a job\n")
    write_job(project.queue_dir, "real.yaml", probe("real"))
    wait_state(store, job_named(store, "real").id, "succeeded")
    left = {p.name for p in project.queue_dir.iterdir() if p.is_file()}
    assert {".night.yaml.swp", ".hidden.yaml", "night.yaml~", "#night.yaml#", "notes.txt", "~lock.yaml"} <= left
    assert [j.name for j in store.jobs()] == ["real"]


def test_fifo_in_the_queue_does_not_block_the_daemon(project, store, daemon):
    """Opening a named pipe for reading waits for a writer forever: the daemon must not even try."""
    os.mkfifo(project.queue_dir / ".pipe")
    os.rename(project.queue_dir / ".pipe", project.queue_dir / "pipe.yaml")  # "moved in": complete at once
    write_job(project.queue_dir, "after.yaml", probe("after"))
    wait_state(store, job_named(store, "after").id, "succeeded")
    assert (project.queue_dir / "pipe.yaml").exists()
    assert "ignoring pipe.yaml: not a regular file" in logged(daemon)


def test_names_too_long_to_keep_with_a_prefix_are_shortened(project, store, daemon):
    """A 250-byte name is legal in queue/ but not once ingest prefixes it: the daemon must not die of it."""
    good, bad = "g" * 245 + ".yaml", "b" * 193 + "é" * 25 + ".yaml"  # a 2-byte character falls on the cut
    write_job(project.queue_dir, good, probe("long-good"))
    write_job(project.queue_dir, bad, "name: long-bad\nkind: probe\nsteps: lots\n")
    job = wait_state(store, job_named(store, "long-good").id, "succeeded")
    rejected = project.queue_dir / "rejected"
    wait_for(lambda: any(p.name.endswith(".error.txt") for p in rejected.iterdir()), what="the refusal")
    (error,) = [p for p in rejected.iterdir() if p.name.endswith(".error.txt")]
    assert (
        error.name == "b" * 193 + "_.yaml.error.txt" and "steps: Input should be a valid integer" in error.read_text()
    )
    assert (project.queue_dir / "accepted" / f"{job.id}-{'g' * 194}_.yaml").exists()
    assert daemon.process.poll() is None
