"""Where a project's things are: its folder, the queue, the run folders, the data root and the state database.

These five are the settings every command needs and the only ones ``status`` needs, so they are resolved here
without pydantic: importing pydantic-settings costs a quarter of a second, more than ``status`` over 10 000 jobs
may take in all. :meth:`Settings.load <torchbearer.settings.Settings.load>` takes its locations from
:func:`locate`, so there is one way to find them. The precedence is the settings' own: an explicit argument (a
CLI flag), then the process environment, then the env file (``.env`` in the project folder, or the file named
by ``TORCHBEARER_ENV_FILE``), then the default; an empty value counts as unset. Relative paths are under the
project folder.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class SettingsError(ValueError):
    """A setting has a value that cannot be used (says which variable and why)."""


#: ``{field: (variable, default)}`` of each location under the project folder.
LOCATION_VARIABLES = {
    "queue_dir": ("TORCHBEARER_QUEUE", "queue"),
    "runs_dir": ("TORCHBEARER_RUNS", "runs"),
    "data_dir": ("TORCHBEARER_DATA", "data"),
    "state_path": ("TORCHBEARER_STATE", "state/torchbearer.db"),
}


def read_env_file(path: Path) -> dict[str, str]:
    """The ``KEY=VALUE`` pairs of an env file, parsed by python-dotenv (``#`` comments, ``export``, quotes);
    missing file → {}. A line python-dotenv cannot read is an error naming the file and line (it would skip it)."""
    if not path.is_file():
        return {}
    from dotenv.parser import parse_stream

    text = path.read_text(encoding="utf-8", errors="replace")
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.string.strip()
            raise SettingsError(f"{path}:{binding.original.line}: expected KEY=VALUE, got {line[:60]!r}")
        if binding.key is not None and binding.value is not None:
            values[binding.key] = binding.value
    return values


@dataclass(frozen=True)
class Locations:
    """A project's folders and state database, absolute."""

    project_dir: Path
    queue_dir: Path
    runs_dir: Path
    data_dir: Path
    state_path: Path
    #: The env file these were read from (it may not exist) and its ``KEY=VALUE`` pairs.
    env_file: Path
    env_file_values: Mapping[str, str]


def _under(project: Path, value: str | Path) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else project / path).resolve()


def locate(
    project_dir: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **flags: str | Path | None,
) -> Locations:
    """The locations from ``flags`` (``queue_dir``, ``runs_dir``, ``data_dir``, ``state_path``; None: not
    given), then ``environ`` (default ``os.environ``), then the env file, then the defaults.

    Raises :class:`SettingsError` for a line of the env file that cannot be read."""
    unknown = set(flags) - set(LOCATION_VARIABLES)
    if unknown:
        raise TypeError(f"locate() takes no {', '.join(sorted(unknown))}")
    environ = os.environ if environ is None else environ
    project = Path(project_dir or environ.get("TORCHBEARER_PROJECT") or Path.cwd()).expanduser().resolve()
    env_file = Path(environ.get("TORCHBEARER_ENV_FILE") or project / ".env")
    file_values = read_env_file(env_file)
    paths = {
        field: _under(project, flags.get(field) or environ.get(variable) or file_values.get(variable) or default)
        for field, (variable, default) in LOCATION_VARIABLES.items()
    }
    return Locations(project_dir=project, env_file=env_file, env_file_values=file_values, **paths)
