"""The pre-flight check: what would make a queued job fail at 3 a.m., found in the evening.

``torchbearer validate --deep`` runs it, and so does the daemon (and ``submit``) on every file it queues. It
looks past the schema (``spec.py``) at the world the jobs will meet: every input path exists and is readable;
masks and vector labels overlap their scenes; a predict job's members agree with each other and with its
scenes on bands, resolution and classes; a member ``{job: x}`` names a job that writes a checkpoint; imagery
jobs have their credentials (``online``: a token request succeeds); the free disk covers what the file's jobs
will write (an estimate); output folders are writable. Every problem is reported at once, as a
:class:`Finding`: ``certain`` ones (the job cannot work) refuse the file, the others are warnings kept with the
jobs (``show``). Raster and checkpoint libraries are imported only when a job names such files.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchbearer.imagery.spec import aoi_kind
from torchbearer.spec import JobSpec, ParsedJob, PathRules, SpecIssue, _path_values

#: Kinds whose jobs write a checkpoint a predict member may name.
CHECKPOINT_KINDS = frozenset({"train", "classify", "sweep"})
#: Path fields that name what a job writes, not what it reads.
OUTPUT_FIELDS = frozenset({"output"})
#: Estimated bytes written per scene: a stacked scene in the cache (11 uint16 bands of a 10980² tile at 60 m,
#: 10 at 20 m, 4 at 10 m) plus the product files fetched to build it (about as much again).
SCENE_BYTES = {60: 2 * 1830 * 1830 * 11 * 2, 20: 2 * 5490 * 5490 * 10 * 2, 10: 2 * 10980 * 10980 * 4 * 2}
#: Estimated bytes of a training run's checkpoints, plots and logs.
TRAIN_RUN_BYTES = 200 * 1024**2
#: Meta key prefix of the warnings kept with a queued job (``store.meta``).
WARNINGS_KEY = "preflight-warnings:"


@dataclass(frozen=True)
class Finding:
    """One problem: which job, which field, what; ``certain``: the job cannot succeed (the file is refused)."""

    job: str
    field: str
    message: str
    certain: bool = True

    def format(self) -> str:
        return f"{self.job}: {self.field + ': ' if self.field else ''}{self.message}"

    def issue(self) -> SpecIssue:
        return SpecIssue(f"{self.job}.{self.field}" if self.field else self.job, self.message)


def check_jobs(
    parsed: list[ParsedJob],
    settings: Any,
    store: Any = None,
    *,
    online: bool = False,
    free_bytes: Callable[[Path], int] | None = None,
) -> list[Finding]:
    """Every finding for the jobs of one file (``store``: to look up jobs named by earlier files)."""
    rules = PathRules.of(settings)
    batch = {job.spec.name: job.spec.kind for job in parsed}
    findings: list[Finding] = []
    for job in parsed:
        spec = job.spec
        for check in (_inputs, _outputs, _mask_overlap, _members, _explained_patches, _credentials):
            try:
                findings += check(spec, rules, settings=settings, store=store, batch=batch, online=online)
            except Exception as exc:  # noqa: BLE001 - a check that breaks is a warning, never a refusal
                findings.append(Finding(spec.name, "", f"pre-flight check {check.__name__[1:]} could not run: "
                                        f"{type(exc).__name__}: {exc}", certain=False))  # fmt: skip
    findings += _disk(parsed, rules, settings, free_bytes or _free_bytes)
    return findings


# -- paths -----------------------------------------------------------------------------------------------------


def _values(spec: JobSpec, dotted: str) -> list[str]:
    return [value for _loc, value in _path_values(spec, dotted.split("."), ())]


def _expand(value: str, rules: PathRules) -> list[Path]:
    """The files a path field names: a glob's matches, or the path itself."""
    path = rules.resolve(value)
    if glob.has_magic(value):
        return [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
    return [path]


def _is_output(dotted: str) -> bool:
    """Whether a path field names something the job writes (``output``, a prepare step's ``steps.chip.output``)."""
    return dotted.rsplit(".", 1)[-1] in OUTPUT_FIELDS


def _inputs(spec: JobSpec, rules: PathRules, **_: Any) -> list[Finding]:
    """Every input path exists (a glob matches something) and is readable; what the job itself writes first
    (a prepare step reading an earlier step's output) counts as there."""
    findings = []
    written = [rules.resolve(v) for d in type(spec).path_fields if _is_output(d) for v in _values(spec, d)]
    for dotted in type(spec).path_fields:
        if _is_output(dotted):
            continue
        for value in _values(spec, dotted):
            if any(rules.resolve(value).is_relative_to(out) for out in written):
                continue
            if dotted.endswith("weights") and value == "imagenet":
                continue
            if dotted.endswith("aoi") and aoi_kind(value) != "file":  # a WKT, not a file
                continue
            paths = _expand(value, rules)
            # a job waiting on others may read what they write: then a missing input is only a warning
            later = " (yet: does a job it waits on write it?)" if spec.after else ""
            if not paths:
                findings.append(Finding(spec.name, dotted, f"{value!r} matches no file{later}", not spec.after))
            for path in paths:
                if not path.exists():
                    findings.append(Finding(spec.name, dotted, f"{path} does not exist{later}", not spec.after))
                elif not os.access(path, os.R_OK):
                    findings.append(Finding(spec.name, dotted, f"{path} is not readable"))
    return findings


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _outputs(spec: JobSpec, rules: PathRules, settings: Any, **_: Any) -> list[Finding]:
    """Output folders (and the run folders) are writable."""
    targets = [(d, rules.resolve(v).parent) for d in type(spec).path_fields if _is_output(d) for v in _values(spec, d)]
    targets.append(("", Path(settings.runs_dir)))
    findings = []
    for field, folder in targets:
        existing = _nearest_existing(folder)
        if not os.access(existing, os.W_OK):
            findings.append(Finding(spec.name, field, f"cannot write into {existing} (for {folder})"))
    return findings


# -- geometry --------------------------------------------------------------------------------------------------


def _raster_of(path: Path) -> Path | None:
    """The file to read a scene's footprint from: the GeoTIFF itself, or a band of a SAFE folder."""
    if path.is_dir():
        return next(iter(sorted(path.glob("GRANULE/*/IMG_DATA/**/*.jp2"))), None)
    return path if path.suffix.lower() in {".tif", ".tiff", ".jp2", ".vrt"} else None


def _footprint(path: Path) -> tuple[tuple[float, float, float, float], Any] | None:
    """(bounds, CRS) of a raster or a vector file; None when it cannot be read as either."""
    if path.suffix.lower() in {".geojson", ".json", ".gpkg", ".shp", ".fgb"}:
        import pyogrio

        info = pyogrio.read_info(path, force_total_bounds=True)
        return tuple(info["total_bounds"]), info["crs"]
    raster = _raster_of(path)
    if raster is None:
        return None
    import rasterio

    with rasterio.open(raster) as ds:
        return tuple(ds.bounds), ds.crs


def _overlaps(a: tuple[tuple, Any], b: tuple[tuple, Any]) -> bool:
    from rasterio.warp import transform_bounds

    (ax0, ay0, ax1, ay1), crs = a
    bx0, by0, bx1, by1 = transform_bounds(b[1], crs, *b[0]) if b[1] and crs and b[1] != crs else b[0]
    return ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1


def _scene_files(spec: JobSpec, rules: PathRules) -> list[Path]:
    found = []
    for value in _values(spec, "scenes"):
        for path in _expand(value, rules):
            if path.is_dir() and not path.name.endswith(".SAFE"):
                found += sorted(p for p in path.iterdir() if p.suffix.lower() in {".tif", ".tiff"} or p.is_dir())
            elif path.exists():
                found.append(path)
    return found


def _mask_overlap(spec: JobSpec, rules: PathRules, **_: Any) -> list[Finding]:
    """Each mask or vector label file overlaps at least one of the job's scenes."""
    masks = [p for v in _values(spec, "masks") for p in _expand(v, rules) if p.is_file()]
    if not masks:
        return []
    scenes = [fp for fp in (_footprint(p) for p in _scene_files(spec, rules)) if fp is not None]
    if not scenes:
        return []
    findings = []
    for mask in masks:
        footprint = _footprint(mask)
        if footprint is not None and not any(_overlaps(scene, footprint) for scene in scenes):
            findings.append(Finding(spec.name, "masks", f"{mask} does not overlap any of the job's scenes"))
    return findings


# -- predict members -------------------------------------------------------------------------------------------


def _members(spec: JobSpec, rules: PathRules, store: Any, batch: dict[str, str], **_: Any) -> list[Finding]:
    """Members name checkpoint-writing jobs; checkpoint members agree with each other and with the scenes."""
    # predict's models, and the one model of an explain or plot job: each {job: x} must name a checkpoint writer
    members = getattr(spec, "models", None) if spec.kind == "predict" else None
    single = getattr(spec, "model", None) if spec.kind in ("explain", "plot") else None
    if single is not None and getattr(single, "job", None) is not None:
        members = [single]
    if not members:
        return []
    findings: list[Finding] = []
    cards = []
    for index, member in enumerate(members):
        where = f"models[{index}]" if spec.kind == "predict" else "model"
        if member.job is not None:
            kind = _kind_of(member.job, batch, store)
            if kind is None:
                findings.append(Finding(spec.name, where, f"no job named {member.job!r} (in this file or queued)"))
            elif kind not in CHECKPOINT_KINDS:
                kinds = "/".join(sorted(CHECKPOINT_KINDS))
                message = f"job {member.job!r} is a {kind} job: it writes no checkpoint (a member needs a {kinds} job)"
                findings.append(Finding(spec.name, where, message))
        elif member.checkpoint and rules.resolve(member.checkpoint).is_file():
            from torchbearer.ml.checkpoint import CheckpointError
            from torchbearer.ml.members import read_card

            try:
                cards.append((where, read_card(rules.resolve(member.checkpoint))))
            except CheckpointError as exc:
                findings.append(Finding(spec.name, where, str(exc)))
    if cards:
        findings += _card_agreement(spec, cards, rules)
    return findings


def _kind_of(ref: str | int, batch: dict[str, str], store: Any) -> str | None:
    """The kind of the job ``ref`` names, in this file or already queued; None: no such job."""
    kind = batch.get(str(ref))
    if kind is None and store is not None:
        job = store.find_job(ref)
        kind = job.kind if job is not None else None
    return kind


#: The kinds whose validation patches ``explain`` takes (``patches: {job: …}``).
PATCH_JOB_KINDS = ("train", "classify")


def _explained_patches(spec: JobSpec, rules: PathRules, store: Any, batch: dict[str, str], **_: Any) -> list[Finding]:
    """An explain job's ``patches: {job: x}`` names a train or classify job, of the kind its model's job is."""
    patches = getattr(spec, "patches", None) if spec.kind == "explain" else None
    if patches is None or patches.job is None:
        return []
    kind = _kind_of(patches.job, batch, store)
    if kind is None:
        return [Finding(spec.name, "patches.job", f"no job named {patches.job!r} (in this file or queued)")]
    if kind not in PATCH_JOB_KINDS:
        return [Finding(spec.name, "patches.job", f"job {patches.job!r} is a {kind} job: its validation patches "
                        "come from a train or classify job")]  # fmt: skip
    model_job = getattr(getattr(spec, "model", None), "job", None)
    model_kind = _kind_of(model_job, batch, store) if model_job is not None else None
    if model_kind in PATCH_JOB_KINDS and model_kind != kind:
        message = (f"job {patches.job!r} is a {kind} job, but the model comes from the {model_kind} job "
                   f"{model_job!r}: give that job's patches, or patches: {{folder: …}}")  # fmt: skip
        return [Finding(spec.name, "patches.job", message)]
    return []


def _card_agreement(spec: JobSpec, cards: list[tuple[str, Any]], rules: PathRules) -> list[Finding]:
    findings = []
    first_where, first = cards[0]
    for where, card in cards[1:]:
        for what in ("bands", "resolution", "classes", "value_domain"):
            if getattr(card, what) != getattr(first, what):
                findings.append(Finding(spec.name, where, f"{what} {getattr(card, what)} differ from "
                                        f"{first_where}'s {getattr(first, what)}: members must agree"))  # fmt: skip
    for scene in _scene_files(spec, rules):
        if scene.is_dir() and scene.name.endswith(".SAFE"):
            findings += _safe_agreement(spec, scene, cards)
            continue
        if scene.suffix.lower() not in {".tif", ".tiff"}:
            continue
        import rasterio

        from torchbearer.ml.domains import DomainError, check_domain

        with rasterio.open(scene) as ds:
            bands, resolution = [d for d in ds.descriptions if d], round(ds.res[0])
        for where, card in cards:
            try:  # a model trained on reflectance or 8-bit chips must not be given DN (nor the reverse)
                check_domain(card.value_domain, scene, where)
            except DomainError as exc:
                findings.append(Finding(spec.name, where, str(exc)))
            missing = [b for b in card.bands if bands and b not in bands]
            if missing:
                findings.append(Finding(spec.name, where, f"scene {scene.name} lacks the member's bands "
                                        f"{', '.join(missing)} (it has {', '.join(bands)})"))  # fmt: skip
            if card.resolution and resolution != card.resolution:
                findings.append(Finding(spec.name, where, f"scene {scene.name} is {resolution} m, the member was "
                                        f"trained at {card.resolution:g} m"))  # fmt: skip
    return findings


def _safe_agreement(spec: JobSpec, safe: Path, cards: list[tuple[str, Any]]) -> list[Finding]:
    """A SAFE folder is stacked at each member's resolution: the product must hold the member's bands there."""
    from torchbearer.imagery.safe import SafeError, read_safe

    try:
        product = read_safe(safe)
    except (SafeError, OSError) as exc:
        return [Finding(spec.name, "scenes", f"{safe.name}: {exc}")]
    findings = []
    for where, card in cards:
        try:
            have = product.bands(round(card.resolution))
        except SafeError as exc:
            findings.append(Finding(spec.name, where, str(exc)))
            continue
        missing = [b for b in card.bands if b not in have]
        if missing:
            message = (
                f"scene {safe.name} has no {', '.join(missing)} at {card.resolution:g} m (it has {', '.join(have)})"
            )
            findings.append(Finding(spec.name, where, message + ", which the member needs"))
    return findings


# -- credentials and disk --------------------------------------------------------------------------------------


def _credentials(spec: JobSpec, rules: PathRules, settings: Any, online: bool, **_: Any) -> list[Finding]:
    """A Copernicus job has its account (and, ``online``, the identity server gives it a token)."""
    imagery = getattr(spec, "imagery", None)
    if imagery is None or imagery.source != "copernicus":
        return []
    from torchbearer.imagery.copernicus import Credentials, CredentialsMissing

    try:
        credentials = Credentials.from_env(settings.secret)
    except CredentialsMissing as exc:  # a warning: they are read when the job runs, and may be set by then
        return [Finding(spec.name, "imagery.source", str(exc), certain=False)]
    if online:
        from torchbearer.imagery.copernicus import CdseEndpoints, CdseToken
        from torchbearer.imagery.http import HttpClient, RetryPolicy

        endpoints = CdseEndpoints.from_env(settings.secret)
        try:
            client = HttpClient(auth_hosts=endpoints.auth_hosts, connections=1, retry=RetryPolicy(attempts=1))
            CdseToken(client, credentials, endpoints.token_url).authorization()
        except Exception as exc:  # noqa: BLE001 - any refusal or network error is the finding
            return [Finding(spec.name, "imagery.source", f"no token from the Copernicus identity server: {exc}")]
    return []


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(_nearest_existing(folder)).free


def estimated_bytes(spec: JobSpec, rules: PathRules) -> int:
    """A rough upper estimate of what one job writes: fetched scenes, cache, maps, checkpoints (bytes)."""
    total = 0
    imagery = getattr(spec, "imagery", None)
    if imagery is not None and imagery.source != "local":
        total += imagery.max_scenes * SCENE_BYTES[imagery.resolution]
    if spec.kind == "train":
        total += TRAIN_RUN_BYTES
    if _values(spec, "output"):
        for scene in _scene_files(spec, rules):
            total += 4 * scene.stat().st_size if scene.is_file() else 0  # float maps, a class map, members
    return total


def _disk(parsed: list[ParsedJob], rules: PathRules, settings: Any, free: Callable[[Path], int]) -> list[Finding]:
    """The free disk (less ``TORCHBEARER_DISK_RESERVE_GB``) covers the file's estimated writes."""
    need = sum(estimated_bytes(job.spec, rules) for job in parsed)
    reserve = int(getattr(settings, "disk_reserve_bytes", 0))
    have = free(Path(settings.data_dir)) - reserve
    if need > have:
        gib = 1024**3
        name = parsed[0].spec.name if len(parsed) == 1 else f"{len(parsed)} jobs"
        return [Finding(name, "", f"about {need / gib:.1f} GiB will be written, {max(have, 0) / gib:.1f} GiB is "
                        f"free on {_nearest_existing(Path(settings.data_dir))} (after the "
                        f"{reserve / gib:.1f} GiB reserve, TORCHBEARER_DISK_RESERVE_GB)", certain=False)]  # fmt: skip
    return []


def refusals(findings: Iterable[Finding]) -> list[SpecIssue]:
    """The certain findings as the issues of a refused file."""
    return [finding.issue() for finding in findings if finding.certain]


def apply(findings: list[Finding], source: str) -> list[Finding]:
    """Raise :class:`~torchbearer.spec.JobFileError` listing every certain finding; return the warnings."""
    from torchbearer.spec import JobFileError

    if any(finding.certain for finding in findings):
        raise JobFileError(source, refusals(findings))
    return findings


def keep_warnings(store: Any, parsed: list[ParsedJob], ids: list[int], warnings: list[Finding]) -> None:
    """Store each job's warnings (``show`` and the dashboard read them with :func:`job_warnings`)."""
    queued = [job.spec.name for job in parsed if not job.spec.schedule]
    by_name = dict(zip(queued, ids, strict=False))
    for name, job_id in by_name.items():
        mine = [w.format() for w in warnings if w.job == name or w.job not in by_name]
        if mine:
            store.set_meta(f"{WARNINGS_KEY}{job_id}", mine)


def job_warnings(store: Any, job_id: int) -> list[str]:
    """What a user should know of a job besides its state: the pre-flight warnings kept when it was queued,
    then the warnings and errors its workers logged (the log markers of ``runs.py``), as ``attempt 2 logged:
    …`` or ``attempt 2 logged an error: …``."""
    logged = [
        f"attempt {mark['attempt']} logged{'' if mark['level'] == 'warning' else ' an ' + mark['level']}: "
        f"{mark['message']}"
        for mark in store.log_marks(job_id)
    ]
    return [*(store.meta(f"{WARNINGS_KEY}{job_id}") or []), *logged]
