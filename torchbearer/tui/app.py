"""``torchbearer tui``: the terminal dashboard, a client of the state store like the CLI.

It reads the store on one worker thread (:class:`~torchbearer.tui.poller.Poller`) and changes it only through
:mod:`torchbearer.commands`, each command on a thread of its own with its own connection, so the screen never
waits on the disk or on the daemon's write lock. It works whether or not a daemon runs (the header says which),
and any number of dashboards can be open on the same queue.
"""

from __future__ import annotations

import getpass
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import var
from textual.screen import ModalScreen, Screen
from textual.worker import get_current_worker

from torchbearer import commands
from torchbearer.settings import Settings
from torchbearer.store import JobState, Store, StoreError
from torchbearer.tui.compare import CompareDialog, CompareScreen, comparable_jobs
from torchbearer.tui.data import QueueInfo, SystemStats, read_system_stats, with_store
from torchbearer.tui.poller import Poller, Update
from torchbearer.tui.screens import SUMMARY_WINDOWS, JobScreen, MainScreen, SummaryScreen, default_since
from torchbearer.tui.widgets.dialogs import ChoiceDialog, ConfirmDialog
from torchbearer.tui.widgets.gpus import GpuScreen
from torchbearer.tui.widgets.preview import load_preview

#: Actions that change jobs or the queue (off while a dialog is open).
CONTROL_ACTIONS = frozenset(
    {"cancel", "retry", "hold_release", "priority", "pause_resume", "submit", "summary", "compare", "gpus"}
)


#: Machine readings kept for the GPU view's sparklines (one every 2 s: ten minutes).
HISTORY_SAMPLES = 300


