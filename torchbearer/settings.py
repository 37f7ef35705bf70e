"""Where things are: the queue, the run folders, the data root and the state database.

Each value comes from, in order: an explicit argument (a CLI flag), the process environment, the env file
(``.env`` in the project folder, or the file named by ``TORCHBEARER_ENV_FILE``), then the default. Every
variable is documented in ``env.example``. Credentials are read from the same places through
:meth:`Settings.secret` and never stored in the settings' printable form.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

#: Variables that hold secrets: never printed, logged or written to the store.
SECRET_NAMES = frozenset({"COPERNICUS_USER", "COPERNICUS_PASSWORD", "COPERNICUS_TOTP_SECRET"})


class SettingsError(ValueError):
    """A setting has a value that cannot be used (says which variable and why)."""


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``KEY=VALUE`` file (``#`` comments, optional ``export`` and quotes); missing file → {}."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise SettingsError(f"{path}:{number}: expected KEY=VALUE, got {raw.strip()[:60]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


#: Events a notifier can be told about; ``TORCHBEARER_NOTIFY_EVENTS`` picks some (default: all but succeeded).
NOTIFY_EVENTS = ("failed", "succeeded", "stalled", "queue-empty", "paused", "report")
DEFAULT_NOTIFY_EVENTS = "failed,stalled,queue-empty,paused,report"
#: A new URL starts after whitespace, or after a comma followed by ``scheme://`` (a comma inside a URL's query,
#: ``mailto://…?to=a@x,b@y``, does not split it).
_URL_SEPARATOR = re.compile(r"\s+|,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def split_urls(raw: str) -> tuple[str, ...]:
    """The URLs of a ``TORCHBEARER_NOTIFY_URLS`` value (separated by whitespace or commas)."""
    return tuple(url.strip().strip(",") for url in _URL_SEPARATOR.split(raw) if url.strip().strip(","))


def _notify_events(raw: str | None) -> frozenset[str]:
    names = {name.strip().lower() for name in (raw or DEFAULT_NOTIFY_EVENTS).split(",") if name.strip()}
    unknown = names - set(NOTIFY_EVENTS)
    if unknown:
        raise SettingsError(
            f"TORCHBEARER_NOTIFY_EVENTS names {', '.join(sorted(unknown))}: known events are {', '.join(NOTIFY_EVENTS)}"
        )
    return frozenset(names)


@dataclass(frozen=True)
class Settings:
    """Resolved paths and limits of one project. Paths are absolute."""

    project_dir: Path
    queue_dir: Path
    runs_dir: Path
    data_dir: Path
    state_path: Path
    #: GPU ids, one job slot each; ``[]`` means one slot with no GPU named (CPU machines).
    devices: tuple[str, ...] = ()
    #: Seconds between SIGTERM and SIGKILL when a job is cancelled or the daemon stops.
    kill_grace_s: float = 30.0
    #: A worker's log.txt is cut back to its newest half when it grows past this many bytes.
    log_cap_bytes: int = 50 * 1024 * 1024
    #: Whether job files may name paths outside the project folder.
    allow_outside_paths: bool = False
    #: Crash-loop guard: this many jobs in a row dying within ``crash_window_s`` of starting pause the queue.
    crash_loop_count: int = 3
    crash_window_s: float = 10.0
    #: Where workers run: ``local`` (child processes) or ``slurm`` (batch jobs; see docs/slurm.md).
    executor: str = "local"
    #: Slurm: the partition, extra ``sbatch`` options, the GPU generic resource (``gpu`` → ``--gres=gpu:N`` for a
    #: job with ``devices: N``) and how many device slots the daemon keeps submitted at once.
    slurm_partition: str | None = None
    slurm_args: tuple[str, ...] = ()
    slurm_gres: str | None = None
    slurm_slots: int = 4
    #: Apprise URLs notified of job events (``notify.py``); they may hold credentials: never printed.
    notify_urls: tuple[str, ...] = field(default=(), repr=False)
    #: A shell command run per event, the event as JSON on stdin and in ``TORCHBEARER_EVENT``.
    notify_command: str | None = field(default=None, repr=False)
    #: Which events are sent (``notify.EVENTS``).
    notify_events: frozenset[str] = frozenset(DEFAULT_NOTIFY_EVENTS.split(","))
    #: Seconds without a progress event before a running job (one holding a device slot) counts as stalled;
    #: a job's ``stall_after`` overrides it; 0: never.
    stall_after_s: float = 1800.0
    #: Bytes of free disk the pre-flight check keeps aside: a file whose estimated writes need them is warned of.
    disk_reserve_bytes: int = 0
    #: Cron expression (minute hour day month weekday, local time) of the daemon's morning report; None: none.
    report_at: str | None = None
    #: Whether the daemon and ``submit`` run the pre-flight check on each file they queue.
    preflight: bool = True
    env_file_values: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(
        cls,
        project_dir: str | Path | None = None,
        *,
        queue_dir: str | Path | None = None,
        runs_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        state_path: str | Path | None = None,
        devices: str | None = None,
        executor: str | None = None,
        environ: dict[str, str] | None = None,
    ) -> Settings:
        """Resolve settings from arguments, then ``environ`` (default ``os.environ``), then the env file."""
        environ = dict(os.environ if environ is None else environ)
        project = Path(project_dir or environ.get("TORCHBEARER_PROJECT") or Path.cwd()).expanduser().resolve()
        env_file = Path(environ.get("TORCHBEARER_ENV_FILE") or project / ".env")
        file_values = read_env_file(env_file)

        def get(name: str, default: str | None = None) -> str | None:
            return environ.get(name) or file_values.get(name) or default

        def path(arg: str | Path | None, name: str, default: str) -> Path:
            value = Path(arg or get(name, default)).expanduser()
            return (value if value.is_absolute() else project / value).resolve()

        def number(name: str, default: float) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a number") from None
            if value < 0:
                raise SettingsError(f"{name}={raw!r} must not be negative")
            return value

        device_list = devices if devices is not None else get("TORCHBEARER_DEVICES", "")
        executor_name = (executor or get("TORCHBEARER_EXECUTOR", "local") or "local").strip().lower()
        if executor_name not in {"local", "slurm"}:
            raise SettingsError(f"executor {executor_name!r} (TORCHBEARER_EXECUTOR) must be 'local' or 'slurm'")
        try:
            slurm_args = tuple(shlex.split(get("TORCHBEARER_SLURM_ARGS", "") or ""))
        except ValueError as exc:
            raise SettingsError(f"TORCHBEARER_SLURM_ARGS: {exc}") from None
        slurm_slots = int(number("TORCHBEARER_SLURM_SLOTS", 4))
        if slurm_slots < 1:
            raise SettingsError("TORCHBEARER_SLURM_SLOTS must be at least 1")
        notify_events = _notify_events(get("TORCHBEARER_NOTIFY_EVENTS"))
        return cls(
            project_dir=project,
            queue_dir=path(queue_dir, "TORCHBEARER_QUEUE", "queue"),
            runs_dir=path(runs_dir, "TORCHBEARER_RUNS", "runs"),
            data_dir=path(data_dir, "TORCHBEARER_DATA", "data"),
            state_path=path(state_path, "TORCHBEARER_STATE", "state/torchbearer.db"),
            devices=tuple(d.strip() for d in (device_list or "").split(",") if d.strip()),
            kill_grace_s=number("TORCHBEARER_KILL_GRACE_S", 30.0),
            log_cap_bytes=int(number("TORCHBEARER_LOG_CAP_MB", 50.0) * 1024 * 1024),
            allow_outside_paths=(get("TORCHBEARER_ALLOW_OUTSIDE_PATHS", "0") or "0").lower() in {"1", "true", "yes"},
            crash_loop_count=int(number("TORCHBEARER_CRASH_LOOP_COUNT", 3)),
            crash_window_s=number("TORCHBEARER_CRASH_WINDOW_S", 10.0),
            executor=executor_name,
            slurm_partition=get("TORCHBEARER_SLURM_PARTITION"),
            slurm_args=slurm_args,
            slurm_gres=get("TORCHBEARER_SLURM_GRES"),
            slurm_slots=slurm_slots,
            notify_urls=split_urls(get("TORCHBEARER_NOTIFY_URLS", "") or ""),
            notify_command=(get("TORCHBEARER_NOTIFY_COMMAND") or "").strip() or None,
            notify_events=notify_events,
            stall_after_s=number("TORCHBEARER_STALL_AFTER_S", 1800.0),
            disk_reserve_bytes=int(number("TORCHBEARER_DISK_RESERVE_GB", 0.0) * 1024**3),
            report_at=(get("TORCHBEARER_REPORT_AT") or "").strip() or None,
            preflight=(get("TORCHBEARER_PREFLIGHT", "1") or "1").lower() not in {"0", "false", "no"},
            env_file_values=file_values,
        )

    def secret(self, name: str) -> str | None:
        """A credential from the environment or the env file (``None`` when unset). Never log the value."""
        return os.environ.get(name) or self.env_file_values.get(name) or None

    @property
    def slots(self) -> tuple[str, ...]:
        """One entry per job slot: the GPU id the slot owns, or ``""`` for the single CPU-only slot.

        With the Slurm executor, ``slurm1`` … ``slurmN``: the cluster picks the GPUs, the slots only cap how
        many devices the daemon's jobs hold there at once.
        """
        if self.executor == "slurm":
            return tuple(f"slurm{i}" for i in range(1, self.slurm_slots + 1))
        return self.devices or ("",)

    def as_environ(self) -> dict[str, str]:
        """The variables a child process needs to see the same settings (no secrets)."""
        return {
            "TORCHBEARER_PROJECT": str(self.project_dir),
            "TORCHBEARER_QUEUE": str(self.queue_dir),
            "TORCHBEARER_RUNS": str(self.runs_dir),
            "TORCHBEARER_DATA": str(self.data_dir),
            "TORCHBEARER_STATE": str(self.state_path),
            "TORCHBEARER_ALLOW_OUTSIDE_PATHS": "1" if self.allow_outside_paths else "0",
        }

    def ensure_dirs(self) -> None:
        """Create the queue, runs, data and state folders if missing."""
        for folder in (self.queue_dir, self.runs_dir, self.data_dir, self.state_path.parent):
            folder.mkdir(parents=True, exist_ok=True)
