"""A sweep's search space: parsing and checking it, enumerating a grid, writing values into the base job.

A space maps dotted paths into the base job (``train.lr``, ``model.backbone``) to a dimension:

- a list, or ``{choices: [...]}``: one of these values;
- ``{low: 1.0e-4, high: 1.0e-2, log: true}``: a range (log-uniform with ``log``); whole numbers for ``low`` and
  ``high`` (and ``step``) make an integer range; ``step`` makes a range discrete.

Nothing here imports Optuna at module level: job files are validated without it.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from torchbearer.spec import _model_in

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

#: Fields a sweep sets itself (or that would break its trials): not sweepable.
RESERVED_KEYS = ("name", "kind", "after", "schedule", "not_before")
#: Largest grid a sweep enumerates (a grid this size is a mistake more often than a plan).
MAX_GRID = 10_000
_RANGE_KEYS = ("low", "high", "step", "log")


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (numbers, strings, booleans or null)."""

    key: str
    values: tuple[Any, ...]

    def grid(self) -> list[Any]:
        return list(self.values)

    def boundaries(self) -> list[Any]:
        return list(self.values)


@dataclass(frozen=True)
class Range:
    """A number between ``low`` and ``high`` (inclusive); ``step`` makes it discrete, ``log`` log-uniform."""

    key: str
    low: float
    high: float
    step: float | None = None
    log: bool = False
    integer: bool = False

    def grid(self) -> list[Any]:
        """The values a grid takes: ``low``, ``low + step`` … up to ``high``."""
        if self.log:
            raise ValueError(f"space.{self.key}: a log range has no grid; list the values, or use random or tpe")
        if self.step is None and not self.integer:
            raise ValueError(f"space.{self.key}: a grid needs a step for a float range (or list the values)")
        step = self.step or 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        if count > MAX_GRID:
            raise ValueError(f"space.{self.key}: {count} grid values; at most {MAX_GRID}")
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.integer else [round(v, 12) for v in values]

    def boundaries(self) -> list[Any]:
        return [self.low, self.high]


Dimension = Choice | Range


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_dimension(key: str, value: Any) -> Dimension:
    """One dimension of the space; raises ValueError naming ``space.<key>`` and what is wrong."""
    where = f"space.{key}"
    if isinstance(value, dict) and "choices" in value:
        extra = sorted(set(value) - {"choices"})
        if extra:
            raise ValueError(f"{where}: choices stand alone (got also {', '.join(extra)})")
        value = value["choices"]
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{where}: no values to choose from")
        wrong = [v for v in value if not (v is None or isinstance(v, str | int | float | bool))]
        if wrong:
            raise ValueError(f"{where}: choices must be numbers, strings, booleans or null (got {wrong[0]!r})")
        if len(set(map(repr, value))) != len(value):
            raise ValueError(f"{where}: a value is listed twice")
        return Choice(key, tuple(value))
    if not isinstance(value, dict):
        raise ValueError(f"{where}: give a list of values, {{choices: [...]}} or a range {{low: …, high: …}}")
    unknown = [k for k in value if k not in _RANGE_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), [*_RANGE_KEYS, "choices"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; a range has {', '.join(_RANGE_KEYS)}"
        if not close:  # ``space: {train: {lr: …}}``: nested instead of dotted
            hint += f" (nested fields are written as dotted keys: {key}.{unknown[0]})"
        raise ValueError(f"{where}: unknown key {unknown[0]!r}{hint}")
    return _parse_range(key, value)


def _parse_range(key: str, value: dict[str, Any]) -> Range:
    where = f"space.{key}"
    low, high, step, log = value.get("low"), value.get("high"), value.get("step"), value.get("log", False)
    if not (_number(low) and _number(high)):
        raise ValueError(f"{where}: a range needs numbers low and high (got low={low!r}, high={high!r})")
    if not low < high:
        raise ValueError(f"{where}: low ({low}) must be below high ({high})")
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log is true or false")
    if step is not None and not (_number(step) and step > 0):
        raise ValueError(f"{where}: step must be a positive number (got {step!r})")
    if log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0 (got {low})")
    integer = all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int))
    if log and step is not None and not integer:
        raise ValueError(f"{where}: a float range is either log or stepped, not both")
    if step is not None and step > high - low:
        raise ValueError(f"{where}: step {step} is larger than the range {low}…{high}")
    return Range(key, low, high, step, log, integer)


