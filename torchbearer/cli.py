"""The ``torchbearer`` command.

Every command that changes state goes through the store (:mod:`torchbearer.commands`), so it works whether
or not the daemon runs. Nothing here imports torch: ``status`` over 10 000 jobs must answer in a blink.
JSON output has a versioned shape, documented in ``docs/cli.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from torchbearer import commands
from torchbearer.formatting import STATE_STYLES, format_duration
from torchbearer.imagery import cli as imagery_cli
from torchbearer.locations import Locations, SettingsError, locate
from torchbearer.prepare import cli as prepare_cli
from torchbearer.redact import register_settings, scrub_logging
from torchbearer.store import TERMINAL_STATES, JobState, Store, StoreError

if TYPE_CHECKING:
    from rich.console import Console

    from torchbearer.settings import Settings

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


class LazyConsole:
    """A rich ``Console`` made on first use: ``status --json`` prints without one, and importing rich's console
    is a sixth of that command's start-up. Attributes are the console's; :meth:`get` is the console itself,
    for the rich objects that take one."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None
        self._columns: str | None = None

    def get(self) -> Console:
        # A console fixes its width from $COLUMNS when made: a new one when that changed (commands run in one
        # process, as the tests run them, each see their own terminal).
        columns = os.environ.get("COLUMNS")
        if self._console is None or columns != self._columns:
            from rich.console import Console

            self._console, self._columns = Console(**self._options), columns
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


console = LazyConsole()
err = LazyConsole(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


# -- settings for every command ------------------------------------------------------------------------------

#: The locations of the running command (for :func:`entry_point`'s last-resort error).
_located: list[Locations] = []
#: Commands that need only the state database: they get :class:`Locations` as ``ctx.obj``, not the whole
#: :class:`Settings`, so pydantic is never imported and ``status`` over 10 000 jobs answers in a blink.
STORE_ONLY_COMMANDS = frozenset({"status"})


def _settings(where: Locations, devices: str | None) -> Settings:
    """The whole settings of a command, at ``where``; their credentials registered for scrubbing."""
    from torchbearer.settings import Settings

    try:
        settings = Settings.load(where.project_dir, queue_dir=where.queue_dir, state_path=where.state_path,
                                 runs_dir=where.runs_dir, data_dir=where.data_dir, devices=devices)  # fmt: skip
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    register_settings(settings)  # every message this process prints or stores is scrubbed of them
    return settings


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
        where = locate(project, queue_dir=queue, state_path=state, runs_dir=runs, data_dir=data)
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    _located.append(where)
    ctx.obj = where if ctx.invoked_subcommand in STORE_ONLY_COMMANDS else _settings(where, devices)


def _store(ctx: typer.Context) -> Store:
    where: Settings | Locations = ctx.obj
    try:
        return Store(where.state_path)
    except StoreError as exc:
        raise fail(str(exc)) from None


def _run_command(action, *args) -> None:
    try:
        result = action(*args)
    except commands.CommandError as exc:
        raise fail(str(exc)) from None
    console.print(result.message if isinstance(result, commands.CommandResult) else result, highlight=False)


def _setup_logging(verbose: bool = False) -> None:
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err.get(), show_path=False, rich_tracebacks=True)],
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
    detach: Annotated[bool, typer.Option("--detach", help="Run in the background; return once it answers")] = False,
) -> None:
    """Run the daemon in the foreground: watch the queue folder and run jobs one by one."""
    from torchbearer.daemon.engine import Engine, QueueLockedError
    from torchbearer.settings import Settings

    settings: Settings = ctx.obj
    if detach:
        _detach(settings, ["--executor", executor] if executor else [])
        return
    _setup_logging(verbose)
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


def _detach(settings: Settings, args: list[str]) -> None:
    from torchbearer.service import ServiceError, detach, log_path, pid_path

    try:
        pid = detach(settings, args)
    except ServiceError as exc:
        raise fail(str(exc)) from None
    console.print(f"daemon started (pid {pid}; pid file {pid_path(settings)}, log {log_path(settings)})",
                  highlight=False)  # fmt: skip


