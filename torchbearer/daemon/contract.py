"""The daemon's side of the worker contract (:mod:`torchbearer.runs`): what it writes before an attempt, and
how it ingests what the worker reports into the store, of which it is the only writer.

- :func:`write_job_file` — before each attempt: the resolved job and the jobs its spec names (their state,
  spec, outputs; metrics for plot curves), so the worker needs nothing but its run folder.
- :func:`ingest` — the attempt's new complete event lines from the offset kept in the store, written in one
  transaction with the new offset (idempotent across daemon restarts); ``submit`` events become jobs spawned
  by the worker's job (at most one per name).
- :func:`ingest_to_end` — once the worker has ended: every line left, then the events file is removed (the
  store holds all it said, and a flood of progress lines would otherwise stay in the run folder for good).
- :func:`write_children` — a controller's (a sweep's) ``children.json``: its spawned jobs' states, outputs and
  the metric its spec names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torchbearer import commands, runs
from torchbearer.store import Job, JobState, Store

log = logging.getLogger("torchbearer.daemon")

#: Batches read per call for one attempt (each at most ``runs.read_events``'s ``max_bytes``): a worker that
#: writes faster than this is caught up over the next polls instead of stalling the loop.
MAX_BATCHES = 4


def _ref_record(store: Store, job: Job, *, metrics: bool) -> dict[str, Any]:
    record = {
        "id": job.id, "name": job.name, "kind": job.kind, "state": str(job.state), "spec": job.spec,
        "run_dir": job.run_dir, "outputs": [{"kind": o["kind"], "path": o["path"]} for o in store.outputs(job.id)],
    }  # fmt: skip
    if metrics:
        record["metrics"] = [
            {k: row[k] for k in ("name", "value", "step", "epoch", "time", "attempt")} for row in store.metrics(job.id)
        ]
    return record


def job_document(store: Store, job: Job, attempt: int, run_dir: Path) -> dict[str, Any]:
    """What ``job.json`` holds for this attempt."""
    refs: dict[str, Any] = {}
    for ref in runs.job_refs(job.spec):
        other = store.find_job(ref)
        if other is not None:
            curves = job.spec.get("curves") == ref
            refs[str(ref)] = _ref_record(store, other, metrics=curves)
    return {
        "id": job.id, "name": job.name, "kind": job.kind, "spec": job.spec, "attempt": attempt,
        "run_dir": str(run_dir), "refs": refs,
    }  # fmt: skip


def write_job_file(store: Store, job: Job, attempt: int, run_dir: Path) -> None:
    """Write ``job.json`` (and a spawning job's ``children.json``) into the run folder before an attempt;
    a ``cancel-requested`` marker of an earlier attempt is removed."""
    runs.write_job_file(run_dir, job_document(store, job, attempt, run_dir))
    (run_dir / runs.CANCEL_FILE).unlink(missing_ok=True)
    write_children(store, job, run_dir)


def write_children(store: Store, job: Job, run_dir: Path) -> None:
    """The jobs ``job`` spawned, for it to read (``children.json``): by name, id, state, reason, outputs and
    the values of the metric its spec names (``metric``, as a sweep's)."""
    metric = job.spec.get("metric") if isinstance(job.spec.get("metric"), str) else None
    children = {}
    for child in commands.spawned_jobs(store, job.id):
        entry: dict[str, Any] = {
            "id": child.id, "state": str(child.state), "reason": child.reason,
            "outputs": [{"kind": o["kind"], "path": o["path"]} for o in store.outputs(child.id)],
        }  # fmt: skip
        if metric:
            entry["metrics"] = {metric: [r["value"] for r in store.metrics(child.id, metric)]}
        children[child.name] = entry
    if children or job.kind == "sweep":
        runs.write_json_atomic(run_dir / runs.CHILDREN_FILE, {"jobs": children})


def ingest(store: Store, job_id: int, attempt: int, run_dir: Path) -> int:
    """Bring the attempt's new events into the store; returns how many lines were read (0: nothing new)."""
    path = runs.events_path(run_dir, attempt)
    total = 0
    for _ in range(MAX_BATCHES):
        offset = store.events_offset(job_id, attempt)
        batch = runs.read_events(path, offset)
        if batch.end == offset:
            break
        for event in batch.events:
            if event.get("type") == runs.SUBMIT:
                spawn(store, job_id, event.get("job"))
        store.ingest_events(job_id, attempt, batch.events, batch.end)
        total += batch.count
    return total


#: Batches :func:`ingest_to_end` reads at most (8 MiB each): a bound for a file that somehow still grows.
MAX_FINAL_BATCHES = 4096


def ingest_to_end(store: Store, job_id: int, attempt: int, run_dir: Path) -> int:
    """After the attempt's worker ended: bring every complete event left into the store, then remove the events
    file, each of whose lines is now in the store (a torn last line, from a worker killed mid-write, can no
    longer be completed). Returns how many lines were read. A store fault raises before the file goes."""
    total = 0
    for _ in range(MAX_FINAL_BATCHES // MAX_BATCHES):
        count = ingest(store, job_id, attempt, run_dir)
        if not count:
            runs.events_path(run_dir, attempt).unlink(missing_ok=True)
            break
        total += count
    return total


def spawn(store: Store, parent_id: int, given: Any) -> int | None:
    """Queue a job that job ``parent_id`` asked for (a sweep's trial), unless one of that name was already
    spawned by it or the parent is being cancelled. Returns the new job's id."""
    from torchbearer.ingest import job_row
    from torchbearer.jobs import get_kind

    if not isinstance(given, dict) or not isinstance(given.get("name"), str):
        log.error("job #%d asked to queue a job without a name: ignored", parent_id)
        return None
    parent = store.job(parent_id)
    if parent is None or parent.cancel_requested or parent.state != JobState.RUNNING:
        return None
    if any(child.name == given["name"] for child in commands.spawned_jobs(store, parent_id)):
        return None
    try:
        spec = get_kind(str(given.get("kind"))).spec.model_validate(given)
    except Exception as exc:  # noqa: BLE001 - a job's bad request must not cost the daemon
        log.error("job #%d asked to queue %s, which is not valid: %s", parent_id, given["name"], exc)
        return None
    (job_id,) = store.add_jobs([job_row(spec, given, commands.SPAWNED_SOURCE.format(parent_id))])
    log.info("queued %s (#%d) for %s (#%d)", given["name"], job_id, parent.name, parent_id)
    return job_id
