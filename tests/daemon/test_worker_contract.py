"""The worker contract (``runs.py``, ``daemon/contract.py``): the daemon is the store's one writer; a worker reads
its run folder and reports by appending events and writing its outcome there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.cli.conftest import tb
from tests.conftest import wait_state, write_job
from tests.daemon.conftest import job_named, probe
from torchbearer import runs
from torchbearer.daemon import contract
from torchbearer.joblog import MAX_MARKS
from torchbearer.store import NewJob, Store
from torchbearer.tui.poller import Poller


def _store_files_open(pid: int, state_path: Path) -> list[str]:
    """The files of the state database (``.db``, ``-wal``, ``-shm``) that process ``pid`` holds open."""
    found = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(state_path)):
                found.append(target)
    except OSError:
        pass
    return found


def test_a_worker_never_opens_the_store_and_its_reports_still_reach_status(project, store, daemon):
    write_job(project.queue_dir, "p.yaml", probe("p", steps=12, step_s=0.1))
    job = wait_state(store, job_named(store, "p").id, "running")
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:  # every few ms while it runs: the old worker held its connection for its whole life
        while not done.is_set():
            current = store.job(job.id)
            if current is not None and current.pid:
                seen.extend(_store_files_open(current.pid, project.state_path))
            done.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        job = wait_state(store, job.id, "succeeded")
    finally:
        done.set()
        watcher.join()
    assert seen == []
    status = subprocess.run([sys.executable, "-m", "torchbearer", "status", "--json"], capture_output=True,
                            text=True, env=os.environ, cwd=project.project_dir, check=True).stdout  # fmt: skip
    (row,) = [r for r in json.loads(status)["jobs"] if r["id"] == job.id]
    assert row["state"] == "succeeded" and row["progress"] == 1.0
    last = store.latest_progress(job.id)
    assert (last["stage"], last["done"], last["total"]) == ("probing", 12, 12)
    assert [m["step"] for m in store.metrics(job.id, "probe/value")] == list(range(1, 13))
    assert [Path(o["path"]).name for o in store.outputs(job.id, "result")] == ["result.txt"]
    assert store.attempts(job.id)[0]["outcome"] == "succeeded"
    assert runs.read_outcome(Path(job.run_dir), 1)["outcome"] == "succeeded"
    assert not runs.events_path(Path(job.run_dir), 1).exists()  # all in the store: the run folder keeps no flood
    written = runs.read_job_file(Path(job.run_dir))
    assert (written["id"], written["kind"], written["attempt"], written["spec"]["steps"]) == (job.id, "probe", 1, 12)


def test_the_warnings_a_worker_logs_reach_show_as_log_markers(project, store, daemon):
    write_job(project.queue_dir, "w.yaml", probe("w", steps=1, warn=MAX_MARKS + 5))
    job = wait_state(store, job_named(store, "w").id, "succeeded")
    marks = store.log_marks(job.id)
    assert len(marks) == MAX_MARKS + 1  # the first ones, then one saying how many more the log holds
    first, last = marks[0], marks[-1]
    assert (first["attempt"], first["level"], first["logger"]) == (1, "warning", "tests.kinds.probe")
    assert first["message"] == f"probe warning 1 of {MAX_MARKS + 5}"  # its first line: the log has the rest
    assert last["message"] == "6 more warnings or errors not marked: see log.txt"
    shown = json.loads(tb("show", "--json", str(job.id)).stdout)["warnings"]
    assert shown[0] == f"attempt 1 logged: probe warning 1 of {MAX_MARKS + 5}"
    assert shown[-1] == "attempt 1 logged: 6 more warnings or errors not marked: see log.txt"
    poller = Poller(project)  # the dashboard's job view lists them too
    poller.focus_job = job.id
    assert poller.poll().detail.warnings == tuple(shown)


def _events(path: Path, lines: list[str]) -> None:
    with open(path, "ab") as file:
        file.write("".join(lines).encode())


def test_coalescing_keeps_every_stage_and_the_end_of_each(tmp_path):
    """Only a progress event followed by one of its own stage goes; a stage's last event, and its end, stay."""
    path = tmp_path / "events-1.jsonl"
    writer = runs.EventWriter(path)
    for stage, done, total in [("preparing data", 1, 2), ("preparing data", 2, 2), ("training", 1, 4),
                               ("training", 4, 4), ("training", 1, 4), ("validating", 1, 3), ("chipping", 5, 9),
                               ("training", 2, 4), ("training", 3, 4)]:  # fmt: skip
        writer.append(runs.PROGRESS, stage=stage, done=done, total=total)
    writer.close()
    kept = [(e["stage"], e["done"]) for e in runs.read_events(path, 0).events]
    assert kept == [("preparing data", 2), ("training", 4), ("training", 1), ("validating", 1), ("chipping", 5),
                    ("training", 3)]  # fmt: skip


