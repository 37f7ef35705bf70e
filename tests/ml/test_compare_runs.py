"""Run comparison on two real training runs: the dashboard overlays their stored validation curves."""

from __future__ import annotations

import pytest

from tests.conftest import wait_state, write_job
from tests.daemon.conftest import job_named
from tests.ml.conftest import train_yaml
from tests.tui.conftest import until
from torchbearer.tui.app import TorchbearerApp
from torchbearer.tui.compare import CompareScreen

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_comparison_overlays_two_real_runs(sample_project, store, daemon):
    write_job(sample_project.queue_dir, "a.yaml", train_yaml("seed-0", epochs=2))
    write_job(sample_project.queue_dir, "b.yaml", train_yaml("seed-7", epochs=2, train="seed: 7"))
    ids = []
    for name in ("seed-0", "seed-7"):
        job = wait_state(store, job_named(store, name).id, {"succeeded", "failed"}, timeout=300)
        assert job.state == "succeeded", job.reason
        ids.append(job.id)

    app = TorchbearerApp(sample_project, compare=ids, show_summary=False, poll_interval_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comparison
                             and app.screen, what="the comparison")  # fmt: skip
        comparison = screen.comparison
        assert comparison.key == "val/iou" and [run.id for run in comparison.runs] == ids
        assert "train.seed" in comparison.differing  # the setting that differs is side by side
        names, _xs, ys = zip(*screen.key_plot._shown, strict=True)
        assert names == (f"#{ids[0]} seed-0", f"#{ids[1]} seed-7")  # both runs' curves, overlaid
        for job_id, values in zip(ids, ys, strict=True):
            stored = [m["value"] for m in sorted(store.metrics(job_id, "val/iou"), key=lambda m: m["epoch"])]
            assert list(values) == pytest.approx(stored) and len(values) == 2
        assert len(screen.loss_plot._shown) == 2
