"""Where things are: the queue, the run folders, the data root and the state database; limits, notifiers and
credentials.

Each value comes from, in order: an explicit argument (a CLI flag), the process environment, the env file
(``.env`` in the project folder, or the file named by ``TORCHBEARER_ENV_FILE``), then the default. The
precedence, the parsing and the types are pydantic-settings' (``Settings`` is a ``BaseSettings``; the env file is
read by python-dotenv). Every variable is a field here and is documented in ``env.example``. Credentials are
``SecretStr`` fields: they print as ``**********`` and are read with :meth:`Settings.secret` where a client
really needs them; ``redact.register_settings`` registers every one so no text the project stores or prints
holds them. The project's locations (folders and state database) are found by ``locations.locate``, which
``status`` uses alone so that it never imports pydantic.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from torchbearer.locations import LOCATION_VARIABLES, SettingsError, locate

#: Events a notifier can be told about; ``TORCHBEARER_NOTIFY_EVENTS`` picks some (default: all but succeeded).
NOTIFY_EVENTS = ("failed", "succeeded", "stalled", "queue-empty", "paused", "report")
DEFAULT_NOTIFY_EVENTS = "failed,stalled,queue-empty,paused,report"
#: A new URL starts after whitespace, or after a comma followed by ``scheme://`` (a comma inside a URL's query,
#: ``mailto://…?to=a@x,b@y``, does not split it).
_URL_SEPARATOR = re.compile(r"\s+|,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def split_urls(raw: str) -> tuple[str, ...]:
    """The URLs of a ``TORCHBEARER_NOTIFY_URLS`` value (separated by whitespace or commas)."""
    return tuple(url.strip().strip(",") for url in _URL_SEPARATOR.split(raw) if url.strip().strip(","))


def _env(name: str, default: Any = None, **constraints: Any) -> Any:
    """A field read from the variable ``name`` (and settable by its field name, as a flag does)."""
    return Field(default, validation_alias=name, **constraints)


#: The environment :meth:`Settings.load` reads instead of ``os.environ`` (its ``environ`` argument).
_environ: ContextVar[Mapping[str, str] | None] = ContextVar("torchbearer_environ", default=None)

#: Words for pydantic's error types, after ``NAME='value'``.
_ERRORS = {
    "float_parsing": "is not a number",
    "int_parsing": "is not a whole number",
    "int_from_float": "is not a whole number",
    "bool_parsing": "is not one of 1/0, true/false, yes/no",
    "greater_than_equal": "must not be negative",
}


class Settings(BaseSettings):
    """Resolved paths and limits of one project. Paths are absolute. Built by :meth:`load`."""

    model_config = SettingsConfigDict(
        frozen=True, case_sensitive=True, env_ignore_empty=True, extra="ignore", validate_by_name=True,
        validate_by_alias=True, hide_input_in_errors=False,
    )  # fmt: skip

    project_dir: Path = _env("TORCHBEARER_PROJECT", Path())
    queue_dir: Path = _env("TORCHBEARER_QUEUE", Path("queue"))
    runs_dir: Path = _env("TORCHBEARER_RUNS", Path("runs"))
    data_dir: Path = _env("TORCHBEARER_DATA", Path("data"))
    state_path: Path = _env("TORCHBEARER_STATE", Path("state/torchbearer.db"))
    #: GPU ids, one job slot each; ``()`` means one slot with no GPU named (CPU machines).
    devices: Annotated[tuple[str, ...], NoDecode] = _env("TORCHBEARER_DEVICES", ())
    #: Seconds between SIGTERM and SIGKILL when a job is cancelled or the daemon stops.
    kill_grace_s: float = _env("TORCHBEARER_KILL_GRACE_S", 30.0, ge=0)
    #: A worker's log.txt is cut back to its newest half when it grows past this many MiB.
    log_cap_mb: float = _env("TORCHBEARER_LOG_CAP_MB", 50.0, ge=0)
    #: Whether job files may name paths outside the project folder.
    allow_outside_paths: bool = _env("TORCHBEARER_ALLOW_OUTSIDE_PATHS", False)
    #: Crash-loop guard: this many jobs in a row dying within ``crash_window_s`` of starting pause the queue.
    crash_loop_count: int = _env("TORCHBEARER_CRASH_LOOP_COUNT", 3, ge=0)
    crash_window_s: float = _env("TORCHBEARER_CRASH_WINDOW_S", 10.0, ge=0)
    #: Modules that register more job kinds (read from the process environment by ``jobs.load_plugins``, which
    #: runs before any settings exist; here so that a bad value and the env file are one story).
    plugins: str | None = _env("TORCHBEARER_PLUGINS")
    #: Where workers run: ``local`` (child processes) or ``slurm`` (batch jobs; see docs/slurm.md).
    executor: Literal["local", "slurm"] = _env("TORCHBEARER_EXECUTOR", "local")
    #: Slurm: the partition, extra ``sbatch`` options, the GPU generic resource (``gpu`` → ``--gres=gpu:N`` for a
    #: job with ``devices: N``) and how many device slots the daemon keeps submitted at once.
    slurm_partition: str | None = _env("TORCHBEARER_SLURM_PARTITION")
    slurm_args: Annotated[tuple[str, ...], NoDecode] = _env("TORCHBEARER_SLURM_ARGS", ())
    slurm_gres: str | None = _env("TORCHBEARER_SLURM_GRES")
    slurm_slots: int = _env("TORCHBEARER_SLURM_SLOTS", 4)
    #: Apprise URLs notified of job events (``notify.py``); they may hold credentials.
    notify_urls: Annotated[tuple[SecretStr, ...], NoDecode] = _env("TORCHBEARER_NOTIFY_URLS", ())
    #: A shell command run per event, the event as JSON on stdin and in ``TORCHBEARER_EVENT`` (may hold a token).
    notify_command: SecretStr | None = _env("TORCHBEARER_NOTIFY_COMMAND")
    #: Which events are sent (``notify.EVENTS``).
    notify_events: Annotated[frozenset[str], NoDecode] = _env("TORCHBEARER_NOTIFY_EVENTS", DEFAULT_NOTIFY_EVENTS)
    #: Seconds without a progress event before a running job (one holding a device slot) counts as stalled;
    #: a job's ``stall_after`` overrides it; 0: never.
    stall_after_s: float = _env("TORCHBEARER_STALL_AFTER_S", 1800.0, ge=0)
    #: GiB of free disk the pre-flight check keeps aside: a file whose estimated writes need them is warned of.
    disk_reserve_gb: float = _env("TORCHBEARER_DISK_RESERVE_GB", 0.0, ge=0)
    #: Cron expression (minute hour day month weekday, local time) of the daemon's morning report; None: none.
    report_at: str | None = _env("TORCHBEARER_REPORT_AT")
    #: Whether the daemon and ``submit`` run the pre-flight check on each file they queue.
    preflight: bool = _env("TORCHBEARER_PREFLIGHT", True)
    #: Copernicus Data Space: the account (``source: copernicus``), its TOTP secret if 2FA is on, the endpoints
    #: and the hosts a redirected download may still send the token to (comma-separated).
    copernicus_user: SecretStr | None = _env("COPERNICUS_USER")
    copernicus_password: SecretStr | None = _env("COPERNICUS_PASSWORD")
    copernicus_totp_secret: SecretStr | None = _env("COPERNICUS_TOTP_SECRET")
    copernicus_token_url: str | None = _env("COPERNICUS_TOKEN_URL")
    copernicus_catalogue_url: str | None = _env("COPERNICUS_CATALOGUE_URL")
    copernicus_download_url: str | None = _env("COPERNICUS_DOWNLOAD_URL")
    copernicus_auth_hosts: str | None = _env("COPERNICUS_AUTH_HOSTS")
    earth_search_url: str | None = _env("EARTH_SEARCH_URL")
    #: HTTP of the imagery sources: connections per job (at most 4), tries without progress, first backoff (s).
    http_connections: int | None = _env("TORCHBEARER_HTTP_CONNECTIONS", ge=1)
    http_retries: int | None = _env("TORCHBEARER_HTTP_RETRIES", ge=0)
    http_backoff_s: float | None = _env("TORCHBEARER_HTTP_BACKOFF_S", ge=0)

    #: Every ``KEY=VALUE`` of the env file, for :meth:`secret` lookups of names that are no field (a plugin's).
    _env_file_values: dict[str, str] = PrivateAttr(default_factory=dict)

    # -- parsing --------------------------------------------------------------------------------------------

    @field_validator("project_dir")
    @classmethod
    def _absolute_project(cls, value: Path) -> Path:
        return (value.expanduser() if str(value) else Path.cwd()).resolve()

    @field_validator("queue_dir", "runs_dir", "data_dir", "state_path")
    @classmethod
    def _under_project(cls, value: Path, info: ValidationInfo) -> Path:
        value = value.expanduser()
        return (value if value.is_absolute() else info.data["project_dir"] / value).resolve()

    @field_validator("devices", mode="before")
    @classmethod
    def _device_list(cls, value: Any) -> Any:
        return tuple(d.strip() for d in value.split(",") if d.strip()) if isinstance(value, str) else value

    @field_validator("executor", mode="before")
    @classmethod
    def _executor_name(cls, value: Any) -> Any:
        name = str(value or "local").strip().lower()
        if name not in {"local", "slurm"}:
            raise ValueError(f"executor {name!r} (TORCHBEARER_EXECUTOR) must be 'local' or 'slurm'")
        return name

    @field_validator("slurm_args", mode="before")
    @classmethod
    def _shell_words(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ValueError(f"TORCHBEARER_SLURM_ARGS: {exc}") from None

    @field_validator("slurm_slots")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("TORCHBEARER_SLURM_SLOTS must be at least 1")
        return value

    @field_validator("notify_urls", mode="before")
    @classmethod
    def _url_list(cls, value: Any) -> Any:
        return split_urls(value) if isinstance(value, str) else value

    @field_validator("notify_events", mode="before")
    @classmethod
    def _event_names(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        names = {name.strip().lower() for name in value.split(",") if name.strip()}
        unknown = names - set(NOTIFY_EVENTS)
        if unknown:
            raise ValueError(
                f"TORCHBEARER_NOTIFY_EVENTS names {', '.join(sorted(unknown))}: known events are "
                f"{', '.join(NOTIFY_EVENTS)}"
            )
        return frozenset(names)

    @field_validator("notify_command", "report_at", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return (value.strip() or None) if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then the environment (``load``'s ``environ`` when given), then the env file; no secrets dir."""
        environ = _environ.get()
        if environ is not None:
            env_settings.env_vars = parse_env_vars(environ, True, True, None)  # type: ignore[attr-defined]
        return init_settings, env_settings, dotenv_settings

    # -- building -------------------------------------------------------------------------------------------

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
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Resolve settings from arguments, then ``environ`` (default ``os.environ``), then the env file.

        Raises :class:`SettingsError` naming the variable (and the env file's line) of a value that cannot be
        used."""
        environ = dict(os.environ if environ is None else environ)
        # The locations are found the one way status finds them (its errors first: pydantic-settings would skip
        # a bad line of the env file); the model holds them with the rest.
        where = locate(project_dir, environ=environ, queue_dir=queue_dir, runs_dir=runs_dir, data_dir=data_dir,
                       state_path=state_path)  # fmt: skip
        flags = {"devices": devices, "executor": executor}
        flags |= {field: getattr(where, field) for field in LOCATION_VARIABLES}
        token = _environ.set(environ)
        try:
            settings = cls(
                _env_file=where.env_file if where.env_file.is_file() else None,
                project_dir=where.project_dir,
                **{key: value for key, value in flags.items() if value is not None},
            )
        except ValidationError as exc:
            raise SettingsError("; ".join(_describe(error) for error in exc.errors())) from None
        finally:
            _environ.reset(token)
        settings._env_file_values = dict(where.env_file_values)
        return settings

    # -- reading --------------------------------------------------------------------------------------------

    @property
    def log_cap_bytes(self) -> int:
        return int(self.log_cap_mb * 1024 * 1024)

    @property
    def disk_reserve_bytes(self) -> int:
        return int(self.disk_reserve_gb * 1024**3)

    @property
    def env_file_values(self) -> dict[str, str]:
        """The env file's ``KEY=VALUE`` pairs as read (secrets included: never print them)."""
        return dict(self._env_file_values)

    def secret(self, name: str) -> str | None:
        """A variable's value (``None`` when unset): a field's (a ``SecretStr`` revealed), else, for a name that
        is no field (a plugin's credential), the environment's or the env file's. Never log the value."""
        field = _FIELD_OF.get(name)
        if field is not None:
            value = getattr(self, field)
            if isinstance(value, SecretStr):
                return value.get_secret_value() or None
            return None if value is None else str(value)
        return os.environ.get(name) or self._env_file_values.get(name) or None

    def secret_values(self) -> list[str]:
        """Every credential these settings hold (``SecretStr`` fields, notifier URLs), for ``redact``."""
        values = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, SecretStr) and item.get_secret_value():
                    values.append(item.get_secret_value())
        return values

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


#: ``{variable: field name}`` of every setting.
_FIELD_OF = {str(field.validation_alias): name for name, field in Settings.model_fields.items()}
#: Variables that hold secrets (the ``SecretStr`` fields): never printed, logged or written to the store.
SECRET_NAMES = frozenset(
    str(field.validation_alias)
    for field in Settings.model_fields.values()
    if field.annotation is not None and "SecretStr" in str(field.annotation) and "tuple" not in str(field.annotation)
)


def _describe(error: Any) -> str:
    """One pydantic error as ``NAME='value' why`` (our own validators' messages already name the variable)."""
    name = str(error["loc"][0]) if error["loc"] else "settings"
    name = str(Settings.model_fields[name].validation_alias) if name in Settings.model_fields else name
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    words = _ERRORS.get(error["type"], error["msg"])
    if error["type"] == "greater_than_equal" and error["ctx"]["ge"] != 0:
        words = f"must be at least {error['ctx']['ge']}"
    shown = "<hidden>" if name in SECRET_NAMES else repr(error["input"])
    return f"{name}={shown} {words}"
