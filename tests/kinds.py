"""A small job kind for the queue's own tests: it sleeps, counts steps, fails or crashes on request.

Loaded into every process (daemon, worker) through ``TORCHBEARER_PLUGINS=tests.kinds``, the way a third-party
kind would be. Its ``state_file`` lets tests check resume: steps already done are not done again.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import time
from typing import Literal

from pydantic import Field

from torchbearer.context import JobContext, JobInterrupted
from torchbearer.jobs import JobKind, register
from torchbearer.spec import JobSpec

probe_log = logging.getLogger("tests.kinds.probe")


class ProbeSpec(JobSpec):
    kind: Literal["probe"] = "probe"
    steps: int = Field(3, ge=0, le=100_000)
    step_s: float = Field(0.05, ge=0, le=60)
    action: Literal["succeed", "raise", "segfault", "sigkill", "hang", "exit3"] = "succeed"
    at_step: int = Field(0, ge=0, description="step at which the action happens")
    action_attempts: int = Field(0, ge=0, description="the action happens only in the first N attempts; 0: all")
    ignore_sigterm: bool = False
    echo_env: str | None = Field(None, description="print this environment variable (and put it in a failure)")
    flood_s: float = Field(0, ge=0, le=60, description="bench: progress events as fast as it can for this long")
    warn: int = Field(0, ge=0, le=1000, description="log this many warnings, then an error, before the first step")


#: A flood's ``total``: its event ``i`` shows as progress ``i / FLOOD_TOTAL`` (bench/scheduler.py reads it back).
FLOOD_TOTAL = 10**9


def run(spec: ProbeSpec, ctx: JobContext) -> None:
    if spec.flood_s:
        _flood(spec, ctx)
    if spec.warn:
        for number in range(1, spec.warn + 1):
            probe_log.warning("probe warning %d of %d\nsecond line", number, spec.warn)
        probe_log.error("probe error after %d warnings", spec.warn)
    state_file = ctx.run_dir / "probe-state.json"
    done = json.loads(state_file.read_text())["done"] if state_file.exists() else 0
    if spec.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    echoed = os.environ.get(spec.echo_env, "") if spec.echo_env else ""
    if echoed:  # a careless job printing a secret: the scrubbing must catch it
        print(f"{spec.echo_env}={echoed}", flush=True)
    for step in range(done, spec.steps):
        if step == spec.at_step and (not spec.action_attempts or ctx.attempt <= spec.action_attempts):
            _act(spec)
        time.sleep(spec.step_s)
        state_file.write_text(json.dumps({"done": step + 1}))
        ctx.progress("probing", done=step + 1, total=spec.steps, unit="steps", step=step + 1)
        ctx.metric("probe/value", step * 0.5, step=step + 1)
        if ctx.should_stop and not spec.ignore_sigterm:
            raise JobInterrupted(f"stopped after step {step + 1}")
    if spec.action == "hang" and spec.at_step >= spec.steps:
        _act(spec)
    out = ctx.run_dir / "result.txt"
    out.write_text(f"{ctx.job_id} {spec.name} attempt {ctx.attempt}\n")
    ctx.output(out, "result")
    with open(ctx.settings.project_dir / "completions.log", "a") as log:  # one line per success: no duplicates
        log.write(f"{ctx.job_id} {spec.name} {os.getpid()}\n")


def _flood(spec: ProbeSpec, ctx: JobContext) -> None:
    """Progress events as fast as the context writes them, for ``flood_s`` seconds (the ingestion benchmark)."""
    deadline, done = time.monotonic() + spec.flood_s, 0
    while time.monotonic() < deadline:
        done += 1
        ctx.progress("flooding", done=done, total=FLOOD_TOTAL, unit="events", force=True)


def _act(spec: ProbeSpec) -> None:
    if spec.action == "raise":
        echoed = f" ({os.environ.get(spec.echo_env, '')})" if spec.echo_env else ""
        raise RuntimeError(f"probe {spec.name} failed on purpose{echoed}")
    if spec.action == "segfault":
        ctypes.string_at(0)
    if spec.action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if spec.action == "exit3":
        os._exit(3)
    if spec.action == "hang":
        while True:
            time.sleep(1)


register(JobKind("probe", ProbeSpec, run, "test kind: sleeps, counts, fails on request", metrics=("probe/value",)))