def test_ingest_skips_a_torn_line_coalesces_progress_and_never_repeats(tmp_path):
    store = Store(tmp_path / "state.db")
    (job_id,) = store.add_jobs([NewJob("j", "probe", {}, {"name": "j", "kind": "probe"})])
    store.transition(job_id, "running")
    attempt = store.start_attempt(job_id, pid=None, slot="")
    run_dir = tmp_path / "runs" / f"{job_id}-j"
    run_dir.mkdir(parents=True)
    path = runs.events_path(run_dir, attempt)
    writer = runs.EventWriter(path)
    for done in range(1, 101):  # a burst of progress: only the last of the run reaches the tables
        writer.append(runs.PROGRESS, stage="training", done=done, total=200, unit="steps")
    writer.append(runs.METRICS, values={"train/loss": 0.5}, step=1)
    writer.close()
    _events(path, ['{"type": "metrics", "t": 1.0, "values": {"train/loss": 0.'])  # torn: still being written
    assert contract.ingest(store, job_id, attempt, run_dir) == 101
    assert [m["value"] for m in store.metrics(job_id)] == [0.5]
    assert len(store.query("SELECT * FROM progress WHERE job_id = ?", [job_id])) == 1
    assert store.job(job_id).progress == 0.5 and store.latest_progress(job_id)["done"] == 100
    assert contract.ingest(store, job_id, attempt, run_dir) == 0  # nothing complete is new
    _events(path, ['25}, "step": 2}\n'])  # the line completed
    assert contract.ingest(store, job_id, attempt, run_dir) == 1
    again = Store(store.path)  # a restarted daemon: reads on from the offset kept with the rows
    assert contract.ingest(again, job_id, attempt, run_dir) == 0
    assert [(m["value"], m["step"]) for m in again.metrics(job_id)] == [(0.5, 1), (0.25, 2)]
    # the worker ended, killed while writing a last line: the rest is read, the torn line dropped, the file gone
    _events(path, ['{"type": "metrics", "t": 2.0, "values": {"train/loss": 0.125}, "step": 3}\n', '{"type": "me'])
    assert contract.ingest_to_end(again, job_id, attempt, run_dir) == 1 and not path.exists()
    assert [m["step"] for m in again.metrics(job_id)] == [1, 2, 3]
    assert contract.ingest_to_end(again, job_id, attempt, run_dir) == 0  # a second settle: nothing, no error


def test_submit_events_queue_each_spawned_job_once(project, store):
    (parent,) = store.add_jobs([NewJob("sw", "sweep", {}, {"name": "sw", "kind": "sweep", "metric": "m"})])
    store.transition(parent, "running")
    attempt = store.start_attempt(parent, pid=None, slot="")
    run_dir = project.runs_dir / f"{parent}-sw"
    writer = runs.EventWriter(runs.events_path(run_dir, attempt))
    trial = {"name": "sw-1", "kind": "probe", "steps": 2}
    writer.append(runs.SUBMIT, job=trial)
    writer.append(runs.SUBMIT, job=trial)  # asked twice (a restarted controller): queued once
    writer.append(runs.SUBMIT, job={"name": "sw-2", "kind": "probe", "steps": -1})  # invalid: logged, skipped
    writer.close()
    contract.ingest(store, parent, attempt, run_dir)
    contract.write_children(store, store.job(parent), run_dir)
    (child,) = [job for job in store.jobs() if job.id != parent]
    assert (child.name, child.source, child.spec["steps"]) == ("sw-1", f"spawned by #{parent}", 2)
    children = runs.read_json(run_dir / runs.CHILDREN_FILE)["jobs"]
    assert children == {"sw-1": {"id": child.id, "state": "queued", "reason": None, "outputs": [],
                                 "metrics": {"m": []}}}  # fmt: skip


