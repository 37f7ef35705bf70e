"""GPUs as NVML sees them (nvidia-ml-py): ids for job slots, and live figures for the dashboard.

Everything here is quiet where NVML is absent (no NVIDIA driver, a ROCm or CPU machine): it returns nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class GpuProcess:
    """A process using a GPU (as ``nvidia-smi`` lists it): its pid and the GPU memory it holds, in bytes."""

    pid: int
    memory_used: int | None


@dataclass(frozen=True)
class GpuStats:
    """One GPU's figures: utilisation in %, memory in bytes, power in W, temperature in °C; its processes."""

    index: int
    name: str
    utilisation_pct: float
    memory_used: int
    memory_total: int
    power_w: float | None
    temperature_c: float | None
    processes: tuple[GpuProcess, ...] = ()


@cache
def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library: no GPUs to show
        return None
    return pynvml


def gpu_ids() -> tuple[str, ...]:
    """The index of every NVIDIA GPU, as strings for ``CUDA_VISIBLE_DEVICES``; () when none."""
    nvml = _nvml()
    if nvml is None:
        return ()
    try:
        return tuple(str(i) for i in range(nvml.nvmlDeviceGetCount()))
    except Exception:  # noqa: BLE001
        return ()


def gpu_stats() -> list[GpuStats]:
    """Current figures of every NVIDIA GPU; [] when NVML is absent."""
    nvml = _nvml()
    stats: list[GpuStats] = []
    if nvml is None:
        return stats
    for index in range(len(gpu_ids())):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception:  # noqa: BLE001
            continue
        stats.append(
            GpuStats(
                index=index,
                name=name.decode() if isinstance(name, bytes) else str(name),
                utilisation_pct=float(util.gpu),
                memory_used=int(memory.used),
                memory_total=int(memory.total),
                power_w=_optional(lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
                temperature_c=_optional(lambda h=handle: float(nvml.nvmlDeviceGetTemperature(h, 0))),
                processes=_processes(nvml, handle),
            )
        )
    return stats


def _optional(read):
    try:
        return read()
    except Exception:  # noqa: BLE001 - some boards do not report power or temperature
        return None


def _processes(nvml, handle) -> tuple[GpuProcess, ...]:
    """Compute and graphics processes on one GPU, each pid once (memory None where the driver hides it)."""
    seen: dict[int, GpuProcess] = {}
    for read in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for process in _optional(lambda r=read: getattr(nvml, r)(handle)) or ():
            used = getattr(process, "usedGpuMemory", None)
            seen.setdefault(
                int(process.pid), GpuProcess(int(process.pid), int(used) if isinstance(used, int) else None)
            )
    return tuple(seen.values())


def utilisation(index: str) -> float | None:
    """GPU ``index``'s utilisation in % (NVML's figure over its last sample period); None without NVML."""
    nvml = _nvml()
    if nvml is None or not index.isdigit():
        return None
    try:
        return float(nvml.nvmlDeviceGetUtilizationRates(nvml.nvmlDeviceGetHandleByIndex(int(index))).gpu)
    except Exception:  # noqa: BLE001 - a GPU that fell off the bus reports nothing
        return None
