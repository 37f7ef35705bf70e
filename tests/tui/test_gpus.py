"""The GPU view: history sparklines from NVML readings (injected), who holds each GPU, other processes on it;
and on a machine without a GPU the running workers' CPU and memory, measured with psutil on a real process."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from tests.tui.conftest import FIXED_STATS, loaded, until
from tests.tui.test_dashboard import plain
from torchbearer.gpu import GpuProcess, GpuStats
from torchbearer.tui.widgets.gpus import GpuScreen, gpu_view

pytestmark = pytest.mark.anyio

GIB = 2**30


@pytest.fixture
def worker_process(store, seeded):
    """A real process standing in for the running job's worker: its pid on the running attempt of farseg."""
    process = subprocess.Popen([sys.executable, "-c", "import time; data = bytearray(64 << 20); time.sleep(120)"])
    store.set_attempt_pid(seeded["farseg"], store.job(seeded["farseg"]).attempts, process.pid)
    yield process
    process.kill()
    process.wait()


def nvml_readings(worker_pid: int):
    """What NVML reports, reading after reading: utilisation climbing, memory filling, power rising."""
    counter = itertools.count()

    def read():
        i = next(counter)
        gpu = GpuStats(0, "NVIDIA RTX A6000", min(100.0, 10.0 * i), (4 + 4 * i) * GIB, 48 * GIB, 80.0 + 20 * i, 60.0,
                       processes=(GpuProcess(worker_pid, 3 * GIB), GpuProcess(os.getpid(), 1 * GIB)))  # fmt: skip
        return FIXED_STATS.__class__(12.0, 9 * GIB, 62 * GIB, 412 * GIB, gpus=(gpu,))

    return read


async def test_gpu_view_from_nvml_readings(seeded, make_app, worker_process):
    app = make_app(system_stats=nvml_readings(worker_process.pid))
    app.poller.system_interval_s = 0.05
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        await pilot.press("u")
        screen = await until(pilot, lambda: isinstance(app.screen, GpuScreen) and app.screen)
        await until(pilot, lambda: len(app.system_history) >= 6, what="six readings")
        text = plain(gpu_view(list(app.system_history), app.user))
        util = next(line for line in text.splitlines() if line.startswith("util"))
        assert len(set(util.split()[1])) >= 4  # a history that climbs, not one figure
        assert "GPU0 NVIDIA RTX A6000" in text and "/ 48.0 GB" in text and " W" in text
        worker_line = next(line for line in text.splitlines() if line.startswith(str(worker_process.pid)))
        assert f"job #{seeded['farseg']} farseg" in worker_line and "3.0 GB" in worker_line
        ours = next(line for line in text.splitlines() if line.startswith(str(os.getpid())))
        assert "not a job" in ours and "pytest" in ours  # this test's own process, not a job's
        assert screen.body.content  # drawn on the screen
        await pilot.press("u")
        assert not isinstance(app.screen, GpuScreen)


async def test_without_a_gpu_the_workers_cpu_and_memory(seeded, make_app, worker_process):
    no_gpu = FIXED_STATS.__class__(12.0, 9 * GIB, 62 * GIB, 412 * GIB, gpus=())
    app = make_app(system_stats=lambda: no_gpu)
    app.poller.system_interval_s = 0.05
    async with app.run_test(size=(120, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("u")
        await until(pilot, lambda: app.system and app.system.workers, what="the worker measured")
        text = plain(gpu_view(list(app.system_history), app.user))
        assert "no NVIDIA GPU" in text
        worker = app.system.workers[0]
        assert worker.job_id == seeded["farseg"] and worker.pid == worker_process.pid
        assert worker.rss > 64 * 2**20  # the real process's memory (it holds a 64 MiB buffer)
        assert f"#{seeded['farseg']} farseg CPU" in text and f"(pid {worker_process.pid})" in text
        assert f"#{seeded['farseg']} farseg memory" in text
