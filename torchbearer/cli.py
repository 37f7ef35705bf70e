"""The ``torchbearer`` command.

Every command that changes state goes through the store (:mod:`torchbearer.commands`), so it works whether
or not the daemon runs. Nothing here imports torch: ``status`` over 10 000 jobs must answer in a blink.
JSON output has a versioned shape, documented in ``docs/cli.md``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from torchbearer import commands
from torchbearer.formatting import STATE_STYLES, format_duration
from torchbearer.imagery import cli as imagery_cli
from torchbearer.redact import register_settings, scrub_logging
from torchbearer.settings import Settings, SettingsError
from torchbearer.store import TERMINAL_STATES, JobState, Store, StoreError

STATUS_JSON_VERSION = 1
STATUS_ROWS_PENDING = 30
STATUS_ROWS_FINISHED = 20

app = typer.Typer(
    name="torchbearer",
    help="Queue daemon for Sentinel-2 segmentation jobs: drop YAML job files in queue/, watch the dashboard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


# -- settings for every command ------------------------------------------------------------------------------


@app.callback()
def main(
    ctx: typer.Context,
    project: Annotated[Path | None, typer.Option(help="Project folder (default: $TORCHBEARER_PROJECT or .)")] = None,
    queue: Annotated[Path | None, typer.Option(help="Queue folder (default: <project>/queue)")] = None,
    state: Annotated[Path | None, typer.Option(help="State database (default: <project>/state/torchbearer.db)")] = None,
    runs: Annotated[Path | None, typer.Option(help="Run folders (default: <project>/runs)")] = None,
    data: Annotated[Path | None, typer.Option(help="Data root and scene cache (default: <project>/data)")] = None,
    devices: Annotated[str | None, typer.Option(help="GPU ids, one job slot each, e.g. 0,1")] = None,
) -> None:
    try:
        ctx.obj = Settings.load(project, queue_dir=queue, state_path=state, runs_dir=runs, data_dir=data,
                                devices=devices)  # fmt: skip
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    register_settings(ctx.obj)  # every message this process prints or stores is scrubbed of them


def _store(ctx: typer.Context) -> Store:
    settings: Settings = ctx.obj
    try:
        return Store(settings.state_path)
    except StoreError as exc:
        raise fail(str(exc)) from None


def _run_command(action, *args) -> None:
    try:
        result = action(*args)
    except commands.CommandError as exc:
        raise fail(str(exc)) from None
    console.print(result.message if isinstance(result, commands.CommandResult) else result, highlight=False)


def _setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=True)],
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    scrub_logging()


# -- the daemon --------------------------------------------------------------------------------------------


@app.command()
def daemon(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging")] = False,
    executor: Annotated[
        str | None, typer.Option(help="Where workers run: local or slurm (default: $TORCHBEARER_EXECUTOR or local)")
    ] = None,
) -> None:
    """Run the daemon in the foreground: watch the queue folder and run jobs one by one."""
    from torchbearer.daemon.engine import Engine, QueueLockedError

    _setup_logging(verbose)
    settings: Settings = ctx.obj
    executor = executor or settings.executor
    devices = ",".join(settings.devices)
    if not devices and executor == "local":  # on a cluster, Slurm picks the GPUs
        from torchbearer.gpu import gpu_ids

        devices = ",".join(gpu_ids())
    try:
        settings = Settings.load(settings.project_dir, queue_dir=settings.queue_dir, runs_dir=settings.runs_dir,
                                 data_dir=settings.data_dir, state_path=settings.state_path, devices=devices,
                                 executor=executor)  # fmt: skip
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    try:
        Engine(settings).run()
    except (QueueLockedError, SettingsError, StoreError) as exc:
        raise fail(str(exc)) from None


def start_daemon_background(settings: Settings) -> int | None:
    """Start ``torchbearer daemon`` detached (own session, log in the state folder) unless one is alive.

    Returns the new daemon's pid, or None if one was already running.
    """
    settings.ensure_dirs()
    if Store(settings.state_path).daemon_info()["alive"]:
        return None
    log_path = settings.state_path.parent / "daemon.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "torchbearer", "daemon"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **settings.as_environ()}, cwd=settings.project_dir,
        )  # fmt: skip
    return process.pid


@app.command()
def tui(ctx: typer.Context) -> None:
    """Open the dashboard (works whether or not the daemon runs)."""
    from torchbearer.tui.app import TorchbearerApp

    TorchbearerApp(ctx.obj).run()


@app.command()
def up(
    ctx: typer.Context,
    demo: Annotated[Path | None, typer.Option(help="Submit this job file first if the store has no jobs yet")] = None,
    no_tui: Annotated[bool, typer.Option("--no-tui", help="Only start the daemon")] = False,
) -> None:
    """Start the daemon in the background (unless one runs), then open the dashboard."""
    settings: Settings = ctx.obj
    store = _store(ctx)
    if demo is not None and not store.counts_by_state():
        from torchbearer.ingest import submit_file
        from torchbearer.spec import JobFileError, PathRules

        try:
            ids = submit_file(demo, settings.queue_dir, store, paths=PathRules.of(settings))
        except JobFileError as exc:
            raise fail(str(exc)) from None
        console.print(f"submitted the demo {demo}: jobs {', '.join(f'#{i}' for i in ids)}")
    pid = start_daemon_background(settings)
    log_path = settings.state_path.parent / "daemon.log"
    console.print(f"daemon started (pid {pid}, log {log_path})" if pid else "daemon already running")
    if not no_tui:
        tui(ctx)


# -- job files ---------------------------------------------------------------------------------------------


@app.command()
def validate(ctx: typer.Context, files: Annotated[list[Path], typer.Argument(help="Job files to check")]) -> None:
    """Check job files without queueing them; exit 1 if any is refused."""
    from torchbearer.spec import JobFileError, PathRules, load_job_file

    bad = 0
    for path in files:
        try:
            jobs = load_job_file(path, paths=PathRules.of(ctx.obj))
        except JobFileError as exc:
            bad += 1
            err.print(f"[red]✗[/] {exc}", highlight=False)
            continue
        names = ", ".join(f"{j.spec.name} ({j.spec.kind})" for j in jobs)
        console.print(f"[green]✓[/] {path}: {len(jobs)} job{'s' if len(jobs) != 1 else ''}: {names}", highlight=False)
    if bad:
        raise typer.Exit(1)


@app.command()
def submit(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Job files to queue")],
    held: Annotated[bool, typer.Option("--held", help="Queue them held (release to run)")] = False,
) -> None:
    """Validate job files and queue them through the store (the daemon need not run)."""
    from torchbearer.ingest import submit_file
    from torchbearer.spec import JobFileError, PathRules
    from torchbearer.store import DependencyError

    settings: Settings = ctx.obj
    store = _store(ctx)
    bad = 0
    for path in files:
        try:
            ids = submit_file(path, settings.queue_dir, store, held=held, paths=PathRules.of(settings))
        except (JobFileError, DependencyError) as exc:
            bad += 1
            err.print(f"[red]✗[/] {exc}", highlight=False)
            continue
        console.print(f"[green]✓[/] {path}: queued {', '.join(f'#{i}' for i in ids) or 'a schedule'}", highlight=False)
    if not store.daemon_info()["alive"]:
        err.print("[yellow]note:[/] no daemon is running; start one with `torchbearer daemon`")
    if bad:
        raise typer.Exit(1)


# -- looking -----------------------------------------------------------------------------------------------


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    moment = datetime.fromtimestamp(ts)
    return moment.strftime("%H:%M:%S" if moment.date() == datetime.now().date() else "%m-%d %H:%M")


def status_document(store: Store) -> dict[str, Any]:
    """The ``status --json`` document without its ``jobs`` array (see :func:`status_json`)."""
    daemon_info = store.daemon_info()
    paused = store.queue_paused()
    return {
        "format": "torchbearer.status",
        "version": STATUS_JSON_VERSION,
        "generated_at": time.time(),
        "daemon": {
            "alive": daemon_info["alive"],
            "pid": daemon_info.get("pid"),
            "host": daemon_info.get("host"),
            "started_at": daemon_info.get("started_at"),
            "heartbeat_at": daemon_info.get("heartbeat_at"),
        },
        "queue": {
            "paused": paused is not None,
            "pause_reason": paused["reason"] if paused else None,
            "counts": store.counts_by_state(),
        },
    }


def status_json(store: Store) -> str:
    """The ``status --json`` text (shape version :data:`STATUS_JSON_VERSION`, see docs/cli.md)."""
    head = json.dumps(status_document(store), separators=(",", ":"))
    return f'{head[:-1]},"jobs":{store.job_summaries_json()}}}'


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (see docs/cli.md)")] = False,
    show_all: Annotated[bool, typer.Option("--all", "-a", help="Every job, not only recent and pending")] = False,
    state: Annotated[list[str] | None, typer.Option("--state", "-s", help="Only jobs in these states")] = None,
) -> None:
    """The queue: daemon, pause state, and jobs."""
    store = _store(ctx)
    if as_json:
        sys.stdout.write(status_json(store) + "\n")
        return
    from rich.table import Table

    info = store.daemon_info()
    paused = store.queue_paused()
    header = "[green]daemon up[/]" if info["alive"] else "[red]daemon down[/]"
    header += f"  queue [yellow]paused[/] ({paused['reason']})" if paused else "  queue running"
    console.print(header)
    rows = store.job_summaries(states=state)
    hidden = 0
    if not show_all:  # running first, then the next pending and the latest finished: a screenful
        running = [r for r in rows if r["state"] == JobState.RUNNING]
        pending = [r for r in rows if r["state"] not in TERMINAL_STATES and r["state"] != JobState.RUNNING]
        finished = [r for r in rows if r["state"] in TERMINAL_STATES]
        shown = running + pending[:STATUS_ROWS_PENDING] + finished[-STATUS_ROWS_FINISHED:]
        hidden = len(rows) - len(shown)
        rows = sorted(shown, key=lambda r: r["id"])
    table = Table(box=None, header_style="bold")
    for column in ("id", "name", "kind", "state", "stage", "progress", "eta", "prio", "started", "duration"):
        table.add_column(column, justify="right" if column in ("id", "progress", "prio") else "left")
    now = time.time()
    for row in rows:
        duration = (row["finished_at"] or now) - row["started_at"] if row["started_at"] else None
        table.add_row(
            str(row["id"]), row["name"], row["kind"],
            f"[{STATE_STYLES.get(row['state'], '')}]{row['state']}[/]",
            row["stage"] or "", f"{row['progress'] * 100:.0f}%" if row["progress"] is not None else "",
            format_duration(row["eta_s"]) if row["state"] == JobState.RUNNING else "", str(row["priority"]),
            _when(row["started_at"]), format_duration(duration),
        )  # fmt: skip
    console.print(table)
    if hidden:
        console.print(f"… {hidden} more (--all shows every job, --state filters)", style="dim")
    counts = store.counts_by_state()
    console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no jobs yet", style="dim")


def _job_or_exit(store: Store, ref: str):
    job = store.find_job(ref)
    if job is None:
        raise fail(f"no job {ref!r} (give an id such as 12 or a job name)")
    return job


@app.command()
def show(
    ctx: typer.Context,
    job_ref: Annotated[str, typer.Argument(metavar="JOB", help="Job id or name")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One job: state, history, attempts, spec, latest progress, metrics and outputs."""
    store = _store(ctx)
    job = _job_or_exit(store, job_ref)
    document = {
        "format": "torchbearer.job", "version": STATUS_JSON_VERSION,
        "job": {k: v for k, v in job.__dict__.items()},
        "transitions": store.transitions(job.id), "attempts": store.attempts(job.id),
        "progress": store.latest_progress(job.id), "outputs": store.outputs(job.id),
        "metrics": {name: store.metrics(job.id, name)[-1]["value"] for name in store.metric_names(job.id)},
    }  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps(document, default=str) + "\n")
        return
    import yaml

    style = STATE_STYLES.get(job.state, "")
    console.print(f"[bold]{job.name}[/] #{job.id}  {job.kind}  [{style}]{job.state}[/]", highlight=False)
    if job.reason:
        console.print(f"reason: {job.reason}", highlight=False)
    console.print(f"run folder: {job.run_dir or '(not started)'}   attempts: {job.attempts}", highlight=False)
    for t in document["transitions"]:
        console.print(f"  {_when(t['time'])}  {t['from_state'] or '—'} → {t['to_state']}  {t['reason'] or ''}",
                      highlight=False, style="dim")  # fmt: skip
    if document["metrics"]:
        console.print("metrics: " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(document["metrics"].items())))
    for output in document["outputs"]:
        console.print(f"  {output['kind']}: {output['path']}", highlight=False)
    _show_report(document["outputs"])
    if job.error_tail:
        console.rule("end of the log")
        console.print(job.error_tail, highlight=False, markup=False)
    console.rule("spec")
    console.print(yaml.safe_dump(job.spec, sort_keys=False).rstrip(), highlight=False, markup=False)