def current_user() -> str | None:
    """Who runs the dashboard: GPU processes of other users are told apart."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


class Polled(Message):
    """A reading from the poller thread."""

    def __init__(self, update: Update) -> None:
        super().__init__()
        self.update = update


class TorchbearerApp(App):
    """The dashboard. ``clock`` and ``system_stats`` are injectable so tests draw the same screen every time."""

    CSS_PATH = "app.tcss"
    TITLE = "torchbearer"
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-short"), (36, "-tall")]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("c", "cancel", "Cancel"),
        Binding("r", "retry", "Retry"),
        Binding("h", "hold_release", "Hold/release"),
        Binding("plus,equals_sign", "priority(1)", "Prio+", show=False),
        Binding("minus", "priority(-1)", "Prio-", show=False),
        Binding("p", "pause_resume", "Pause/resume"),
        Binding("n", "submit", "Submit"),
        Binding("m", "summary", "Summary"),
        Binding("v", "compare", "Compare"),
        Binding("u", "gpus", "GPUs"),
    ]

    queue_info: var[QueueInfo | None] = var(None)
    system: var[SystemStats | None] = var(None)
    store_error: var[str | None] = var(None)

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        system_stats: Callable[[], SystemStats | None] | None = None,
        poll_interval_s: float = 0.5,
        show_summary: bool | None = None,
        compare: list[int] | None = None,
    ) -> None:
        """``show_summary``: open the morning summary at start (None: when jobs ended since the last opening);
        ``compare``: open the run comparison of these job ids at start."""
        super().__init__()
        self.compare_at_start = list(compare or [])
        self.system_history: deque[SystemStats] = deque(maxlen=HISTORY_SAMPLES)  # oldest first, one every 2 s
        self.user = current_user()
        self.settings = settings
        self.clock = clock
        self.poller = Poller(
            settings,
            interval_s=poll_interval_s,
            system_stats=system_stats or partial(read_system_stats, settings.project_dir),
            preview_loader=load_preview,
        )
        self.show_summary = show_summary
        self.last_opened: float | None = None
        self.loaded = False  # the first reading of the store is on screen
        self._polling = False

    # -- life cycle -----------------------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.push_screen(MainScreen(clock=self.clock))
        self.set_interval(1.0, self.tick)

    def start_polling(self) -> None:
        """Start the reader, once the queue table is there to take its first reading."""
        if not self._polling:
            self._polling = True
            self.poll_store()

    @work(thread=True, group="poller", name="poller")
    def poll_store(self) -> None:
        worker = get_current_worker()
        self.poller.run(lambda update: self.post_message(Polled(update)), cancelled=lambda: worker.is_cancelled)

    def on_polled(self, message: Polled) -> None:
        update = message.update
        try:
            self.apply(update)
        finally:
            self.poller.applied()

    def apply(self, update: Update) -> None:
        """Hand a reading to the widgets that show it."""
        self.store_error = update.error
        if update.queue is not None:
            self.queue_info = update.queue
        if update.system is not None:
            self.system_history.append(update.system)
            self.system = update.system
        main = self.main_screen
        if update.rows is not None and main is not None:
            main.table.apply_rows(update.rows, full=update.full)
            main.describe_selected()
        if update.panels is not None and main is not None:
            main.running.show(update.panels, self.clock())
        if update.detail is not None:
            for screen in self.screen_stack:
                if isinstance(screen, JobScreen) and screen.job_id == update.detail.job.id:
                    screen.show(update.detail)
        if not self.loaded and update.rows is not None:
            self.loaded = True
            self.last_opened = default_since(self.poller.previous_opened, self.clock())
            if self.compare_at_start:
                self.open_compare(self.compare_at_start)
            elif self.show_summary or (self.show_summary is None and self._ended_since(self.last_opened)):
                self.action_summary()

    def _ended_since(self, since: float) -> bool:
        main = self.main_screen
        if main is None or self.poller.previous_opened is None:
            return False
        return any(row.finished_at and row.finished_at >= since for row in main.table.rows.values())

    def tick(self) -> None:
        """Once a second: running clocks (durations) move even when the store is quiet."""
        now = self.clock()
        main = self.main_screen
        if main is not None and any(r.state == JobState.RUNNING for r in main.table.rows.values()):
            main.table.refresh()
            main.running.show(main.running.panels, now)
        if isinstance(self.screen, JobScreen):
            self.screen.tick(now)

    def action_quit(self) -> None:
        self.poller.stop()
        self.exit()

    # -- where actions apply --------------------------------------------------------------------------------

    @property
    def main_screen(self) -> MainScreen | None:
        """The queue screen, once its table is mounted."""
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen) and screen.table.is_mounted:
                return screen
        return None

    def selected_job(self) -> tuple[int, str] | None:
        """``(id, name)`` of the job the actions apply to: the open job, else the highlighted one."""
        screen = self.screen
        job_id = getattr(screen, "job_id", None)
        if job_id is None:
            return None
        main = self.main_screen
        row = main.table.rows.get(job_id) if main else None
        return job_id, row.name if row else f"#{job_id}"

    def open_job(self, job_id: int, tab: str = "overview") -> None:
        self.poller.focus_job = job_id
        self.push_screen(JobScreen(job_id, tab=tab))
        self.poller.wake()

    def pop_screen(self) -> Any:
        result = super().pop_screen()
        if not any(isinstance(screen, JobScreen) for screen in self.screen_stack):
            self.poller.focus_job = None
        return result

    # -- commands (the same functions the CLI calls) ---------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Job and queue keys do nothing while a dialog asks something."""
        return not (action in CONTROL_ACTIONS and isinstance(self.screen, ModalScreen))

    @work(thread=True, group="commands", exit_on_error=False)
    def run_command(self, action: Callable[..., Any], *args: Any) -> None:
        """Run one :mod:`torchbearer.commands` function on its own store connection; report how it went."""
        try:
            result = with_store(self.settings.state_path, lambda store: action(store, *args))
        except commands.CommandError as exc:
            self.call_from_thread(self.notify, str(exc), severity="warning", timeout=8)
            return
        except (StoreError, sqlite3.Error, OSError) as exc:  # the store is locked too long, or unusable
            self.call_from_thread(self.notify, f"could not change the store: {exc}", severity="error", timeout=10)
            return
        message = result.message if isinstance(result, commands.CommandResult) else str(result)
        self.call_from_thread(self.notify, message)
        self.poller.wake()

    def _job_or_warn(self) -> tuple[int, str] | None:
        job = self.selected_job()
        if job is None:
            self.notify("no job selected", severity="warning")
        return job

    def action_cancel(self) -> None:
        job = self._job_or_warn()
        if job is None:
            return
        job_id, name = job
        question = f"Cancel {name} (#{job_id})?\nA running job is stopped (SIGTERM, then SIGKILL after the grace)."

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_command(commands.cancel, job_id)

        self.push_screen(ConfirmDialog(question, yes="Cancel job"), answered)

    def action_retry(self) -> None:
        if job := self._job_or_warn():
            self.run_command(commands.retry, job[0])

    def action_hold_release(self) -> None:
        if job := self._job_or_warn():
            self.run_command(hold_or_release, job[0])

    def action_priority(self, delta: int) -> None:
        if job := self._job_or_warn():
            self.run_command(change_priority, job[0], delta)

    def action_pause_resume(self) -> None:
        self.run_command(pause_or_resume)

    def action_summary(self) -> None:
        if isinstance(self.screen, SummaryScreen):
            return
        since = self.last_opened or default_since(None, self.clock())
        self.push_screen(SummaryScreen(since, dict(SUMMARY_WINDOWS)["opened"]))

    def action_submit(self) -> None:
        self.list_configs()

    def action_gpus(self) -> None:
        if not isinstance(self.screen, GpuScreen):
            self.push_screen(GpuScreen())

    def open_compare(self, job_ids: list[int]) -> None:
        """The run comparison of these jobs (a sweep's trial table calls this with its trials)."""
        self.push_screen(CompareScreen(job_ids))

    def action_compare(self) -> None:
        self.list_comparable()

    @work(thread=True, group="commands", exit_on_error=False)
    def list_comparable(self) -> None:
        choices = with_store(self.settings.state_path, comparable_jobs)
        self.call_from_thread(self._pick_compared, choices)

    def _pick_compared(self, choices: list[tuple[int, str]]) -> None:
        if not choices:
            self.notify("no job has validation metrics to compare yet", severity="warning")
            return
        job = self.selected_job()
        marked = {job[0]} if job else set()

        def chosen(job_ids: list[int] | None) -> None:
            if job_ids:
                self.open_compare(job_ids)

        self.push_screen(CompareDialog(choices, marked=marked), chosen)

    @work(thread=True, group="commands", exit_on_error=False)
    def list_configs(self) -> None:
        files = config_files(self.settings.project_dir / "configs")
        self.call_from_thread(self._pick_config, files)

    def _pick_config(self, files: list[Path]) -> None:
        configs = self.settings.project_dir / "configs"
        if not files:
            self.notify(f"no job files (*.yaml, *.yml) in {configs}", severity="warning")
            return
        choices = [(str(path), str(path.relative_to(configs))) for path in files]

        def chosen(value: str | None) -> None:
            if value:
                self.run_command(submit_job_file, Path(value), self.settings.queue_dir, self.settings)

        self.push_screen(ChoiceDialog(f"Submit a job file from {configs.name}/", choices), chosen)

    # -- the command palette --------------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        job = self.selected_job()
        if job is not None:
            label = f"{job[1]} (#{job[0]})"
            yield SystemCommand(f"Cancel {label}", "Stop or drop the job (asks first)", self.action_cancel)
            yield SystemCommand(f"Retry {label}", "Queue a failed or cancelled job again", self.action_retry)
            yield SystemCommand(f"Hold {label}", "Keep it from starting", partial(self.run_command, commands.hold,
                                                                                    job[0]))  # fmt: skip
            yield SystemCommand(f"Release {label}", "Let a held job run", partial(self.run_command, commands.release,
                                                                                  job[0]))  # fmt: skip
            yield SystemCommand(f"Priority up {label}", "Run it sooner (+1)", partial(self.action_priority, 1))
            yield SystemCommand(f"Priority down {label}", "Run it later (-1)", partial(self.action_priority, -1))
            yield SystemCommand(f"Open {label}", "Progress, curves, log, outputs", partial(self.open_job, job[0]))
        yield SystemCommand("Pause queue", "Running jobs finish, nothing new starts",
                            partial(self.run_command, commands.pause, "paused from the dashboard"))  # fmt: skip
        yield SystemCommand("Resume queue", "Start queued jobs again", partial(self.run_command, commands.resume))
        yield SystemCommand("Submit a job file", "Queue a job file from configs/", self.action_submit)
        yield SystemCommand("Morning summary", "What ran since the dashboard was last opened", self.action_summary)
        yield SystemCommand("GPUs", "Utilisation, memory and power over time; who holds each GPU", self.action_gpus)
        yield SystemCommand("Compare runs", "Overlay validation curves, best metrics and settings", self.action_compare)