@app.command()
def stop(ctx: typer.Context) -> None:
    """Stop the daemon cleanly: running jobs save at a safe point and run again at the next start."""
    from torchbearer.service import ServiceError
    from torchbearer.service import stop as stop_daemon

    try:
        pid = stop_daemon(ctx.obj)
    except ServiceError as exc:
        raise fail(str(exc)) from None
    console.print(f"daemon (pid {pid}) stopped" if pid else "no daemon is running", highlight=False)


service_app = typer.Typer(help="Run the daemon as a systemd user service.", no_args_is_help=True)
app.add_typer(service_app, name="service")


@service_app.command("install")
def service_install(ctx: typer.Context) -> None:
    """Write a systemd user unit for this project's daemon (~/.config/systemd/user/) and say how to enable it."""
    from torchbearer.service import install_unit

    settings: Settings = ctx.obj
    path = install_unit(settings)
    console.print(f"wrote {path}\nenable it, and keep it running after you log out of SSH:\n"
                  f"  systemctl --user daemon-reload\n  systemctl --user enable --now {path.name}\n"
                  "  loginctl enable-linger $USER", highlight=False)  # fmt: skip


def start_daemon_background(settings: Settings) -> int | None:
    """Start ``torchbearer daemon`` detached (own session, log in the state folder) unless one is alive.

    Returns the new daemon's pid, or None if one was already running.
    """
    import subprocess

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


def _job_ids(text: str | None) -> list[int]:
    """``"3,5,7"`` as ``[3, 5, 7]``; a clear error for anything else."""
    if not text:
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise fail(f"--compare takes job ids separated by commas, e.g. 3,5,7 (got {text!r})", 2) from None


@app.command()
def tui(
    ctx: typer.Context,
    compare: Annotated[
        str | None, typer.Option(help="Open the run comparison of these job ids (e.g. 3,5,7) straight away")
    ] = None,
) -> None:
    """Open the dashboard (works whether or not the daemon runs)."""
    from torchbearer.tui.app import TorchbearerApp

    TorchbearerApp(ctx.obj, compare=_job_ids(compare)).run()


#: Addresses ``torchbearer web`` listens on without ``--public``: this machine only.
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@app.command()
def web(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Address to listen on; another than 127.0.0.1 needs --public")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    public: Annotated[
        bool, typer.Option("--public", help="Allow an address other machines reach (anyone there can cancel jobs)")
    ] = False,
    public_url: Annotated[
        str | None, typer.Option(help="The URL browsers use, when it is not http://HOST:PORT (a proxy, say)")
    ] = None,
) -> None:
    """Serve the dashboard in a browser (textual-serve): each browser tab runs its own `torchbearer tui`."""
    settings: Settings = ctx.obj
    if host not in LOCAL_HOSTS and not public:
        raise fail(f"--host {host} would let anyone who reaches port {port} cancel and submit jobs; "
                   "add --public to do so anyway (or use an SSH tunnel to 127.0.0.1)", 2)  # fmt: skip
    if host not in LOCAL_HOSTS:
        err.print(f"[yellow]warning:[/] listening on {host}:{port}: anyone who reaches this port can cancel, "
                  "retry and submit jobs (there is no login)", highlight=False)  # fmt: skip
    from textual_serve.server import Server

    os.environ.update(settings.as_environ())  # the dashboards it starts see this project
    command = f"{shlex.quote(sys.executable)} -m torchbearer tui"
    Server(command, host=host, port=port, title="torchbearer", public_url=public_url).serve()


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
def validate(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Job files to check")],
    deep: Annotated[
        bool,
        typer.Option("--deep", help="Also the pre-flight check: inputs, overlap, members, credentials, disk, outputs"),
    ] = False,
    online: Annotated[bool, typer.Option("--online", help="With --deep: ask for a Copernicus token")] = False,
) -> None:
    """Check job files without queueing them; exit 1 if any is refused."""
    from torchbearer.spec import JobFileError, PathRules, load_job_file

    bad = 0
    for path in files:
        try:
            jobs = load_job_file(path, paths=PathRules.of(ctx.obj))
            if deep or online:
                _print_warnings(path, _preflight(ctx, jobs, path, online=online))
        except JobFileError as exc:
            bad += 1
            err.print(f"[red]✗[/] {exc}", highlight=False)
            continue
        names = ", ".join(f"{j.spec.name} ({j.spec.kind})" for j in jobs)
        console.print(f"[green]✓[/] {path}: {len(jobs)} job{'s' if len(jobs) != 1 else ''}: {names}", highlight=False)
    if bad:
        raise typer.Exit(1)