def _show_report(outputs: list[dict]) -> None:
    """One line of a training's evaluation report (report.json among the outputs), when there is one."""
    from torchbearer.ml.report_summary import report_summary

    summary = report_summary(outputs)
    if summary:
        console.print(summary, highlight=False)


@app.command()
def logs(
    ctx: typer.Context,
    job_ref: Annotated[str, typer.Argument(metavar="JOB", help="Job id or name")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines from the end to start with")] = 50,
) -> None:
    """Print a job's log (the end of it), optionally following it."""
    from torchbearer.daemon.supervisor import read_tail

    settings: Settings = ctx.obj
    store = _store(ctx)
    job = _job_or_exit(store, job_ref)
    path = Path(job.run_dir) / "log.txt" if job.run_dir else settings.runs_dir / f"{job.id}-{job.name}" / "log.txt"
    if not path.exists() and not follow:
        raise fail(f"{job.name} (#{job.id}) has no log yet ({path})")
    if path.exists():
        print(read_tail(path, lines, max_bytes=max(64 * 1024, lines * 400)))
    if not follow:
        return
    position = path.stat().st_size if path.exists() else 0
    try:
        while True:
            chunk = b""
            if path.exists():
                if path.stat().st_size < position:  # cut back by the log cap
                    position = 0
                with open(path, "rb") as file:
                    file.seek(position)
                    chunk = file.read()
                    position = file.tell()
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
            current = store.job(job.id)
            if not chunk and (current is None or current.state in TERMINAL_STATES):
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


# -- changing jobs and the queue ------------------------------------------------------------------------------

JobArg = Annotated[str, typer.Argument(metavar="JOB", help="Job id or name")]


@app.command()
def cancel(ctx: typer.Context, job_ref: JobArg) -> None:
    """Cancel a job (a running one gets SIGTERM, then SIGKILL after the grace period)."""
    _run_command(commands.cancel, _store(ctx), job_ref)


@app.command()
def retry(ctx: typer.Context, job_ref: JobArg) -> None:
    """Queue a failed, cancelled or dependency-failed job again."""
    _run_command(commands.retry, _store(ctx), job_ref)


@app.command()
def hold(ctx: typer.Context, job_ref: JobArg) -> None:
    """Keep a pending job from starting."""
    _run_command(commands.hold, _store(ctx), job_ref)


@app.command()
def release(ctx: typer.Context, job_ref: JobArg) -> None:
    """Let a held job run."""
    _run_command(commands.release, _store(ctx), job_ref)


@app.command()
def priority(
    ctx: typer.Context,
    job_ref: JobArg,
    value: Annotated[int, typer.Argument(metavar="N", help="Higher runs first (-1000..1000)")],
) -> None:
    """Set a pending job's priority."""
    _run_command(commands.set_priority, _store(ctx), job_ref, value)


@app.command()
def pause(ctx: typer.Context) -> None:
    """Pause the queue: the running job finishes, nothing new starts."""
    _run_command(commands.pause, _store(ctx))


@app.command()
def resume(ctx: typer.Context) -> None:
    """Resume the queue."""
    _run_command(commands.resume, _store(ctx))


@app.command()
def schedules(ctx: typer.Context) -> None:
    """Recurring jobs (``schedule:`` in a job file): cron, next firing, last firing."""
    from apscheduler.triggers.cron import CronTrigger
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("id", "name", "cron", "enabled", "next", "last fired", "source"):
        table.add_column(column)
    now = datetime.now().astimezone()
    for row in _store(ctx).schedules(enabled_only=False):
        upcoming = CronTrigger.from_crontab(row["cron"]).get_next_fire_time(None, now) if row["enabled"] else None
        table.add_row(
            str(row["id"]), row["name"], row["cron"], "yes" if row["enabled"] else "no",
            upcoming.strftime("%m-%d %H:%M") if upcoming else "", _when(row["last_fired_at"]), row["source"] or "",
        )  # fmt: skip
    console.print(table if table.row_count else "no schedules")


@app.command()
def unschedule(
    ctx: typer.Context,
    schedule_id: Annotated[int, typer.Argument(metavar="ID", help="Schedule id (see `schedules`)")],
    enable: Annotated[bool, typer.Option("--enable", help="Arm it again instead")] = False,
) -> None:
    """Disarm a recurring job (or arm it again with --enable)."""
    _run_command(commands.set_schedule_enabled, _store(ctx), schedule_id, enable)


# -- foreground runs ---------------------------------------------------------------------------------------


def _waits_outside(store: Store, ids: list[int]) -> str | None:
    """Which job of a foreground run waits on a pending job the run does not include (None if none does).

    Only the run's own jobs run, so such a job would wait forever.
    """
    own = set(ids)
    for job in store.jobs(ids=ids):
        outside = [d for d in store.jobs(ids=[i for i in job.after if i not in own]) if not d.is_terminal]
        if outside:
            names = ", ".join(f"{d.name} (#{d.id}, {d.state})" for d in outside)
            return f"{job.name} (#{job.id}) waits for {names}, which this run does not include"
    return None


def run_in_foreground(settings: Settings, files: list[Path], *, kinds: set[str] | None = None) -> None:
    """Queue the files' jobs and run them here, with rich progress bars, until each has ended."""
    from torchbearer.daemon.engine import Engine, QueueLockedError
    from torchbearer.ingest import submit_file
    from torchbearer.progress import ForegroundProgress
    from torchbearer.spec import JobFileError, PathRules, load_job_file
    from torchbearer.store import DependencyError

    store = Store(settings.state_path)
    if store.daemon_info()["alive"]:
        raise fail("a daemon is serving this queue; use `torchbearer submit` and watch with `torchbearer tui`")
    ids: list[int] = []
    rules = PathRules.of(settings)
    for path in files:
        try:
            if kinds is not None:
                wrong = [j.spec.name for j in load_job_file(path, paths=rules) if j.spec.kind not in kinds]
                if wrong:
                    raise fail(f"{path}: {', '.join(wrong)} not of kind {'/'.join(sorted(kinds))}", 2)
            ids += submit_file(path, settings.queue_dir, store, paths=rules)
        except (JobFileError, DependencyError) as exc:
            raise fail(str(exc), 2) from None
    blocked = _waits_outside(store, ids)
    if blocked:
        raise fail(f"{blocked}: it could never start here (the jobs stay queued for a daemon)")
    _setup_logging()
    with ForegroundProgress(store, ids, console=err) as display:
        engine = Engine(settings, watch=False, only_ids=set(ids), on_tick=lambda _e: display.refresh())
        try:
            engine.run()
        except QueueLockedError as exc:
            raise fail(str(exc)) from None
    jobs = store.jobs(ids=ids)
    for job in jobs:
        style = STATE_STYLES.get(job.state, "")
        console.print(f"{job.name} (#{job.id}): [{style}]{job.state}[/] {job.reason or ''}", highlight=False)
    if any(job.state != JobState.SUCCEEDED for job in jobs):
        raise typer.Exit(1)


@app.command()
def run(ctx: typer.Context, files: Annotated[list[Path], typer.Argument(help="Job files to run")]) -> None:
    """Run job files in the foreground without a daemon (still recorded in the state store)."""
    run_in_foreground(ctx.obj, files)


@app.command()
def predict(ctx: typer.Context, files: Annotated[list[Path], typer.Argument(help="Predict job files")]) -> None:
    """Run ensemble-prediction job files in the foreground, with a progress bar."""
    run_in_foreground(ctx.obj, files, kinds={"predict"})


app.command("download")(imagery_cli.download)


if __name__ == "__main__":
    app()