def test_a_plot_job_draws_curves_from_what_the_daemon_wrote_into_its_run_folder(project, store, daemon):
    """The plot worker gets the metrics of the job it draws from ``job.json`` (``refs``), not from the store."""
    (trained,) = store.add_jobs([NewJob("trained", "probe", {}, {"name": "trained", "kind": "probe"})])
    for step, loss in enumerate([0.9, 0.6, 0.4], start=1):
        store.add_metrics(trained, {"val/loss": loss}, attempt=1, step=step)
    store.transition(trained, "running")
    store.transition(trained, "succeeded")
    write_job(project.queue_dir, "look.yaml", "name: look\nkind: plot\ncurves: trained\n")
    look = wait_state(store, job_named(store, "look").id, {"succeeded", "failed"}, timeout=60)
    assert look.state == "succeeded", (look.reason, Path(look.run_dir, "log.txt").read_text()[-2000:])
    refs = runs.read_job_file(Path(look.run_dir))["refs"]
    assert [m["value"] for m in refs["trained"]["metrics"]] == [0.9, 0.6, 0.4]
    plots = [Path(o["path"]) for o in store.outputs(look.id, "plot")]
    assert [p.name for p in plots] == ["curves_loss.png"] and plots[0].parent == Path(look.run_dir)


def test_the_worker_side_does_not_even_import_the_store():
    """The worker, its context and every built-in kind load without ``store.py`` (nor commands or ingest, which
    write it): a worker cannot reach the database by accident."""
    script = (
        "import sys, torchbearer.worker, torchbearer.context, torchbearer.sweeps.trials\n"
        "from torchbearer.jobs import get_kind\n"
        "for kind in ('train', 'predict', 'download', 'classify', 'sweep', 'prepare', 'plot', 'explain'):\n"
        "    get_kind(kind)\n"
        "print([m for m in ('torchbearer.store', 'torchbearer.commands', 'torchbearer.ingest') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_resumed_attempt_supersedes_what_earlier_ones_logged_from_its_epoch_on(tmp_path):
    store = Store(tmp_path / "state.db")
    (job_id,) = store.add_jobs([NewJob("j", "probe", {}, {"name": "j", "kind": "probe"})])
    # Attempt 1: epochs 0 and 1 validated (8 steps each), killed before epoch 1's end reached last.ckpt.
    first = [{"type": "metrics", "t": 1.0, "values": {"train/loss_step": 0.9}, "step": 4, "epoch": 0},
             {"type": "metrics", "t": 2.0, "values": {"val/iou": 0.5}, "step": 8, "epoch": 0},
             {"type": "metrics", "t": 3.0, "values": {"train/loss_step": 0.7}, "step": 12, "epoch": 1},
             {"type": "metrics", "t": 4.0, "values": {"val/iou": 0.9}, "step": 16, "epoch": 1}]  # fmt: skip
    store.ingest_events(job_id, 1, first, 100)
    # Attempt 2 resumed from the checkpoint of epoch 0's end (step 8) and redid epoch 1. Lightning reports such a
    # restored run as in epoch 0 still: epoch 0's validation, at step 8, is the checkpoint's and stays.
    second = [{"type": "resumed", "t": 5.0, "epoch": 0, "step": 8},
              {"type": "metrics", "t": 6.0, "values": {"val/iou": 0.6}, "step": 16, "epoch": 1}]  # fmt: skip
    store.ingest_events(job_id, 2, second, 200)
    rows = [(m["attempt"], m["name"], m["epoch"], m["value"]) for m in store.metrics(job_id)]
    assert rows == [(1, "train/loss_step", 0, 0.9), (1, "val/iou", 0, 0.5), (2, "val/iou", 1, 0.6)]
    assert store.metric_extremes([job_id])[job_id]["val/iou"] == (0.6, 0.5), "no best that no weights hold"
