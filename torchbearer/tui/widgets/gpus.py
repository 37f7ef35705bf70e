"""The GPU view (``u``): per GPU, utilisation, memory and power as history sparklines, which job holds it and
whose other processes run on it (what nvitop shows); on a machine without NVIDIA GPUs, the machine's and the
running workers' CPU and memory instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from torchbearer.formatting import format_bytes
from torchbearer.tui.data import SystemStats
from torchbearer.tui.widgets.header import HeaderBar
from torchbearer.tui.widgets.panels import sparkline

if TYPE_CHECKING:
    from torchbearer.tui.app import TorchbearerApp

#: Samples drawn in a sparkline (one every 2 s: the last two minutes).
HISTORY_CELLS = 60


def history_table(label_width: int) -> Table:
    """A borderless table for :func:`history_row`: label (``label_width`` characters), sparkline, current value."""
    table = Table.grid(padding=(0, 1))
    table.add_column(width=label_width, no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    return table


def history_row(table: Table, label: str, values: list[float], now: str, *, high: float | None = None) -> None:
    """``label  ▁▂▅▇█  now``: a figure's history (scaled from 0 to ``high``, else to its largest value)."""
    table.add_row(Text(label, style="bold"), Text(sparkline(values, HISTORY_CELLS, low=0.0, high=high or None),
                                                  style="cyan"), Text(now))  # fmt: skip


def gpu_view(history: Sequence[SystemStats], user: str | None = None) -> RenderableType:
    """The GPU view from the readings so far (oldest first); ``user`` is who runs the dashboard."""
    if not history:
        return Text("reading the machine …", style="dim")
    latest = history[-1]
    if not latest.gpus:
        return workers_view(history)
    blocks: list[RenderableType] = []
    for gpu in latest.gpus:
        series = [next((g for g in stats.gpus if g.index == gpu.index), None) for stats in history]
        samples = [g for g in series if g is not None]
        title = Text(f"GPU{gpu.index} ", style="bold").append(gpu.name)
        if gpu.temperature_c is not None:
            title.append(f"  {gpu.temperature_c:.0f}°C", style="dim")
        table = history_table(label_width=8)
        history_row(table, "util", [g.utilisation_pct for g in samples], f"{gpu.utilisation_pct:.0f}%", high=100.0)
        history_row(table, "memory", [float(g.memory_used) for g in samples],
                    f"{format_bytes(gpu.memory_used)} / {format_bytes(gpu.memory_total)}",
                    high=float(gpu.memory_total))  # fmt: skip
        powers = [g.power_w for g in samples if g.power_w is not None]
        if powers:
            history_row(table, "power", powers, f"{gpu.power_w:.0f} W" if gpu.power_w is not None else "—")
        blocks += [title, table, gpu_holders(latest, gpu.index, user), Text("")]
    return Group(*blocks)


def gpu_holders(stats: SystemStats, index: int, user: str | None) -> Table:
    """The jobs given this GPU, and every process on it: ours (a job's worker) or another user's."""
    gpu = next(g for g in stats.gpus if g.index == index)
    table = Table(box=None, header_style="dim", pad_edge=False, show_header=bool(gpu.processes))
    for name in ("pid", "user", "memory", "what"):
        table.add_column(name, no_wrap=name != "what", overflow="ellipsis")
    holders = [w for w in stats.workers if str(index) in w.slots]
    for worker in holders:
        if not any(p.pid in worker.pids for p in gpu.processes):  # given the GPU, not (yet) using it
            table.add_row(str(worker.pid or "—"), "", "", Text(f"job #{worker.job_id} {worker.name}", style="green"))
    infos = {info.pid: info for info in stats.processes}
    for process in gpu.processes:
        job = next((w for w in stats.workers if process.pid in w.pids), None)
        info = infos.get(process.pid)
        owner = info.user if info and info.user else "?"
        memory = format_bytes(process.memory_used) if process.memory_used is not None else "—"
        if job is not None:
            what = Text(f"job #{job.job_id} {job.name}", style="green")
        else:
            other = user is not None and owner != user
            what = Text(("another user: " if other else "not a job: ") + (info.command if info and info.command
                                                                         else "?"), style="yellow")  # fmt: skip
        table.add_row(str(process.pid), owner, memory, what)
    if not holders and not gpu.processes:
        table.add_row("", "", "", Text("idle: no job, no process", style="dim"))
    return table


def workers_view(history: Sequence[SystemStats]) -> RenderableType:
    """No GPU: the machine's CPU and memory, and each running worker's (with its data loaders)."""
    latest = history[-1]
    table = history_table(label_width=22)
    history_row(table, "machine CPU", [s.cpu_pct for s in history], f"{latest.cpu_pct:.0f}%", high=100.0)
    history_row(table, "machine memory", [float(s.ram_used) for s in history],
                f"{format_bytes(latest.ram_used)} / {format_bytes(latest.ram_total)}",
                high=float(latest.ram_total))  # fmt: skip
    for worker in latest.workers:
        samples = [w for stats in history for w in stats.workers if w.job_id == worker.job_id]
        label = f"#{worker.job_id} {worker.name}"
        pid = f" (pid {worker.pid})" if worker.pid else " (not on this machine)"
        cpus = [w.cpu_pct for w in samples if w.cpu_pct is not None]
        history_row(table, f"{label} CPU", cpus, (f"{worker.cpu_pct:.0f}%" if worker.cpu_pct is not None else "—")
                    + pid)  # fmt: skip
        history_row(table, f"{label} memory", [float(w.rss) for w in samples if w.rss is not None],
                    format_bytes(worker.rss) if worker.rss is not None else "—")  # fmt: skip
    note = Text("no NVIDIA GPU here (NVML not available): CPU and memory of the machine and the running workers",
                style="dim")  # fmt: skip
    if not latest.workers:
        return Group(note, Text(""), table, Text("no job is running", style="dim"))
    return Group(note, Text(""), table)


class GpuScreen(Screen):
    """The GPU view; redrawn on each reading of the machine (every 2 s)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,backspace,u", "app.pop_screen", "Back")]

    app: TorchbearerApp

    def __init__(self) -> None:
        super().__init__()
        self.body = Static(id="gpu-body")

    def compose(self) -> ComposeResult:
        yield HeaderBar()
        with VerticalScroll():
            yield self.body
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "system", lambda _value: self.redraw(), init=False)
        self.redraw()

    def redraw(self) -> None:
        self.body.update(gpu_view(list(self.app.system_history), self.app.user))