def hold_or_release(store: Store, job_id: int) -> commands.CommandResult:
    """Release a held job, hold any other."""
    job = store.job(job_id)
    if job is not None and job.state == JobState.HELD:
        return commands.release(store, job_id)
    return commands.hold(store, job_id)


def change_priority(store: Store, job_id: int, delta: int) -> commands.CommandResult:
    """Raise or lower a job's priority by ``delta`` from its value now."""
    job = store.job(job_id)
    if job is None:
        raise commands.CommandError(f"no job {job_id}")
    return commands.set_priority(store, job_id, job.priority + delta)


def pause_or_resume(store: Store) -> str:
    """Resume a paused queue, pause a running one."""
    if store.queue_paused():
        return commands.resume(store)
    return commands.pause(store, "paused from the dashboard")


def submit_job_file(store: Store, path: Path, queue_dir: Path, settings: Settings | None = None) -> str:
    """Validate and queue a job file, as ``torchbearer submit`` does; a refused file is a command error.

    With ``settings``, paths outside the project folder are refused too."""
    from torchbearer.ingest import submit_file
    from torchbearer.spec import JobFileError, PathRules
    from torchbearer.store import DependencyError

    try:
        ids = submit_file(path, queue_dir, store, paths=PathRules.of(settings) if settings is not None else None)
    except (JobFileError, DependencyError) as exc:
        raise commands.CommandError(str(exc)) from None
    return f"{path.name}: queued {', '.join(f'#{i}' for i in ids) or 'a schedule'}"


def config_files(folder: Path) -> list[Path]:
    """The job files under ``folder`` (``*.yaml``, ``*.yml``, recursively), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())
