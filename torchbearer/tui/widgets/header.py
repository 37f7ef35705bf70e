"""The header bar: daemon up or down, queue running or paused, job counts, and this machine's figures."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from torchbearer.formatting import format_bytes
from torchbearer.store import JobState
from torchbearer.tui.data import QueueInfo, SystemStats

#: Counts the header names, in this order (the rest are in the queue table).
COUNTED_STATES = (JobState.RUNNING, JobState.QUEUED, JobState.WAITING, JobState.HELD, JobState.FAILED)


def queue_line(queue: QueueInfo | None, error: str | None = None) -> Text:
    """``● daemon up (pid 42)  ▶ queue running  running 1 · queued 3 · failed 2``."""
    text = Text()
    if error:
        return text.append(f"✖ {error}", style="bold red")
    if queue is None:
        return text.append("reading the state store …", style="dim")
    if queue.daemon_alive:
        text.append("● daemon up", style="bold green").append(f" (pid {queue.daemon_pid})", style="dim")
    else:
        text.append("● daemon down", style="bold red").append(" (start: torchbearer daemon)", style="dim")
    text.append("  ")
    if queue.paused:
        text.append("⏸ queue paused", style="bold yellow").append(f" ({queue.paused_reason})", style="dim")
    else:
        text.append("▶ queue running", style="green")
    counts = [f"{state} {queue.counts[state]}" for state in COUNTED_STATES if queue.counts.get(state)]
    if counts:
        text.append("  " + " · ".join(counts), style="dim")
    return text


def system_line(system: SystemStats | None) -> Text:
    """``GPU0 NVIDIA H100 34% 12.1/80.0 GB 210 W 61°C │ CPU 12% │ RAM 5.1/31.2 GB │ disk 120.3 GB free``."""
    text = Text()
    if system is None:
        return text
    for gpu in system.gpus:
        text.append(f"GPU{gpu.index} ", style="bold").append(f"{gpu.name} {gpu.utilisation_pct:.0f}% ")
        text.append(f"{format_bytes(gpu.memory_used)}/{format_bytes(gpu.memory_total)}")
        if gpu.power_w is not None:
            text.append(f" {gpu.power_w:.0f} W")
        if gpu.temperature_c is not None:
            text.append(f" {gpu.temperature_c:.0f}°C")
        text.append(" │ ", style="dim")
    text.append("CPU ", style="bold").append(f"{system.cpu_pct:.0f}%").append(" │ ", style="dim")
    text.append("RAM ", style="bold").append(f"{format_bytes(system.ram_used)}/{format_bytes(system.ram_total)}")
    text.append(" │ ", style="dim").append("disk ", style="bold").append(f"{format_bytes(system.disk_free)} free")
    return text


class HeaderBar(Vertical):
    """Two lines at the top of every screen; follows the app's ``queue_info``, ``system`` and ``store_error``."""

    DEFAULT_CSS = """
    HeaderBar { height: 2; background: $panel; padding: 0 1; }
    HeaderBar > Static { height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.queue_line = Static(id="header-queue")
        self.system_line = Static(id="header-system")

    def compose(self) -> ComposeResult:
        yield self.queue_line
        yield self.system_line

    def on_mount(self) -> None:
        for name in ("queue_info", "system", "store_error"):
            self.watch(self.app, name, lambda _value: self._redraw(), init=False)
        self._redraw()

    def _redraw(self) -> None:
        app = self.app
        self.queue_line.update(Text("torchbearer ", style="bold") + queue_line(app.queue_info, app.store_error))
        self.system_line.update(system_line(app.system))

    @property
    def text(self) -> str:
        """Both lines as plain text."""
        return f"{self.queue_line.content}\n{self.system_line.content}"
