"""Scheduler benchmark: pickup latency, ``status --json`` over 10 000 jobs, the idle daemon's CPU share.

Everything runs for real: a ``torchbearer daemon`` child process on a temporary project, job files written
into its ``queue/`` the way ``cp`` writes them, the CLI as a child process, psutil reading the daemon's CPU time.
The jobs are the tests' ``probe`` kind (``tests/kinds.py``, loaded through ``TORCHBEARER_PLUGINS``) with no
steps, so a job's own run time does not count.

- ``pickup_median_s``: from just before a file is written into ``queue/`` to its job's ``started_at`` (the
  moment the daemon claimed it and set it ``running``), median over ``--drops`` files dropped one at a time;
- ``status_10k_s``: wall time of ``torchbearer status --json`` as a child process on a store of 10 000 jobs,
  in a user's environment (no ``PYTHONPATH`` or pycache prefix of the benchmark's), its output read through a
  pipe, median of ``--repeats`` runs, and its CPU time (what the wall time is on an idle machine: on a shared
  one, waiting for a core adds to the wall time); printed next to the start-up of a bare ``python -c pass``
  and of ``status`` on an empty store, so the share spent on the jobs themselves shows;
- ``idle_cpu_share``: the daemon's CPU time (user + system, psutil) over ``--idle-s`` seconds with nothing to
  do, divided by that wall time (1.0 = one core busy);
- the worker contract's ingestion (issue 14): a probe job appends progress events to its events file as fast
  as it can for ``--flood-s`` seconds (``flood_s``: event ``i`` is progress ``i / 10⁹``) while
  ``status --json`` runs in a loop as a child process. ``event_lag_s``: from the newest event it shows being
  written (its time in the events file) to that ``status`` process's exit, median over the loop (an upper
  bound: the process's exit comes after its read); ``events_per_s``: events written ÷ seconds from the first
  written to the last ingested (the daemon's offset at the file's end); ``ingest_cpu_share``: the daemon's CPU
  time over that span ÷ its wall time.

Bars (DESIGN.md, issue 14): pickup < 0.5 s, status < 0.3 s, idle < 1 %, event lag < 1 s, ≥ 5 000 events/s,
ingestion < 0.25 of a core.

Usage: python bench/scheduler.py [--drops 20] [--repeats 9] [--idle-s 30] [--jobs 10000] [--flood-s 10]
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
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchbearer.store import NewJob, Store  # noqa: E402

BARS = {"pickup_median_s": 0.5, "status_10k_s": 0.3, "idle_cpu_share": 0.01, "event_lag_s": 1.0,
        "ingest_cpu_share": 0.25}  # fmt: skip
#: A floor, not a ceiling: events ingested per second.
MIN_EVENTS_PER_S = 5000
FLOOD_TOTAL = 10**9  # tests/kinds.py: the flood's event i is progress i / FLOOD_TOTAL


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


def measure_events(project: Path, process: subprocess.Popen, flood_s: float) -> dict[str, float]:
    """The ingestion figures of a probe flooding progress events for ``flood_s`` seconds (see the docstring)."""
    store = Store(project / "state" / "torchbearer.db")
    daemon = psutil.Process(process.pid)
    (project / "queue" / "flood.yaml").write_text(f"name: flood\nkind: probe\nsteps: 0\nflood_s: {flood_s}\n")
    job = wait_until(lambda: store.find_job("flood"), 30, "the flood job to be queued")
    job = wait_until(lambda: (j := store.job(job.id)).run_dir and j.state == "running" and j, 30, "it to run")
    written_by_worker = Path(job.run_dir) / "events-1.jsonl"
    wait_until(written_by_worker.exists, 30, "its first event")
    events = project / "flood-events.jsonl"  # a second name for the file: the daemon removes its own once read
    os.link(written_by_worker, events)
    before, start = daemon.cpu_times(), time.monotonic()
    looks: list[tuple[float, int, int]] = []  # (UNIX s, event index on the job's row, ingested offset)
    stop = threading.Event()

    def watch() -> None:  # what status --json reads (the job's row), every 20 ms, on a connection of its own
        own = Store(store.path)
        while not stop.is_set():
            row = own.query("SELECT progress FROM jobs WHERE id = ?", [job.id])[0]
            looks.append((time.time(), round((row["progress"] or 0) * FLOOD_TOTAL), own.events_offset(job.id, 1)))
            stop.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    shown: list[tuple[float, int]] = []  # (status --json's exit, UNIX s; the event index it showed)
    status = [sys.executable, "-m", "torchbearer", "status", "--json"]
    try:
        while store.job(job.id).state == "running":
            out = subprocess.run(status, env=project_env(project), capture_output=True, check=True).stdout
            row = next(r for r in json.loads(out)["jobs"] if r["id"] == job.id)
            if row["state"] == "running" and row["progress"]:
                shown.append((time.time(), round(row["progress"] * FLOOD_TOTAL)))
        size = events.stat().st_size
        wait_until(lambda: store.events_offset(job.id, 1) >= size, 60, "the last event to be ingested")
        after, wall = daemon.cpu_times(), time.monotonic() - start
    finally:
        stop.set()
        watcher.join()
    written: dict[int, float] = {}
    with open(events, "rb") as file:
        for line in file:
            event = json.loads(line)
            if event.get("type") == "progress" and event.get("total") == FLOOD_TOTAL:
                written[int(event["done"])] = event["t"]
    first, last = min(written.values()), max(written.values())
    lags = [when - written[i] for when, i, _ in looks if i in written and when <= last]
    all_in = next(when for when, _, offset in looks if offset >= size) if looks[-1][2] >= size else time.time()
    status_lags = [when - written[i] for when, i in shown if i in written]
    return {
        "event_lag_s": statistics.median(lags), "lag_samples": len(lags), "events": len(written),
        "status_lag_s": statistics.median(status_lags) if status_lags else float("nan"),
        "status_samples": len(status_lags), "events_per_s": len(written) / (all_in - first), "events_mb": size / 1e6,
        "ingest_cpu_share": ((after.user - before.user) + (after.system - before.system)) / wall,
    }  # fmt: skip


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


def user_env(project: Path) -> dict[str, str]:
    """A user's environment for ``status``: this project, no env file, and nothing of the benchmark's own (no
    ``PYTHONPATH`` to the repository for the probe kind, no ``PYTHONPYCACHEPREFIX``: each adds about 0.025 s to
    every start here, which an installed torchbearer does not pay); the bytecode cache on, as Python's default
    (the sandbox's ``PYTHONDONTWRITEBYTECODE`` removed)."""
    drop = {"PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PYTHONPYCACHEPREFIX", "TORCHBEARER_PLUGINS"}
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    return {**environ, "TORCHBEARER_PROJECT": str(project), "TORCHBEARER_ENV_FILE": str(project / "none.env")}


def measure_status(folder: Path, jobs: int, repeats: int) -> dict[str, float]:
    """Medians of ``status --json`` on a full store, on an empty one and of a bare Python, run in turns so a
    busy machine weighs on all three alike, in a user's environment (:func:`user_env`)."""
    status = [sys.executable, "-m", "torchbearer", "status", "--json"]
    full, empty = folder / "full", folder / "empty"
    fill_store(full / "state" / "torchbearer.db", jobs)
    runs = {"full": (status, user_env(full)), "empty": (status, user_env(empty)),
            "python": ([sys.executable, "-c", "pass"], user_env(empty))}  # fmt: skip
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
    parser.add_argument("--flood-s", type=float, default=10.0)
    args = parser.parse_args()
    began = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="tb-bench-") as tmp:
        project = Path(tmp) / "project"
        (project / "queue").mkdir(parents=True)
        daemon = start_daemon(project)
        try:
            latencies = measure_pickup(project, args.drops)
            idle = measure_idle(daemon, args.idle_s)
            flood = measure_events(project, daemon, args.flood_s)
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
    print(f"events: {flood['events']:,} progress events ({flood['events_mb']:.0f} MB) in {args.flood_s:.0f} s; "
          f"on the job's row (what status --json reads) after a median {flood['event_lag_s']:.3f} s over "
          f"{flood['lag_samples']} looks; through `status --json` as a child, to its exit: median "
          f"{flood['status_lag_s']:.3f} s over {flood['status_samples']} runs "
          f"(bar < {BARS['event_lag_s']} s); {flood['events_per_s']:,.0f} events/s ingested "
          f"(bar ≥ {MIN_EVENTS_PER_S:,}); daemon CPU {flood['ingest_cpu_share']:.3f} of a core meanwhile "
          f"(bar < {BARS['ingest_cpu_share']})")  # fmt: skip
    figures = {"pickup_median_s": round(pickup, 4), "status_10k_s": round(status["status_10k_s"], 4),
               "idle_cpu_share": round(idle, 5), "event_lag_s": round(flood["event_lag_s"], 4),
               "events_per_s": round(flood["events_per_s"]),
               "ingest_cpu_share": round(flood["ingest_cpu_share"], 4)}  # fmt: skip
    for name, bar in BARS.items():
        print(f"{name}: {'PASS' if figures[name] < bar else 'FAIL'} ({figures[name]} vs < {bar})")
    ok = figures["events_per_s"] >= MIN_EVENTS_PER_S
    print(f"events_per_s: {'PASS' if ok else 'FAIL'} ({figures['events_per_s']} vs ≥ {MIN_EVENTS_PER_S})")
    print(f"benchmark wall time: {time.monotonic() - began:.0f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