def _preflight(ctx: typer.Context, jobs: list, path: Path, *, online: bool = False) -> list:
    """The pre-flight check of a file's jobs: raises JobFileError on certain failures, returns the warnings."""
    from torchbearer.preflight import apply, check_jobs

    store = Store(ctx.obj.state_path) if ctx.obj.state_path.exists() else None
    return apply(check_jobs(jobs, ctx.obj, store, online=online), str(path))


def _print_warnings(path: Path, warnings: list) -> None:
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {path}: {warning.format()}", highlight=False)


@app.command()
def submit(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Job files to queue")],
    held: Annotated[bool, typer.Option("--held", help="Queue them held (release to run)")] = False,
) -> None:
    """Validate job files and queue them through the store (the daemon need not run)."""
    from torchbearer.ingest import submit_file
    from torchbearer.preflight import check_jobs
    from torchbearer.spec import JobFileError, PathRules
    from torchbearer.store import DependencyError

    settings: Settings = ctx.obj
    store = _store(ctx)

    def deep(jobs: list) -> list:
        return check_jobs(jobs, settings, store)

    bad = 0
    for path in files:
        try:
            ids = submit_file(path, settings.queue_dir, store, held=held, paths=PathRules.of(settings),
                              preflight=deep if settings.preflight else None)  # fmt: skip
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


@app.command()
def report(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="From how long ago (12h, 2d) or when (ISO 8601); default: the last report, else 24 h"),
    ] = None,
) -> None:
    """The morning report: the night's jobs as Markdown and HTML in reports/ (curves of train jobs as PNG)."""
    from datetime import datetime

    from torchbearer.report import build_report
    from torchbearer.spec import parse_duration

    start = None
    if since:
        try:
            start = time.time() - parse_duration(since)
        except ValueError:
            try:
                start = datetime.fromisoformat(since).astimezone().timestamp()
            except ValueError:
                raise fail(f"--since {since!r}: give a duration (12h, 2d) or a date-time (2026-06-01T20:00)") from None
    result = build_report(_store(ctx), ctx.obj, start)
    console.print(result.summary(), highlight=False)
    console.print(f"written: {result.markdown} and {result.html}", highlight=False)


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


#: The ``status`` table's columns, and the order in which they give way to a narrow terminal (first goes first).
STATUS_COLUMNS = ("id", "name", "kind", "state", "stage", "progress", "eta", "prio", "started", "duration")
STATUS_DROP_ORDER = ("started", "kind", "prio", "stage", "eta", "duration", "progress")


