"""The job-file format: one job, or defaults + jobs; the common fields and how they are read."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from torchbearer.ingest import submit_file
from torchbearer.spec import JobFileError, load_job_file, parse_duration, parse_job_text


def test_single_job_named_after_its_file(project, tmp_path):
    path = tmp_path / "my night #1.yaml"
    path.write_text("kind: probe\nsteps: 2\n")
    (job,) = load_job_file(path)
    assert job.spec.name == "my-night-1" and job.spec.steps == 2 and job.index is None


def test_defaults_merge_deeply_under_each_job(project):
    jobs = parse_job_text(
        "defaults:\n  kind: probe\n  priority: 3\n  retries: 1\n"
        "jobs:\n  - {name: a}\n  - {name: b, priority: 9, steps: 5}\n"
    )
    assert [(j.spec.name, j.spec.priority, j.spec.retries, j.spec.steps) for j in jobs] == [
        ("a", 3, 1, 3),
        ("b", 9, 1, 5),
    ]
    assert jobs[1].given == {"kind": "probe", "priority": 9, "retries": 1, "name": "b", "steps": 5}
    assert jobs[1].index == 1


def test_common_fields(project):
    (job,) = parse_job_text(
        "name: full\nkind: probe\npriority: -5\nafter: [prep, 12]\nnot_before: 2030-01-02T03:04:05Z\n"
        "schedule: '*/5 * * * *'\nretries: 2\nretry_backoff: 30s\ntimeout: 1.5h\ndevices: 2\n"
    )
    spec = job.spec
    assert spec.priority == -5 and spec.after == ["prep", 12] and spec.retries == 2
    assert spec.retry_backoff == 30 and spec.timeout == 5400 and spec.devices == 2
    assert spec.schedule == "*/5 * * * *"
    assert spec.not_before_ts == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert job.resolved["timeout"] == 5400


@pytest.mark.parametrize(
    ("text", "seconds"), [(90, 90.0), ("90", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("1.5d", 129600.0)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0", -1, True, "5 weeks"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_zero_backoff_allowed(project):
    (job,) = parse_job_text("name: quick\nkind: probe\nretry_backoff: 0\n")
    assert job.spec.retry_backoff == 0


def test_naive_not_before_is_local_time(project):
    (job,) = parse_job_text("name: later\nkind: probe\nnot_before: 2030-06-01 12:00:00\n")
    assert job.spec.not_before_ts == datetime(2030, 6, 1, 12).timestamp()


def test_nested_unknown_key_gets_did_you_mean(project):
    with pytest.raises(JobFileError, match=r"<job>:3: actoin: unknown key 'actoin'; did you mean 'action'\?"):
        parse_job_text("name: x\nkind: probe\nactoin: raise\n")


def test_schedules_are_stored_not_queued(project, store, tmp_path):
    path = tmp_path / "nightly.yaml"
    path.write_text("defaults: {kind: probe}\njobs:\n  - {name: once}\n  - {name: nightly, schedule: '0 2 * * *'}\n")
    ids = submit_file(path, project.queue_dir, store)
    assert [j.name for j in store.jobs(ids=ids)] == ["once"]
    (schedule,) = store.schedules()
    assert schedule["name"] == "nightly" and schedule["cron"] == "0 2 * * *" and schedule["spec"]["kind"] == "probe"


def test_after_resolves_names_in_file_then_store_then_ids(project, store, tmp_path):
    first = tmp_path / "first.yaml"
    first.write_text("defaults: {kind: probe}\njobs:\n  - {name: prep}\n  - {name: train, after: [prep]}\n")
    prep_id, train_id = submit_file(first, project.queue_dir, store)
    assert store.job(train_id).after == [prep_id] and store.job(train_id).state == "waiting"
    second = tmp_path / "second.yaml"
    second.write_text(f"defaults: {{kind: probe}}\njobs:\n  - {{name: eval, after: [train, {prep_id}]}}\n")
    (eval_id,) = submit_file(second, project.queue_dir, store)
    assert store.job(eval_id).after == [train_id, prep_id]
