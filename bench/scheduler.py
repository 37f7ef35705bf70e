"""Scheduler benchmark: pickup latency, ``status --json`` over 10 000 jobs, the idle daemon's CPU share.

Everything runs for real: a ``torchbearer daemon`` child process on a temporary project, job files written
into its ``queue/`` the way ``cp`` writes them, the CLI as a child process, psutil reading the daemon's CPU time.
The jobs are the tests' ``probe`` kind (``tests/kinds.py``, loaded through ``TORCHBEARER_PLUGINS``) with no
steps, so a job's own run time does not count.

- ``pickup_median_s``: from just before a file is written into ``queue/`` to its job's ``started_at`` (the
  moment the daemon claimed it and set it ``running``), median over ``--drops`` files dropped one at a time;
- ``status_10k_s``: wall time of ``torchbearer status --json`` as a child process on a store of 10 000 jobs,
  median of ``--repeats`` runs, and its CPU time (what the wall time is on an idle machine: on a shared
  one, waiting for a core adds to the wall time); printed next to the start-up of a bare ``python -c pass``
  and of ``status`` on an empty store, so the share spent on the jobs themselves shows;
- ``idle_cpu_share``: the daemon's CPU time (user + system, psutil) over ``--idle-s`` seconds with nothing to
  do, divided by that wall time (1.0 = one core busy).

Bars (DESIGN.md): pickup < 0.5 s, status < 0.3 s, idle < 1 %.

Usage: python bench/scheduler.py [--drops 20] [--repeats 9] [--idle-s 30] [--jobs 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchbearer.store import NewJob, Store  # noqa: E402

BARS = {"pickup_median_s": 0.5, "status_10k_s": 0.3, "idle_cpu_share": 0.01}


def project_env(project: Path) -> dict[str, str]:
    """The environment of every child process: this project, the probe kind, no env file; bytecode cached
    (in a folder of the benchmark's own, as an installed torchbearer has it) even where the caller's
    environment turns the cache off."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {
        **environ,
        "PYTHONPYCACHEPREFIX": str(project.parent / "pycache"),
        "TORCHBEARER_PROJECT": str(project),
        "TORCHBEARER_ENV_FILE": str(project / "none.env"),
        "TORCHBEARER_PLUGINS": "tests.kinds",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return value


def start_daemon(project: Path) -> subprocess.Popen:
    log = open(project / "daemon.log", "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen([sys.executable, "-m", "torchbearer", "daemon"], stdout=log, stderr=subprocess.STDOUT,
                               env=project_env(project), cwd=project, start_new_session=True)  # fmt: skip
    store = Store(project / "state" / "torchbearer.db")
    wait_until(lambda: store.daemon_info()["alive"] or process.poll() is not None, 60, "the daemon to start")
    if process.poll() is not None:
        raise RuntimeError(f"the daemon exited: {(project / 'daemon.log').read_text()[-2000:]}")
    return process


def measure_pickup(project: Path, drops: int) -> list[float]:
    """Seconds from writing each file into queue/ to its job running; one file at a time."""
    store = Store(project / "state" / "torchbearer.db")
    latencies = []
    for n in range(drops):
        time.sleep(0.3)  # the daemon back to waiting, as a user's drop would find it
        landed = time.time()
        (project / "queue" / f"pickup-{n:03d}.yaml").write_text(f"name: pickup-{n:03d}\nkind: probe\nsteps: 0\n")
        job = wait_until(lambda n=n: store.find_job(f"pickup-{n:03d}"), 30, "the job to be queued")
        job = wait_until(lambda job=job: (j := store.job(job.id)).started_at and j, 30, "the job to start")
        latencies.append(job.started_at - landed)
        wait_until(lambda job=job: store.job(job.id).is_terminal, 60, "the job to finish")
    return latencies


def measure_idle(process: subprocess.Popen, seconds: float) -> float:
    """The daemon's CPU share (user + system time ÷ wall time) over ``seconds`` with nothing to do."""
    daemon = psutil.Process(process.pid)
    time.sleep(2)  # let the last job's bookkeeping settle
    before, start = daemon.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, wall = daemon.cpu_times(), time.monotonic() - start
    return ((after.user - before.user) + (after.system - before.system)) / wall


def fill_store(path: Path, count: int) -> None:
    """``count`` finished and pending jobs with realistic specs, as a few months of nights leave them."""
    store = Store(path)
    spec = {"kind": "probe", "steps": 40, "step_s": 0.5, "model": {"arch": "unet", "backbone": "resnet34"}}
    batch = [NewJob(f"job-{n:05d}", "probe", {**spec, "name": f"job-{n:05d}"}, {**spec, "name": f"job-{n:05d}"},
                    priority=n % 7, source=f"night-{n // 12}.yaml") for n in range(count)]  # fmt: skip
    store.add_jobs(batch)
    now = time.time()
    with store.transaction() as conn:
        conn.execute(
            "UPDATE jobs SET state = 'succeeded', started_at = ?, finished_at = ?, attempts = 1, progress = 1.0, "
            "reason = NULL WHERE id <= ?",
            (now - 3600, now - 60, count - 50),
        )
        conn.execute("UPDATE jobs SET state = 'failed', reason = 'RuntimeError: CUDA out of memory' WHERE id % 97 = 0")
    store.close()


def measure_status(folder: Path, jobs: int, repeats: int) -> dict[str, float]:
    """Medians of ``status --json`` on a full store, on an empty one and of a bare Python, run in turns so a
    busy machine weighs on all three alike."""
    status = [sys.executable, "-m", "torchbearer", "status", "--json"]
    full, empty = folder / "full", folder / "empty"
    fill_store(full / "state" / "torchbearer.db", jobs)
    runs = {"full": (status, project_env(full)), "empty": (status, project_env(empty)),
            "python": ([sys.executable, "-c", "pass"], project_env(empty))}  # fmt: skip
    for argv, env in runs.values():  # warm-up: bytecode cache and the page cache
        subprocess.run(argv, env=env, capture_output=True, check=True)
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, bytes] = {}
    for _ in range(repeats):
        for name, (argv, env) in runs.items():
            before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            outputs[name] = subprocess.run(argv, env=env, capture_output=True, check=True).stdout
            times[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    assert len(json.loads(outputs["full"])["jobs"]) == jobs
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"status_10k_s": medians["full"], "status_empty_s": medians["empty"],
            "python_startup_s": medians["python"], "json_bytes": len(outputs["full"]),
            "status_10k_cpu_s": statistics.median(cpu["full"])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drops", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tb-bench-") as tmp:
        project = Path(tmp) / "project"
        (project / "queue").mkdir(parents=True)
        daemon = start_daemon(project)
        try:
            latencies = measure_pickup(project, args.drops)
            idle = measure_idle(daemon, args.idle_s)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        status = measure_status(Path(tmp) / "status", args.jobs, args.repeats)

    pickup = statistics.median(latencies)
    print(f"pickup: median {pickup:.3f} s, min {min(latencies):.3f} s, max {max(latencies):.3f} s "
          f"over {len(latencies)} drops (bar < {BARS['pickup_median_s']} s)")  # fmt: skip
    print(f"status --json over {args.jobs} jobs: {status['status_10k_s']:.3f} s "
          f"({status['json_bytes'] / 1e6:.1f} MB of JSON; empty store {status['status_empty_s']:.3f} s, "
          f"bare python {status['python_startup_s']:.3f} s; 10k ÷ empty = "
          f"{status['status_10k_s'] / status['status_empty_s']:.2f}) (bar < {BARS['status_10k_s']} s)")  # fmt: skip
    print(f"status --json over {args.jobs} jobs, CPU time (user + system) of the child: "
          f"{status['status_10k_cpu_s']:.3f} s (the wall time of an otherwise idle machine)")  # fmt: skip
    print(f"idle daemon: {idle * 100:.2f} % of one core over {args.idle_s:.0f} s (bar < {BARS['idle_cpu_share']:.0%})")
    figures = {"pickup_median_s": round(pickup, 4), "status_10k_s": round(status["status_10k_s"], 4),
               "idle_cpu_share": round(idle, 5)}  # fmt: skip
    for name, bar in BARS.items():
        print(f"{name}: {'PASS' if figures[name] < bar else 'FAIL'} ({figures[name]} vs < {bar})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