def parse_space(space: dict[str, Any]) -> list[Dimension]:
    """Every dimension of a space, in the order given; an empty space is an error."""
    if not space:
        raise ValueError("space is empty: name at least one field of the base job to vary, e.g. train.lr: [1e-3, 1e-2]")
    return [parse_dimension(str(key), value) for key, value in space.items()]


def grid(dimensions: list[Dimension]) -> dict[str, list[Any]]:
    """Each dimension's grid values (for Optuna's GridSampler); raises if the product is too large."""
    values = {d.key: d.grid() for d in dimensions}
    size = math.prod(len(v) for v in values.values())
    if size > MAX_GRID:
        raise ValueError(f"space: the grid has {size} points; at most {MAX_GRID}")
    return values


def grid_size(dimensions: list[Dimension]) -> int:
    return math.prod(len(v) for v in grid(dimensions).values())


def distributions(dimensions: list[Dimension], method: str) -> dict[str, BaseDistribution]:
    """Optuna distributions to ``ask`` with: the grid's values for ``grid``, the ranges for random and tpe."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if method == "grid":
        return {key: CategoricalDistribution(values) for key, values in grid(dimensions).items()}
    result: dict[str, BaseDistribution] = {}
    for d in dimensions:
        if isinstance(d, Choice):
            result[d.key] = CategoricalDistribution(d.values)
        elif d.integer:
            result[d.key] = IntDistribution(int(d.low), int(d.high), log=d.log, step=int(d.step or 1))
        else:
            result[d.key] = FloatDistribution(float(d.low), float(d.high), log=d.log, step=d.step)
    return result


# -- the base job -------------------------------------------------------------------------------------------


def set_path(given: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of a job mapping with ``value`` at the dotted ``key`` (missing mappings on the way are made)."""
    result = copy.deepcopy(given)
    node = result
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"space.{key}: {'.'.join(parts[: i + 1])} is {child!r} in the base job, not a mapping")
        node = child
    node[parts[-1]] = value
    return result


def field_paths(model: type[BaseModel], prefix: str = "", depth: int = 4) -> list[str]:
    """Every dotted field path of a (nested) pydantic model, for "did you mean"."""
    paths = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        nested = _model_in(info.annotation)
        if nested is not None and depth > 1:
            paths += field_paths(nested, f"{path}.", depth - 1)
    return paths


def check_key(model: type[BaseModel], key: str, kind: str) -> None:
    """Refuse a space key that is not a field of the base job's model (with the closest one)."""
    parts = key.split(".")
    if parts[0] in RESERVED_KEYS:
        raise ValueError(f"space.{key}: {parts[0]} is set by the sweep, not swept")
    current: Any = model
    for i, part in enumerate(parts):
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            close = difflib.get_close_matches(key, field_paths(model), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if i and not (isinstance(current, type) and issubclass(current, BaseModel)):
                hint = f": {'.'.join(parts[:i])} has no fields{hint}"
            raise ValueError(f"space.{key}: not a field of a {kind} job{hint}")
        current = _model_in(current.model_fields[part].annotation)


def trial_given(base: dict[str, Any], params: dict[str, Any], name: str) -> dict[str, Any]:
    """The job mapping of one trial: the base, its parameters written in, and its name."""
    given = {**copy.deepcopy(base), "name": name}
    for key, value in params.items():
        given = set_path(given, key, value)
    return given


def boundary_params(dimensions: list[Dimension]) -> list[dict[str, Any]]:
    """Parameter sets to validate a base job with before any trial runs: each dimension's extreme values (or
    every choice) with the others at their first; the checks are cheap pydantic validations."""
    first = {d.key: d.boundaries()[0] for d in dimensions}
    sets = [first] + [{**first, d.key: v} for d in dimensions for v in d.boundaries()[1:]]
    return list({repr(sorted(s.items())): s for s in sets}.values())
