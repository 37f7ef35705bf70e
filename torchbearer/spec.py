"""Job files → validated job models.

A job file is YAML, read with the safe loader only. It holds one job (a mapping with ``kind``), or a night:
``defaults:`` merged under each entry of a ``jobs:`` list. Each job is validated by its kind's pydantic model
(a subclass of :class:`JobSpec`); unknown keys and wrong types are refused with the file, the YAML path of the
field, its line and, for a misspelt key, the closest known one.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from torchbearer.jobs import UnknownKindError, get_kind, kind_names

#: Larger job files are refused unread: a night of jobs fits in a few kB.
MAX_JOB_FILE_BYTES = 1024 * 1024
#: Node budget for a file, counted with aliases expanded: stops "billion laughs" alias bombs.
MAX_YAML_NODES = 100_000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$")
_DURATION_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
#: Longest value quoted in an error (characters): a 100 000-character name must not make a 100 kB error file.
MAX_QUOTED_CHARS = 80
#: Longest issue message and YAML path (characters), whatever they quote.
MAX_ISSUE_CHARS = 400


def clip(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def quoted(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters."""
    return clip(repr(value), limit)


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string such as ``"90"``, ``"30m"``, ``"2h"``, ``"1.5d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 3600, '30m' or '2h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration: use seconds or a number with s, m, h or d")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def require_path_or_job(path: Any, job: Any, path_field: str) -> None:
    """Refuse a spec block that names both, or neither, of a file (its field ``path_field``) and a train job
    (``job``, by name or id) to take it from."""
    if (path is None) == (job is None):
        raise ValueError(f"give exactly one of {path_field} (a path) or job (a train job's name or id)")


