"""A store seeded with jobs in every state (through the Store API, on a frozen clock) and dashboards on it.

Times are fixed and the time zone is UTC, the machine figures are made up, and every path shown is inside the
project folder (shown relative to it), so the same screen is drawn on every machine: what snapshots need.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from torchbearer.gpu import GpuStats
from torchbearer.settings import Settings
from torchbearer.store import JobState, NewJob, Store
from torchbearer.tui.app import TorchbearerApp
from torchbearer.tui.data import SystemStats

#: The dashboard's "now": 2025-11-21 07:30 UTC, a morning after a night of jobs.
NOW = 1_763_710_200.0
NIGHT = NOW - 9 * 3600

FIXED_STATS = SystemStats(
    cpu_pct=12.0,
    ram_used=9 * 2**30,
    ram_total=62 * 2**30,
    disk_free=412 * 2**30,
    gpus=(GpuStats(0, "NVIDIA RTX A6000", 87.0, 31 * 2**30, 48 * 2**30, 212.0, 66.0),),
)

TRACEBACK = """\
Epoch 3:  41%|████      | 52/128 [00:31<00:45, 1.67it/s, loss=0.412]
Traceback (most recent call last):
  File "torchbearer/worker.py", line 61, in main
    kind.run(spec, ctx)
  File "torchbearer/jobs/train.py", line 88, in run
    trainer.fit(task, datamodule=data)
  File "torch/nn/modules/module.py", line 1532, in _call_impl
    return forward_call(*args, **kwargs)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"""

LOG = """\
[07:21:02] INFO     job farseg (#3) attempt 1 on slot 0
[07:21:09] INFO     preparing data: 412 patches from 1 scene
[07:21:15] WARNING  masks/chaco.geojson: 3 polygons outside the scene were skipped
[07:22:40] INFO     epoch 0: val/iou 0.412 val/loss 0.603
[07:24:02] INFO     epoch 1: val/iou 0.488 val/loss 0.551
[07:25:25] ERROR    dataloader worker 2 restarted after a read error (retrying)
[07:25:31] INFO     epoch 2: val/iou 0.529 val/loss 0.522
"""


class Clock:
    """A settable "now" for the store while seeding (``torchbearer.store._now``)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def at(self, moment: float) -> Clock:
        self.now = moment
        return self


def write_plot(path: Path) -> None:
    """A small deterministic image: a blue-to-yellow gradient with a dark diagonal band."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, 255 - x * 3], axis=-1).astype("uint8")
    rgb[np.abs(x - y) < 4] = (20, 20, 20)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def seed_store(store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Ten jobs, one or more in every state, with attempts, progress, metrics, outputs and logs."""
    clock = Clock(NIGHT)
    monkeypatch.setattr("torchbearer.store._now", clock)
    spec = {"train": {"epochs": 40, "batch_size": 16}, "model": {"arch": "farseg", "backbone": "resnet50"}}
    names = ["prepare", "fcn", "farseg", "unet", "ensemble", "night-2", "held-one", "dropped", "resumable", "orphan"]
    kinds = ["download", "train", "train", "train", "predict", "train", "train", "train", "train", "predict"]
    new = [
        NewJob(name=name, kind=kind, spec_given={"name": name}, spec={"name": name, "kind": kind, **spec},
               priority=5 if name == "night-2" else 0, held=name == "held-one")
        for name, kind in zip(names, kinds, strict=True)
    ]  # fmt: skip
    ids = store.add_jobs(new)
    job = dict(zip(names, ids, strict=True))

    def run(name: str, start: float, end: float | None, state: JobState, **columns) -> Path:
        run_dir = settings.runs_dir / f"{job[name]}-{name}"
        run_dir.mkdir(parents=True, exist_ok=True)
        clock.at(start)
        store.transition(job[name], JobState.RUNNING, started_at=start, run_dir=str(run_dir), stage="starting")
        number = store.start_attempt(job[name], pid=None, slot="0")
        if end is not None:
            clock.at(end)
            store.finish_attempt(job[name], number, outcome=str(state))
            store.transition(job[name], state, finished_at=end, **columns)
        return run_dir

    run_dir = run("prepare", NIGHT + 60, NIGHT + 900, JobState.SUCCEEDED, reason="exit code 0")
    store.add_output(job["prepare"], run_dir / "scene.tif", "scene")

    run_dir = run("fcn", NIGHT + 960, NIGHT + 3 * 3600, JobState.SUCCEEDED, reason="exit code 0")
    for epoch in range(8):
        clock.at(NIGHT + 1000 + epoch * 600)
        store.add_metrics(job["fcn"], {"train/loss": 0.9 / (1 + epoch * 0.4), "val/loss": 0.8 / (1 + epoch * 0.3),
                                       "val/iou": 0.3 + 0.05 * epoch - 0.01 * max(0, epoch - 5) ** 2},
                          epoch=epoch)  # fmt: skip
    for kind, file in (("best_checkpoint", "best.ckpt"), ("checkpoint", "last.ckpt"), ("plot", "plot_0.png")):
        (run_dir / file).write_bytes(b"") if not file.endswith(".png") else write_plot(run_dir / file)
        store.add_output(job["fcn"], run_dir / file, kind)

    run_dir = run("farseg", NIGHT + 3 * 3600 + 60, None, JobState.RUNNING)
    for epoch in range(3):  # the training loss as Lightning names it: per step (from 11 269 down) and per epoch
        for batch in range(8):
            step = epoch * 128 + batch * 16
            clock.at(NOW - 600 + step * 0.2)
            value = 11269.0 * 1e-4 ** (step / 383) + 0.55 - 0.08 * epoch + 0.1 * (batch % 3)
            store.add_metrics(job["farseg"], {"train/loss_step": value}, epoch=epoch, step=step)
        clock.at(NOW - 600 + epoch * 80)
        store.add_metrics(job["farseg"], {"train/loss_epoch": 0.7 - 0.08 * epoch, "val/loss": 0.6 - 0.04 * epoch,
                                          "val/iou": 0.41 + 0.06 * epoch - 0.005 * epoch**2},
                          epoch=epoch, step=epoch * 128 + 127)  # fmt: skip
    clock.at(NOW - 20)
    store.add_progress(job["farseg"], stage="training", done=3 * 128 + 52, total=40 * 128, unit="steps", epoch=3,
                       step=3 * 128 + 52, eta_s=5580.0,
                       fields={"epochs": 40, "epoch_step": 52, "epoch_steps": 128, "loss": 0.412, "lr": 8.5e-4,
                               "samples_per_s": 143.2, "data_wait_share": 0.04})  # fmt: skip
    (run_dir / "log.txt").write_text(LOG)
    write_plot(run_dir / "plot_0.png")
    store.add_output(job["farseg"], run_dir / "plot_0.png", "plot")

    run_dir = run("unet", NIGHT + 2 * 3600, NIGHT + 2 * 3600 + 1500, JobState.FAILED, exit_code=1,
                  reason="exit code 1: torch.OutOfMemoryError: CUDA out of memory", error_tail=TRACEBACK)  # fmt: skip
    (run_dir / "log.txt").write_text(TRACEBACK + "\n")

    clock.at(NIGHT + 2 * 3600 + 1500)
    # only legal moves (store.TRANSITIONS): a queued job reaches waiting through a hold and release
    store.transition(job["ensemble"], JobState.HELD, reason="held")
    store.transition(job["ensemble"], JobState.WAITING, reason="waiting for fcn, farseg, unet")
    store.transition(job["dropped"], JobState.CANCELLED, finished_at=NIGHT + 1200, reason="cancelled on request")
    run("resumable", NIGHT + 1300, NIGHT + 1400, JobState.INTERRUPTED, reason="daemon stopped; runs again")
    store.transition(job["orphan"], JobState.HELD, reason="held")
    store.transition(job["orphan"], JobState.WAITING, reason="waiting for unet")
    store.transition(job["orphan"], JobState.DEPENDENCY_FAILED, finished_at=NIGHT + 2 * 3600 + 1500,
                     reason="dependency unet (#4) failed")  # fmt: skip
    store.set_meta("tui_last_opened", NIGHT - 3600)
    return job


@pytest.fixture
def anyio_backend() -> str:
    """Pilot tests are ``async``: anyio's pytest plugin runs them on asyncio, Textual's loop."""
    return "asyncio"


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC while the test runs (times on screen do not depend on the machine)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def seeded(project: Settings, store: Store, monkeypatch: pytest.MonkeyPatch, utc: None) -> dict[str, int]:
    """Job ids by name, in a store seeded by :func:`seed_store`."""
    with monkeypatch.context() as patch:
        return seed_store(store, project, patch)


@pytest.fixture
def make_app(project: Settings) -> Callable[..., TorchbearerApp]:
    """A dashboard on the test project with the fixed clock and machine figures, polling fast."""

    def make(**options) -> TorchbearerApp:
        options = {"clock": lambda: NOW, "system_stats": lambda: FIXED_STATS, "poll_interval_s": 0.05,
                   "show_summary": False, **options}  # fmt: skip
        return TorchbearerApp(project, **options)

    return make


async def until(pilot, predicate: Callable[[], object], timeout: float = 15.0, what: str = "") -> object:
    """Let the app run until ``predicate()`` is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        await pilot.pause(0.05)


async def loaded(pilot) -> None:
    """Wait for the dashboard's first reading of the store to be on screen."""
    await until(pilot, lambda: pilot.app.loaded, what="the first reading of the store")
    await pilot.pause()
