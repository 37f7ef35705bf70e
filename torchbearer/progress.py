"""Rich progress bars for work in the foreground, fed by the store's progress events.

The same events drive the dashboard, so a foreground ``run``/``predict``/``download`` shows exactly what the
dashboard would: stage, done/total with units, and the ETA the job computed.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from torchbearer.store import JobState, Store


class ForegroundProgress:
    """One progress bar per job; call :meth:`refresh` as often as you like (it reads the store)."""

    def __init__(self, store: Store, job_ids: list[int], *, console: Console | None = None) -> None:
        self.store = store
        self.job_ids = job_ids
        self.progress = Progress(
            TextColumn("{task.fields[label]}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[int, TaskID] = {}

    def __enter__(self) -> ForegroundProgress:
        self.progress.start()
        for job in self.store.jobs(ids=self.job_ids):
            self.tasks[job.id] = self.progress.add_task("", total=1.0, label=f"{job.name} #{job.id}", detail="")
        self.refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh()
        self.progress.stop()

    def refresh(self) -> None:
        for job in self.store.jobs(ids=self.job_ids):
            detail = job.state if job.state != JobState.RUNNING else (job.stage or "running")
            event = self.store.latest_progress(job.id) if job.state == JobState.RUNNING else None
            if event and event.get("done") is not None and event.get("total"):
                detail += f" {event['done']:.0f}/{event['total']:.0f} {event.get('unit') or ''}".rstrip()
            if event and event.get("eta_s") is not None:
                detail += f"  ETA {event['eta_s']:.0f}s"
            completed = 1.0 if job.state == JobState.SUCCEEDED else (job.progress or 0.0)
            self.progress.update(self.tasks[job.id], completed=completed, detail=detail)