class StrictModel(BaseModel):
    """Base of every job-file model: unknown keys are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class JobSpec(StrictModel):
    """The fields every job has, whatever its kind. Kinds subclass this with their own fields.

    ``path_fields`` names (dotted, through nested models and lists) the fields that hold paths: files, folders,
    globs or outputs. They are checked against the project folder when the file is queued.
    """

    path_fields: ClassVar[tuple[str, ...]] = ()

    name: str = Field(pattern=NAME_PATTERN, description="unique within its file; letters, digits, . _ -")
    kind: str
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first")
    after: list[str | int] = Field(default_factory=list, description="jobs (names or ids) that must succeed first")
    not_before: datetime | None = Field(None, description="do not start before this time (naive = local time)")
    schedule: str | None = Field(None, description="cron expression: re-enqueue a copy on this schedule")
    retries: int = Field(0, ge=0, le=20, description="extra attempts after a failure")
    retry_backoff: float = Field(60.0, ge=0, description="seconds before the first retry; doubles each time")
    timeout: float | None = Field(None, description="seconds (or '30m', '2h') before the job is stopped")
    devices: int = Field(1, ge=1, le=64, description="device slots (GPUs) the job needs")
    stall_after: float | None = Field(
        None, description="seconds (or '30m') without a progress event before the job counts as stalled; 0: never"
    )

    @field_validator("stall_after", mode="before")
    @classmethod
    def _stall(cls, value: Any) -> float | None:
        return None if value is None else 0.0 if value in (0, "0") else parse_duration(value)

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("retry_backoff", mode="before")
    @classmethod
    def _backoff(cls, value: Any) -> float:
        return 0.0 if value in (0, "0") else parse_duration(value)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday): {exc}") from None
        return value

    @property
    def not_before_ts(self) -> float | None:
        """``not_before`` as UNIX seconds."""
        if self.not_before is None:
            return None
        moment = self.not_before if self.not_before.tzinfo else self.not_before.astimezone()
        return moment.astimezone(UTC).timestamp()


@dataclass(frozen=True)
class SpecIssue:
    """One thing wrong with a job file: where (YAML path, line) and what."""

    path: str
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        path, message = clip(self.path, MAX_ISSUE_CHARS), clip(self.message, MAX_ISSUE_CHARS)
        return f"{where}: {path + ': ' if path else ''}{message}"


@dataclass(frozen=True)
class PathRules:
    """Where job-file paths may point: inside ``project_dir`` (relative paths are resolved against it), unless
    ``allow_outside`` (``TORCHBEARER_ALLOW_OUTSIDE_PATHS``)."""

    project_dir: Path
    allow_outside: bool = False

    @classmethod
    def of(cls, settings: Any) -> PathRules:
        """The rules of a :class:`~torchbearer.settings.Settings`."""
        return cls(Path(settings.project_dir), bool(settings.allow_outside_paths))

    def resolve(self, path: str | Path) -> Path:
        candidate = Path(path).expanduser()
        return (candidate if candidate.is_absolute() else self.project_dir / candidate).resolve()

    def outside(self, path: str | Path) -> bool:
        """Whether ``path`` (symlinks followed, as when the job runs) lands outside the project folder."""
        return not self.allow_outside and not self.resolve(path).is_relative_to(self.project_dir)


def _path_values(value: Any, names: list[str], loc: tuple) -> list[tuple[tuple, str]]:
    """(location, string) of every value at the dotted field path ``names`` below ``value``, lists walked."""
    if isinstance(value, list | tuple):
        return [found for index, item in enumerate(value) for found in _path_values(item, names, (*loc, index))]
    if not names:
        return [(loc, value)] if isinstance(value, str) else []
    if isinstance(value, BaseModel):
        return _path_values(getattr(value, names[0], None), names[1:], (*loc, names[0]))
    return []


def outside_path_issues(spec: JobSpec, rules: PathRules, prefix: tuple, lines: _Lines) -> list[SpecIssue]:
    """One issue per path field of ``spec`` that points outside the project folder."""
    issues = []
    for dotted in type(spec).path_fields:
        for loc, value in _path_values(spec, dotted.split("."), ()):
            if rules.outside(value):
                message = (f"{quoted(value)} is outside the project folder {rules.project_dir} "
                           "(set TORCHBEARER_ALLOW_OUTSIDE_PATHS=1 to allow)")  # fmt: skip
                issues.append(SpecIssue(_path_text((*prefix, *loc)), message, _line_of((*prefix, *loc), lines)))
    return issues


class JobFileError(ValueError):
    """A job file was refused; ``issues`` lists every problem found."""

    def __init__(self, source: str, issues: list[SpecIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__("\n".join(issue.format(source) for issue in issues))


@dataclass(frozen=True)
class ParsedJob:
    """A validated job of a file: the model, and the mapping as given (defaults merged in)."""

    spec: JobSpec
    given: dict[str, Any]
    index: int | None = None  # position in ``jobs:``, None for a single-job file

    @property
    def resolved(self) -> dict[str, Any]:
        return self.spec.model_dump(mode="json")


@dataclass
class _Lines:
    """YAML path → line number (1-based), from the composed node tree."""

    lines: dict[tuple, int] = field(default_factory=dict)
    nodes: int = 0


def _map_lines(node: yaml.Node, path: tuple, out: _Lines) -> None:
    out.nodes += 1
    if out.nodes > MAX_YAML_NODES:
        raise ValueError(f"the YAML expands to more than {MAX_YAML_NODES} nodes (alias bomb?)")
    out.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            key_name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark.line)
            if (*path, key_name) in out.lines:  # safe_load would silently keep only the last value
                first = out.lines[(*path, key_name)]
                raise yaml.MarkedYAMLError(problem=f"duplicate key {quoted(key_name)} (first at line {first})",
                                           problem_mark=key.start_mark)  # fmt: skip
            out.lines[(*path, key_name)] = key.start_mark.line + 1
            _map_lines(value, (*path, key_name), out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _map_lines(item, (*path, index), out)


def _decode(data: bytes, source: str) -> str:
    if len(data) > MAX_JOB_FILE_BYTES:
        raise JobFileError(
            source,
            [SpecIssue("", f"file is {len(data):,} bytes; job files are limited to {MAX_JOB_FILE_BYTES:,}")],
        )
    if not data.strip():
        raise JobFileError(source, [SpecIssue("", "file is empty")])
    if b"\x00" in data:
        raise JobFileError(source, [SpecIssue("", f"binary data (NUL byte at offset {data.index(0)})")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobFileError(
            source, [SpecIssue("", f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})")]
        ) from None


def _load_yaml(text: str, source: str) -> tuple[Any, _Lines]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        lines = _Lines()
        if node is not None:
            _map_lines(node, (), lines)
        value = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc)
        if exc.context and exc.problem:  # e.g. "expected a single document in the stream, but found another"
            problem = f"{exc.context}, {problem}"
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            problem = f"{problem.strip()}: only plain YAML is accepted (no language-specific tags)"
        raise JobFileError(source, [SpecIssue("", f"YAML error: {problem}", mark.line + 1 if mark else None)]) from None
    except RecursionError:
        raise JobFileError(source, [SpecIssue("", "YAML error: nested too deeply")]) from None
    except (yaml.YAMLError, ValueError) as exc:
        raise JobFileError(source, [SpecIssue("", f"YAML error: {exc}")]) from None
    return value, lines


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two mappings; ``override`` wins, nested mappings are merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _path_text(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Names of the fields of the (nested) model that ``loc`` points into, for "did you mean"."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        info = current.model_fields.get(part)
        if info is None:
            break
        current = _model_in(info.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as ``Model | None`` or ``list[Model]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _validation_issues(
    exc: ValidationError, model: type[BaseModel], prefix: tuple, fallback: tuple | None, lines: _Lines
) -> list[SpecIssue]:
    issues = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged"))))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            message = f"unknown key {quoted(loc[-1])}" + (
                f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(sorted(known))}"
            )
        elif "input" in error and not isinstance(error["input"], dict | list):
            message += f" (got {quoted(error['input'])})"
        path = (*prefix, *loc)
        if path not in lines.lines and fallback is not None and (*fallback, *loc) in lines.lines:
            path = (*fallback, *loc)  # the value came from ``defaults:``: point there
        line = _line_of(path, lines)
        issues.append(SpecIssue(_path_text(path), message, line))
    return issues


def _line_of(path: tuple, lines: _Lines) -> int | None:
    while path:
        if path in lines.lines:
            return lines.lines[path]
        path = path[:-1]
    return None


def parse_job_text(
    text: str | bytes, source: str = "<job>", *, default_name: str | None = None, paths: PathRules | None = None
) -> list[ParsedJob]:
    """Validate a job file's content; returns its jobs or raises :class:`JobFileError` listing every issue.

    With ``paths``, path fields outside the project folder are issues too.
    """
    if isinstance(text, bytes):
        text = _decode(text, source)
    elif not text.strip():
        raise JobFileError(source, [SpecIssue("", "file is empty")])
    document, lines = _load_yaml(text, source)
    if not isinstance(document, dict):
        kind = type(document).__name__ if document is not None else "nothing"
        raise JobFileError(source, [SpecIssue("", f"expected a mapping (a job, or defaults + jobs), got {kind}", 1)])

    if "jobs" in document:
        extra = sorted(set(document) - {"defaults", "jobs"})
        issues = [
            SpecIssue(str(k), "unknown top-level key; a batch file has only defaults and jobs", lines.lines.get((k,)))
            for k in extra
        ]
        defaults = document.get("defaults") or {}
        entries = document["jobs"]
        if not isinstance(defaults, dict):
            issues.append(SpecIssue("defaults", "must be a mapping", lines.lines.get(("defaults",))))
        if not isinstance(entries, list) or not entries:
            issues.append(SpecIssue("jobs", "must be a non-empty list of jobs", lines.lines.get(("jobs",))))
        if issues:
            raise JobFileError(source, issues)
        items = [(index, (("jobs", index)), entry) for index, entry in enumerate(entries)]
    else:
        defaults, items = {}, [(None, (), document)]

    jobs: list[ParsedJob] = []
    issues = []
    givens: list[tuple[tuple, dict[str, Any]]] = []
    used_defaults: set[str] = set()
    for index, prefix, entry in items:
        if not isinstance(entry, dict):
            issues.append(SpecIssue(_path_text(prefix), "a job must be a mapping", _line_of(prefix, lines)))
            continue
        applicable = _defaults_for(defaults, entry.get("kind", defaults.get("kind")))
        used_defaults.update(applicable)
        given = _merge(applicable, entry)
        if index is None and "name" not in given and default_name:
            given["name"] = default_name
        givens.append((prefix, given))
        parsed, problems = _validate_job(given, prefix, ("defaults",) if defaults else None, lines)
        issues += problems
        if parsed is not None:
            if paths is not None:
                issues += outside_path_issues(parsed, paths, prefix, lines)
            jobs.append(ParsedJob(parsed, given, index))
    for key in [k for k in defaults if k not in used_defaults]:
        known = sorted({f for kind in _kinds_of(items, defaults) for f in kind.spec.model_fields})
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ": no job in this file takes it"
        message = f"unknown key {quoted(key)}{hint}"
        issues.append(SpecIssue(_path_text(("defaults", key)), message, lines.lines.get(("defaults", key))))
    issues += _dependency_issues(givens, lines)  # from the mappings as given: a job with other errors counts too
    if issues:  # a bad ``defaults:`` value is reported once, not once per job
        raise JobFileError(source, list(dict.fromkeys(issues)))
    return jobs


def _dependency_issues(givens: list[tuple[tuple, dict[str, Any]]], lines: _Lines) -> list[SpecIssue]:
    """Duplicate names, jobs waiting for themselves and ``after:`` cycles within one file."""
    issues = []
    named = [(prefix, given["name"]) for prefix, given in givens if isinstance(given.get("name"), str)]
    names = [name for _prefix, name in named]
    for name in sorted({n for n in names if names.count(n) > 1}):
        issues.append(SpecIssue("name", f"job name {quoted(name)} is used more than once in this file"))
    edges: dict[str, list[str]] = {}
    for prefix, given in givens:
        name, after = given.get("name"), given.get("after")
        if not isinstance(name, str) or not isinstance(after, list):
            continue
        refs = [str(ref).strip().lstrip("#") for ref in after if isinstance(ref, str | int)]
        if name in refs:
            where = (*prefix, "after")
            issues.append(SpecIssue(_path_text(where), f"job {quoted(name)} waits for itself", _line_of(where, lines)))
        edges.setdefault(name, []).extend(ref for ref in refs if ref in names and ref != name)
    for cycle in _cycles(edges):
        issues.append(SpecIssue("after", f"dependency cycle: {clip(' → '.join([*cycle, cycle[0]]))}"))
    return issues


def _cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """The distinct cycles found by a depth-first walk of ``edges`` (name → names it waits for)."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycle = trail[trail.index(node) :]
            if frozenset(cycle) not in seen:
                seen.add(frozenset(cycle))
                found.append(cycle)
            return
        if node in done:
            return
        for nxt in edges.get(node, []):
            visit(nxt, [*trail, node])
        done.add(node)

    for node in list(edges):
        visit(node, [])
    return found


