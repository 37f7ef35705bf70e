"""The job state machine: every move in ``store.TRANSITIONS`` works, every other is refused with nothing
written; attempt outcomes are an enum; the write methods take named columns."""

from __future__ import annotations

import time
from collections import deque

import pytest

from torchbearer.store import (
    TRANSITIONS,
    AttemptOutcome,
    IllegalTransitionError,
    JobState,
    NewJob,
    Store,
)


def _job(name: str, **extra) -> NewJob:
    return NewJob(name, "probe", {"name": name, "kind": "probe"}, {"name": name, "kind": "probe"}, **extra)


def _path_to(target: JobState) -> list[JobState]:
    """The shortest chain of legal moves from ``queued`` (a plain submission) to ``target``."""
    paths = {JobState.QUEUED: []}
    todo = deque([JobState.QUEUED])
    while todo:
        state = todo.popleft()
        for nxt in sorted(TRANSITIONS[state]):
            if nxt not in paths:
                paths[nxt] = [*paths[state], nxt]
                todo.append(nxt)
    return paths[target]


def test_the_table_names_every_state_and_reaches_each():
    assert set(TRANSITIONS) == {None, *JobState}
    assert all(_path_to(state) is not None for state in JobState)  # none unreachable from a submission
    assert TRANSITIONS[JobState.SUCCEEDED] == frozenset()  # a succeeded job never runs again


def test_every_legal_move_works_and_every_other_is_refused(tmp_path):
    store = Store(tmp_path / "state.db")
    for source in JobState:
        for target in JobState:
            (job_id,) = store.add_jobs([_job(f"{source}-{target}")])
            for step in _path_to(source):
                assert store.transition(job_id, step)
            assert store.job(job_id).state == source
            before = store.transitions(job_id)
            if target in TRANSITIONS[source]:
                assert store.transition(job_id, target, reason="legal"), (source, target)
                assert store.job(job_id).state == target
                assert store.transitions(job_id)[-1]["from_state"] == source
            else:
                with pytest.raises(IllegalTransitionError, match=f"cannot move from {source} to {target}"):
                    store.transition(job_id, target, reason="illegal")
                assert store.job(job_id).state == source and store.transitions(job_id) == before


def test_a_lost_race_returns_false_before_the_table_is_consulted(tmp_path):
    store = Store(tmp_path / "state.db")
    (job_id,) = store.add_jobs([_job("a")])
    assert store.transition(job_id, JobState.RUNNING)
    assert store.transition(job_id, JobState.SUCCEEDED)
    # succeeded → queued is illegal, but the caller expected a failed job: the job moved on, nothing raised
    assert not store.transition(job_id, JobState.QUEUED, expect=[JobState.FAILED])


def test_submissions_start_in_a_state_the_table_allows(tmp_path):
    store = Store(tmp_path / "state.db")
    ids = store.add_jobs([_job("plain"), _job("held", held=True), _job("later", not_before=time.time() + 3600)])
    states = [store.job(i).state for i in ids]
    assert states == [JobState.QUEUED, JobState.HELD, JobState.WAITING]
    assert set(states) <= TRANSITIONS[None]


def test_outcomes_are_an_enum_written_and_read(tmp_path):
    store = Store(tmp_path / "state.db")
    (job_id,) = store.add_jobs([_job("a")])
    store.transition(job_id, JobState.RUNNING)
    number = store.start_attempt(job_id, pid=None, slot="")
    assert store.attempt(job_id, number)["outcome"] is None
    store.finish_attempt(job_id, number, outcome=AttemptOutcome.INTERRUPTED, exit_code=75)
    outcome = store.attempt(job_id, number)["outcome"]
    assert outcome is AttemptOutcome.INTERRUPTED and store.attempts(job_id)[0]["outcome"] is outcome
    with pytest.raises(ValueError, match="'done' is not a valid AttemptOutcome"):
        store.finish_attempt(job_id, number, outcome="done")


def test_write_methods_take_named_columns_and_none_clears(tmp_path):
    store = Store(tmp_path / "state.db")
    (job_id,) = store.add_jobs([_job("a")])
    store.transition(job_id, JobState.RUNNING, started_at=10.0, stage="starting", pid=123)
    store.transition(job_id, JobState.INTERRUPTED, pid=None)  # stage and started_at not given: kept
    job = store.job(job_id)
    assert (job.started_at, job.stage, job.pid) == (10.0, "starting", None)
    store.update_job(job_id, priority=7, cancel_requested=True)
    assert (store.job(job_id).priority, store.job(job_id).cancel_requested) == (7, 1)
    with pytest.raises(TypeError, match="state"):
        store.update_job(job_id, state="succeeded")  # a state change goes through transition, never here
    with pytest.raises(TypeError, match="spec"):
        store.transition(job_id, JobState.RUNNING, spec="{}")
