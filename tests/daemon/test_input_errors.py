"""A job that fails on its input (a glob matching nothing) is the user's mistake, not a crash: jobs failing so
within seconds of starting do not trip the crash-loop guard and pause the queue for everyone."""

from __future__ import annotations

import importlib

from tests.conftest import DaemonProcess, wait_state, write_job
from tests.daemon.conftest import job_named, probe, stop_daemon
from torchbearer.context import PathOutsideProject
from torchbearer.worker import EXIT_INPUT, INPUT_ERRORS, is_input_error

TRAIN_MISSING = "name: {name}\nkind: train\nscenes: [data/no-such-scene-*.tif]\nmasks: masks/none.tif\n"


def test_missing_inputs_do_not_trip_the_crash_loop_guard(project, store):
    # the pre-flight check would refuse these files when queued: off, to reach the worker's own input check
    daemon = DaemonProcess(project, {"TORCHBEARER_CRASH_LOOP_COUNT": "2", "TORCHBEARER_PREFLIGHT": "0"}).start()
    try:
        for name in ("first", "second"):
            write_job(project.queue_dir, f"{name}.yaml", TRAIN_MISSING.format(name=name))
            job = wait_state(store, job_named(store, name).id, "failed", timeout=90)
            assert "matches nothing" in (job.reason or "") and job.exit_code == EXIT_INPUT
        write_job(project.queue_dir, "after.yaml", probe("after"))
        wait_state(store, job_named(store, "after").id, "succeeded", timeout=60)
        assert store.queue_paused() is None
    finally:
        stop_daemon(daemon)


def test_every_named_input_error_exists_and_is_recognised():
    for name in sorted(INPUT_ERRORS):
        module, _, cls = name.rpartition(".")
        error = getattr(importlib.import_module(module), cls)  # a renamed class would silently count as a crash
        assert is_input_error(error("x")), name
    assert is_input_error(PathOutsideProject("x")) and is_input_error(FileNotFoundError("x"))
    assert not is_input_error(RuntimeError("x")) and not is_input_error(MemoryError())
