"""Every file of the bad-job corpus is refused with a message that names the problem and, where YAML can, the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.spec.corpus import CORPUS, DEPENDENCY_EXPECTED, EXPECTED, HUGE_FILE_BYTES, write_huge_file
from torchbearer.ingest import submit_file
from torchbearer.spec import MAX_JOB_FILE_BYTES, JobFileError, load_job_file
from torchbearer.store import DependencyError


def test_corpus_is_complete():
    on_disk = {p.name for p in CORPUS.glob("*.yaml")}
    assert on_disk == set(EXPECTED) | set(DEPENDENCY_EXPECTED)
    assert len(on_disk) >= 30


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_refused_with_reason_and_line(project, name):
    text, line = EXPECTED[name]
    with pytest.raises(JobFileError) as caught:
        load_job_file(CORPUS / name)
    message = str(caught.value)
    assert text in message
    where = f"{CORPUS / name}:{line}:" if line else f"{CORPUS / name}:"
    assert message.startswith(where), message


@pytest.mark.parametrize("name", sorted(DEPENDENCY_EXPECTED))
def test_bad_dependencies_refused_by_the_store(project, store, name):
    load_job_file(CORPUS / name)  # valid as a file on its own
    with pytest.raises(DependencyError, match=DEPENDENCY_EXPECTED[name]):
        submit_file(CORPUS / name, project.queue_dir, store)
    assert store.jobs() == []  # nothing of a refused batch is queued


def test_python_tag_never_executes(project, tmp_path):
    marker = Path("/tmp/torchbearer-pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(JobFileError):
        load_job_file(CORPUS / "python_object_tag.yaml")
    assert not marker.exists()


def test_huge_file_refused_unread(project, tmp_path):
    path = write_huge_file(tmp_path / "huge.yaml")
    with pytest.raises(JobFileError) as caught:
        load_job_file(path)
    assert f"file is {HUGE_FILE_BYTES + 23:,} bytes; job files are limited to {MAX_JOB_FILE_BYTES:,}" in str(
        caught.value
    )


def test_every_issue_of_a_file_is_listed(project, tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("defaults:\n  kind: probe\njobs:\n  - {name: a, steps: x}\n  - {name: b, prority: 1}\n")
    with pytest.raises(JobFileError) as caught:
        load_job_file(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2 and "jobs[0].steps" in lines[0] and "did you mean 'priority'" in lines[1]
