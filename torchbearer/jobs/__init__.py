"""The job-kind registry: one place that maps a kind's name to its spec model and its ``run`` function.

Built-in kinds are listed by module path and imported only when first needed, so reading the queue never pays
for torch. Other packages add kinds through the entry-point group ``torchbearer.kinds`` (the entry point names
a module) or the ``TORCHBEARER_PLUGINS`` environment variable (comma-separated modules); such a module calls
:func:`register` when imported. The worker process loads the same list, so a plugin kind runs like a built-in.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchbearer.context import JobContext
    from torchbearer.spec import JobSpec

#: Built-in kinds and the module that registers each.
BUILTIN_KINDS: dict[str, str] = {
    "train": "torchbearer.jobs.train",
    "predict": "torchbearer.jobs.predict",
    "download": "torchbearer.jobs.download",
    "sweep": "torchbearer.jobs.sweep",
    "prepare": "torchbearer.jobs.prepare",
    "explain": "torchbearer.jobs.explain",
    "plot": "torchbearer.jobs.plot",
    "classify": "torchbearer.jobs.classify",
}


@dataclass(frozen=True)
class JobKind:
    """A kind of job: its name, the pydantic model of its job entries, and the function that runs one."""

    name: str
    spec: type[JobSpec]
    run: Callable[[Any, JobContext], None]
    description: str = ""
    #: Metric names the kind logs (``fnmatch`` patterns, e.g. ``val/iou/*``): what a sweep may optimise.
    metrics: tuple[str, ...] = ()

    def logs_metric(self, name: str) -> bool:
        """Whether the kind logs a metric called ``name`` (one of :attr:`metrics`, patterns allowed)."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.metrics)


class UnknownKindError(LookupError):
    """No kind of that name is registered (the message suggests the closest one)."""


_registry: dict[str, JobKind] = {}
_entry_point_modules: list[str] | None = None
_imported: set[str] = set()


def register(kind: JobKind) -> JobKind:
    """Add a kind (a module calls this at import). Registering the same name twice replaces the first."""
    _registry[kind.name] = kind
    return kind


def load_plugins() -> None:
    """Import the modules named by entry points (looked up once) and ``TORCHBEARER_PLUGINS`` (read on each
    call, so a variable set after the first call still counts); each module is imported once."""
    global _entry_point_modules
    if _entry_point_modules is None:
        _entry_point_modules = [ep.value.split(":")[0] for ep in entry_points(group="torchbearer.kinds")]
    named = [m.strip() for m in os.environ.get("TORCHBEARER_PLUGINS", "").split(",") if m.strip()]
    for module in [*_entry_point_modules, *named]:
        if module not in _imported:
            importlib.import_module(module)
            _imported.add(module)


def kind_names() -> list[str]:
    """Every kind that can be asked for, without importing the built-in modules."""
    load_plugins()
    return sorted(set(BUILTIN_KINDS) | set(_registry))


def get_kind(name: str) -> JobKind:
    """The kind called ``name``; imports its module on first use."""
    load_plugins()
    if name not in _registry and name in BUILTIN_KINDS:
        importlib.import_module(BUILTIN_KINDS[name])
    try:
        return _registry[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), kind_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known kinds: {', '.join(kind_names())}"
        raise UnknownKindError(f"unknown job kind {name!r}{hint}") from None
