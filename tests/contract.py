"""Running a kind's ``run(spec, ctx)`` in the test process under the worker contract (``torchbearer/runs.py``).

:func:`job_context` does what the daemon does before an attempt (``job.json`` into the run folder, with the
jobs the spec names) and gives the context a worker builds from it; :func:`ingest` does what the daemon does
with the attempt's events (into the store), so a test checks the store as after a real run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torchbearer.context import JobContext
from torchbearer.daemon import contract
from torchbearer.settings import Settings
from torchbearer.store import Store


def job_context(
    store: Store, job_id: int, run_dir: Path, settings: Settings, *, spec: dict[str, Any] | None = None,
    attempt: int = 1,
) -> JobContext:  # fmt: skip
    """The context of ``attempt`` of job ``job_id`` (its stored spec, or ``spec``), as a worker gets it."""
    while (store.job(job_id) or 0) and store.job(job_id).attempts < attempt:  # the daemon's attempt row
        store.start_attempt(job_id, pid=None, slot="")
    job = store.job(job_id)
    assert job is not None
    if spec is not None:
        job = dataclasses.replace(job, spec=spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    contract.write_job_file(store, job, attempt, run_dir)
    return JobContext.from_run_dir(run_dir, attempt, settings)


def ingest(store: Store, ctx: JobContext) -> None:
    """Bring what the context reported into the store (and a controller's ``children.json`` up to date)."""
    contract.ingest(store, ctx.job_id, ctx.attempt, ctx.run_dir)
    job = store.job(ctx.job_id)
    assert job is not None
    contract.write_children(store, job, ctx.run_dir)