def status_columns(cells: list[dict[str, str]], width: int) -> list[str]:
    """The columns to print: those holding a value, less important ones dropped until the table fits ``width``.

    ``id``, ``name`` and ``state`` always stay, whole (a name longer than the room left wraps rather than being
    cut). A column takes its widest cell or header plus two cells of padding.
    """
    columns = [c for c in STATUS_COLUMNS if c in ("id", "name", "state") or any(cell[c] for cell in cells)]

    def need(column: str) -> int:
        return max([len(column), *(len(cell[column]) for cell in cells)]) + 2

    for column in STATUS_DROP_ORDER:
        if sum(need(c) for c in columns) <= width:
            break
        if column in columns:
            columns.remove(column)
    return columns


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
    from rich.text import Text

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
    now = time.time()
    cells = []
    for row in rows:
        duration = (row["finished_at"] or now) - row["started_at"] if row["started_at"] else None
        cells.append({
            "id": str(row["id"]), "name": row["name"], "kind": row["kind"], "state": row["state"],
            "stage": row["stage"] or "",
            "progress": f"{row['progress'] * 100:.0f}%" if row["progress"] is not None else "",
            "eta": format_duration(row["eta_s"]) if row["state"] == JobState.RUNNING else "",
            "prio": str(row["priority"]), "started": _when(row["started_at"]), "duration": format_duration(duration),
        })  # fmt: skip
    shown_columns = status_columns(cells, console.width)
    table = Table(box=None, header_style="bold")
    for column in shown_columns:
        table.add_column(column, justify="right" if column in ("id", "progress", "prio") else "left",
                         no_wrap=column != "name", overflow="fold")  # fmt: skip
    for cell in cells:
        values = [
            Text(cell[c], style=STATE_STYLES.get(cell[c], "")) if c == "state" else cell[c] for c in shown_columns
        ]
        table.add_row(*values)
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
    from torchbearer.preflight import job_warnings

    store = _store(ctx)
    job = _job_or_exit(store, job_ref)
    document = {
        "format": "torchbearer.job", "version": STATUS_JSON_VERSION,
        "job": {k: v for k, v in job.__dict__.items()},
        "transitions": store.transitions(job.id), "attempts": store.attempts(job.id),
        "progress": store.latest_progress(job.id), "outputs": store.outputs(job.id),
        "metrics": {name: store.metrics(job.id, name)[-1]["value"] for name in store.metric_names(job.id)},
        "warnings": job_warnings(store, job.id),
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
    for warning in document["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
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
    from torchbearer import runs

    settings: Settings = ctx.obj
    store = _store(ctx)
    job = _job_or_exit(store, job_ref)
    path = runs.log_path_of(job, settings.runs_dir)
    if not path.exists() and not follow:
        raise fail(f"{job.name} (#{job.id}) has no log yet ({path})")
    if not follow:
        print(runs.read_tail(path, lines, max_bytes=max(64 * 1024, lines * 400)))
        return

    def ended() -> bool:
        current = store.job(job.id)
        return current is None or current.state in TERMINAL_STATES

    with contextlib.suppress(KeyboardInterrupt):
        runs.follow(path, ended, lines=lines)


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

    try:
        store = Store(settings.state_path)
        store.check()  # it is about to write: a damaged file is an error with what to do, not a traceback
    except StoreError as exc:
        raise fail(str(exc)) from None
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
    with ForegroundProgress(store, ids, console=err.get()) as display:
        try:
            engine = Engine(settings, watch=False, only_ids=set(ids), on_tick=lambda _e: display.refresh())
            engine.run()
        except (QueueLockedError, StoreError) as exc:
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


@app.command()
def explain(ctx: typer.Context, files: Annotated[list[Path], typer.Argument(help="Explain job files")]) -> None:
    """Run explain job files (CAMs, band attributions, embedding patterns) in the foreground."""
    run_in_foreground(ctx.obj, files, kinds={"explain"})


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A torchbearer .ckpt (with its model card)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The .onnx (default: beside it)")] = None,
) -> None:
    """Export a checkpoint's model to ONNX, with its model card as JSON beside it, checked against PyTorch."""
    from torchbearer.inference.onnx import OnnxExportError, export_checkpoint
    from torchbearer.ml.checkpoint import CheckpointError

    try:
        done = export_checkpoint(checkpoint, output, reuse=False)
    except (CheckpointError, OnnxExportError) as exc:
        raise fail(str(exc)) from None
    console.print(
        f"{done.onnx}\n{done.card}\nmax |ONNX − PyTorch| on the logits: {done.max_abs_diff:.2g}", highlight=False
    )


app.command("download")(imagery_cli.download)
app.add_typer(prepare_cli.app, name="prepare")


#: The global options of :func:`main`: each takes a value (``--state PATH`` or ``--state=PATH``).
_GLOBAL_OPTIONS = frozenset({"--project", "--queue", "--state", "--runs", "--data", "--devices"})


def invoked_name(argv: list[str]) -> str | None:
    """The command ``argv`` names (its first word after the global options and their values), or None."""
    words = iter(argv)
    for word in words:
        if word in _GLOBAL_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word
        elif word.split("=", 1)[0] not in _GLOBAL_OPTIONS:
            return None  # --help, or an option typer will refuse: the whole app answers
    return None


def app_for(argv: list[str]) -> typer.Typer:
    """:data:`app` holding only the command ``argv`` invokes, when it names one.

    Typer builds a click command, evaluating every annotation, for each of the ~35 commands on every call:
    0.04 s of ``status``'s 0.3. The command itself, its options, help and errors are the same; ``torchbearer``
    alone, ``--help`` and unknown commands get the whole app."""
    name = invoked_name(argv)
    commands = [info for info in app.registered_commands
                if (info.name or typer.main.get_command_name(info.callback.__name__)) == name]  # fmt: skip
    groups = [info for info in app.registered_groups if info.name == name]
    if not commands and not groups:
        return app
    only = object.__new__(typer.Typer)  # a shallow copy (the copy module is one more import to start)
    only.__dict__.update(app.__dict__, registered_commands=commands, registered_groups=groups)
    return only


def entry_point() -> None:
    """The ``torchbearer`` command: :data:`app`, with a state database found damaged mid-command (a bad page
    that opening did not touch) reported as a clean ``error:`` saying what to do, like every other fault."""
    import sqlite3

    from torchbearer.store import unusable

    try:
        app_for(sys.argv[1:])()
    except sqlite3.DatabaseError as exc:
        state = _located[-1].state_path if _located else locate().state_path
        raise SystemExit(fail(str(unusable(state, exc))).exit_code) from None


@app.command()
def plot(
    ctx: typer.Context,
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint (.ckpt / .joblib), or 'curves'")],
    source: Annotated[str, typer.Argument(help="A scene (SAFE folder, GeoTIFF) or chip folder; with curves: a job")],
    count: Annotated[int, typer.Argument(help="How many plot_{i}.png to draw")] = 4,
    masks: Annotated[list[Path] | None, typer.Option(help="With a scene: its mask files or folders")] = None,
    patch_size: Annotated[int, typer.Option(help="With a scene: window edge, pixels")] = 256,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the PNGs (default: plots/; curves: the job's run)")
    ] = None,
) -> None:
    """Draw a model on a scene or chip folder (plot_{i}.png: image, mask, prediction), in the foreground.

    `torchbearer plot curves JOB` draws a job's learning curves (curves_loss.png with the loss on a log axis,
    curves_metrics.png, curves_lr.png) from its stored metrics.
    """
    from torchbearer.jobs.plot import draw_curves, draw_samples

    settings: Settings = ctx.obj
    if checkpoint == "curves":
        store = _store(ctx)
        job = store.find_job(source)
        if job is None:
            raise fail(f"no job {source!r}")
        try:
            paths = draw_curves(store.metrics(job.id), job.name, job.id, out or Path(job.run_dir or settings.runs_dir))
        except LookupError as exc:
            raise fail(str(exc)) from None
    else:
        report = imagery_cli.RichReport(err.get())
        try:
            with report.progress:
                paths = draw_samples(Path(checkpoint), Path(source), count, out or Path("plots"), masks=masks,
                                     patch_size=patch_size, data_dir=settings.data_dir, report=report)  # fmt: skip
        except (OSError, ValueError, LookupError) as exc:  # bad checkpoint, input, masks or domain: say which
            raise fail(str(exc)) from None
    for path in paths:
        console.print(str(path), highlight=False)


if __name__ == "__main__":
    entry_point()