def _defaults_for(defaults: dict[str, Any], kind_name: Any) -> dict[str, Any]:
    """The part of ``defaults:`` a job of this kind takes: a night's train settings skip its predict job."""
    try:
        fields = get_kind(str(kind_name)).spec.model_fields
    except Exception:  # noqa: BLE001 - an unknown kind is reported by _validate_job
        return dict(defaults)
    return {key: value for key, value in defaults.items() if key in fields}


def _kinds_of(items: list, defaults: dict[str, Any]) -> list:
    kinds = []
    for _index, _prefix, entry in items:
        name = entry.get("kind", defaults.get("kind")) if isinstance(entry, dict) else None
        try:
            kinds.append(get_kind(str(name)))
        except Exception:  # noqa: BLE001 - reported elsewhere
            continue
    return kinds


def _validate_job(
    given: dict[str, Any], prefix: tuple, fallback: tuple | None, lines: _Lines
) -> tuple[JobSpec | None, list[SpecIssue]]:
    kind_name = given.get("kind")
    if kind_name is None:
        message = f"missing 'kind'; one of: {', '.join(kind_names())}"
        return None, [SpecIssue(_path_text((*prefix, "kind")), message, _line_of(prefix, lines))]
    try:
        kind = get_kind(str(kind_name))
    except Exception as exc:  # noqa: BLE001 - a broken plugin refuses its jobs, it must not crash the daemon
        message = str(exc) if isinstance(exc, UnknownKindError) else f"kind {kind_name!r} could not be loaded: {exc!r}"
        return None, [SpecIssue(_path_text((*prefix, "kind")), message, _line_of((*prefix, "kind"), lines))]
    try:
        return kind.spec.model_validate(given), []
    except ValidationError as exc:
        return None, _validation_issues(exc, kind.spec, prefix, fallback, lines)


def load_job_file(path: str | Path, *, paths: PathRules | None = None) -> list[ParsedJob]:
    """Read and validate a job file (see :func:`parse_job_text`)."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_JOB_FILE_BYTES:  # never read a huge file, and report its real size
                message = f"file is {size:,} bytes; job files are limited to {MAX_JOB_FILE_BYTES:,}"
                raise JobFileError(str(path), [SpecIssue("", message)])
            data = file.read(MAX_JOB_FILE_BYTES + 1)  # it may have grown since fstat
    except OSError as exc:
        raise JobFileError(str(path), [SpecIssue("", f"cannot read: {exc.strerror or exc}")]) from exc
    return parse_job_text(_decode(data, str(path)), str(path), default_name=_safe_name(path.stem), paths=paths)


def _safe_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "job"
    return name[:64]
