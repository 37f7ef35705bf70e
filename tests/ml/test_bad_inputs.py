"""Bad inputs fail a train job with a message that says which file and what is wrong; the daemon goes on."""

from __future__ import annotations

import numpy as np
import rasterio
from affine import Affine

from tests.conftest import DaemonProcess, wait_state, write_job
from tests.daemon.conftest import job_named, stop_daemon
from tests.ml.conftest import SAMPLE_NAME


def test_bad_inputs_fail_the_job_clearly(sample_project, store, monkeypatch) -> None:
    root = sample_project.project_dir
    with rasterio.open(root / "masks" / "t29unu_cloud.tif") as src:
        profile, data = src.profile, src.read(1)
    far = {**profile, "transform": Affine.translation(200_000, 0) @ profile["transform"]}  # 200 km east
    with rasterio.open(root / "masks" / "far.tif", "w", **far) as dst:
        dst.write(data, 1)
    four = {**profile, "count": 4, "dtype": "uint16", "nodata": 0}
    with rasterio.open(root / "data" / "four.tif", "w", **four) as dst:
        dst.write(np.full((4, *data.shape), 1500, "uint16"))
    (root / "masks" / "cut.tif").write_bytes((root / "masks" / "t29unu_cloud.tif").read_bytes()[:500])

    common = "kind: train, resolution: 60, classes: [clear, cloud], train: {epochs: 1, patch_size: 32}"
    write_job(sample_project.queue_dir, "bad.yaml", (
        f"defaults: {{{common}}}\njobs:\n"
        f"  - {{name: far, scenes: [data/{SAMPLE_NAME}], masks: masks/far.tif}}\n"
        "  - {name: bands, scenes: [data/four.tif], masks: masks/t29unu_cloud.tif}\n"
        "  - {name: missing, scenes: [data/nothing.tif], masks: masks/t29unu_cloud.tif}\n"
        f"  - {{name: corrupt, scenes: [data/{SAMPLE_NAME}], masks: masks/cut.tif}}\n"
    ))  # fmt: skip
    expected = {
        "far": "no mask overlaps scene",
        "bands": "four.tif has 4 bands; a 60 m stack has 11",
        "missing": "nothing.tif does not exist",
        "corrupt": "cut.tif is not a readable GeoTIFF",
    }
    # Four quick failures in a row would trip the daemon's crash-loop guard: that is not what is tested here.
    monkeypatch.setenv("TORCHBEARER_CRASH_LOOP_COUNT", "1000")
    # The pre-flight check would refuse this file when it is queued (tests/inference/test_preflight.py); here the
    # worker's own checks are tested, for inputs that went bad between queueing and running.
    monkeypatch.setenv("TORCHBEARER_PREFLIGHT", "0")
    daemon = DaemonProcess(sample_project).start()
    try:
        for name, message in expected.items():
            job = wait_state(store, job_named(store, name).id, {"failed", "succeeded"}, timeout=120)
            assert job.state == "failed" and message in job.reason, (name, job.reason)
    finally:
        stop_daemon(daemon)
