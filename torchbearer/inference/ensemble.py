"""Ensemble prediction of one scene into a Cloud-Optimized GeoTIFF probability map.

Members are grouped by resolution; each group reads its own stack of the scene once per window for all its
members (:class:`~torchbearer.inference.stream.GroupStream`). Each member's probabilities (after sigmoid or
softmax) are blended over the overlapping windows, resampled onto the output grid (the finest member's stack)
where its resolution differs, combined (``mean``, ``weighted``, ``vote``, ``max``) and written strip by strip.
Pixels where the input has no data (DN 0 in a band) stay no data.

An interrupted prediction (``should_stop`` returning True, polled before each batch) records how many rows are
written and raises :class:`PredictionInterrupted`; the next call with the same members, inputs and options
resumes at that row and writes the same bytes an uninterrupted run writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse as fuse_conv_bn

from torchbearer.imagery.cache import StackInfo, band_indexes, stack_info
from torchbearer.inference.stream import (
    ForwardFn,
    Grid,
    GroupStream,
    Resampler,
    RowCache,
    StopRequested,
    StreamStats,
)
from torchbearer.inference.writer import (
    NODATA,
    PROBABILITY_SCALE,
    BackgroundWriter,
    ResumeRecord,
    StripWriter,
    partial_path,
    quantise,
)
from torchbearer.ml.checkpoint import ModelCard, standardising_terms
from torchbearer.ml.domains import DomainError, check_domain

log = logging.getLogger(__name__)

Combine = Literal["mean", "weighted", "vote", "max"]
TTA = Literal["none", "flips", "d4"]
Report = Callable[[int, int, float, float | None], None]
"""``report(windows_done, windows_total, megapixels_per_s, eta_s)``."""

STRIP_ROWS = 32
"""Rows of the output combined and written at a time (and the step at which an interrupted run resumes)."""
GDAL_CACHE_BYTES = 64 * 2**20
"""GDAL block cache while predicting: a row of input tiles, and flat whatever the scene's size (rasterio
passes an integer ``GDAL_CACHEMAX`` to GDAL as bytes, not megabytes)."""


class EnsembleError(ValueError):
    """The members or inputs cannot make an ensemble prediction; the message says which and why."""


class PredictionInterrupted(Exception):
    """Stopped on request after ``rows_done`` rows were written; calling again resumes there."""

    def __init__(self, rows_done: int, height: int) -> None:
        super().__init__(f"prediction stopped after {rows_done} of {height} rows; it resumes there")
        self.rows_done = rows_done


@dataclass
class Member:
    """One model of the ensemble.

    Args:
        name: short name used in tags and per-member map names.
        model: the network (eval mode), outputs logits of shape B × channels × H × W.
        card: its model card (``ml.checkpoint.ModelCard``: task, classes, bands, resolution, norm).
        source: where it came from (a checkpoint path), for tags and to recognise a resumable run.
        weight: its weight for ``combine: weighted`` (and weighted votes).
    """

    name: str
    model: nn.Module
    card: ModelCard
    source: str = ""
    weight: float = 1.0


@dataclass(frozen=True)
class PredictOptions:
    """How to predict. Sizes in pixels of each member's own grid."""

    window: int = 256
    overlap: float = 0.25
    batch_size: int = 8
    combine: Combine = "mean"
    tta: TTA = "none"
    class_map: bool = False
    member_maps: bool = False
    device: str = "cpu"
    optimize: bool = True
    """Speed up the forward: see :func:`prepare_model`."""
    runtime: str = "torch"
    """What runs the members' forward, one entry per member joined by commas (``torch`` / ``onnx``, as
    ``inference.onnx.choose_runtimes`` set them): part of the fingerprint, so a resumed run uses the same."""


@dataclass
class PredictResult:
    """What a prediction wrote and did."""

    output: Path
    class_map: Path | None
    member_maps: dict[str, Path]
    windows: int
    windows_skipped: int
    seconds: float
    megapixels: float
    resumed_from_row: int
    stats: dict[float, StreamStats] = field(default_factory=dict)
    models: list[nn.Module] = field(default_factory=list)
    """The members' models as run (see :func:`prepare_model`), in the members' order."""


# -- members ---------------------------------------------------------------------------------------------------


def check_compatible(members: Sequence[Member]) -> None:
    """Refuse members that do not predict the same classes the same way (before any window is read)."""
    if not members:
        raise EnsembleError("an ensemble needs at least one model")
    first = members[0]
    for other in members[1:]:
        a, b = first.card, other.card
        if (a.task, list(a.classes), a.num_classes) != (b.task, list(b.classes), b.num_classes):
            raise EnsembleError(
                f"models {first.name!r} and {other.name!r} are incompatible: {first.name} predicts "
                f"{a.task} {list(a.classes)} ({first.source or 'in memory'}), {other.name} predicts "
                f"{b.task} {list(b.classes)} ({other.source or 'in memory'}); an ensemble needs the same classes"
            )
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise EnsembleError(f"model names must differ, got {names}")


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Sigmoid of a binary model's one channel, softmax over a multiclass model's channels."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == "binary" else torch.softmax(logits, dim=1)


def tta_transforms(
    tta: TTA,
) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]]:
    """(transform, inverse) pairs on the last two axes: identity; + flips; or the 8 of the dihedral group."""
    identity = (lambda t: t, lambda t: t)
    if tta == "none":
        return [identity]
    if tta == "flips":
        return [identity, (lambda t: t.flip(-1), lambda t: t.flip(-1)), (lambda t: t.flip(-2), lambda t: t.flip(-2))]
    pairs = []
    for k in range(4):
        pairs.append((lambda t, k=k: t.rot90(k, (-2, -1)), lambda t, k=k: t.rot90(-k, (-2, -1))))
        pairs.append((lambda t, k=k: t.flip(-1).rot90(k, (-2, -1)), lambda t, k=k: t.rot90(-k, (-2, -1)).flip(-1)))
    return pairs


def combine(probs: np.ndarray, weights: np.ndarray, rule: Combine, task: str) -> np.ndarray:
    """Combine member probabilities (members × classes × …) into one (classes × …).

    ``mean``: plain mean; ``weighted``: mean with the members' weights; ``vote``: the (weighted) share of members
    deciding for each class (binary: p ≥ 0.5; multiclass: argmax); ``max``: per class, the largest probability.
    """
    if rule == "mean":
        return probs.mean(axis=0)
    if rule == "max":
        return probs.max(axis=0)
    share = (weights / weights.sum()).astype(np.float32)
    if rule == "weighted":
        return np.tensordot(share, probs, axes=1)
    if task == "binary":
        votes = (probs >= 0.5).astype(np.float32)
    else:
        votes = (probs.argmax(axis=1)[:, None] == np.arange(probs.shape[1])[None, :, None, None]).astype(np.float32)
    return np.tensordot(share, votes, axes=1)


def class_map(combined: np.ndarray, task: str, threshold: float = 0.5) -> np.ndarray:
    """Class index (uint8) per pixel from combined probabilities (classes × …); a binary task's target where
    its probability reaches ``threshold``."""
    if task == "binary":
        return (combined[0] >= threshold).astype(np.uint8)
    return combined.argmax(axis=0).astype(np.uint8)


def model_threshold(members: list[Any]) -> float:
    """A binary class map's threshold: the F1-optimal one of the training report, recorded in each member's
    card (``extra.threshold``); the mean over members, 0.5 for a member without one."""
    return float(np.mean([float(m.card.extra.get("threshold", 0.5)) for m in members]))


# -- stacks and groups -----------------------------------------------------------------------------------------


@dataclass
class _Group:
    """Members sharing a resolution, and the stack they read."""

    members: list[int]
    info: StackInfo
    dataset: rasterio.io.DatasetReader
    indexes: list[int]
    grid: Grid


def _group_members(members: Sequence[Member], stacks: Sequence[Path], context: ExitStack) -> list[_Group]:
    """Group the members by resolution, each with the scene's stack at that resolution (finest first)."""
    infos: dict[float, StackInfo] = {}
    for path in stacks:
        info = stack_info(path)
        res = round(info.resolution, 6)
        if res in infos:
            raise EnsembleError(f"two inputs at {res:g} m for one scene: {infos[res].path} and {path}")
        infos[res] = info
    if len({str(i.crs) for i in infos.values()}) > 1:
        raise EnsembleError(f"the inputs of one scene must share a CRS: {', '.join(str(s) for s in stacks)}")
    chosen: dict[float, list[int]] = {}
    for i, member in enumerate(members):
        res = round(float(member.card.resolution), 6)
        if res not in infos:
            have = ", ".join(f"{r:g} m" for r in sorted(infos)) or "none"
            raise EnsembleError(f"model {member.name!r} needs the scene at {res:g} m; the inputs are at {have}")
        band_indexes(infos[res], member.card.bands)  # raises naming the bands the stack lacks
        differences = getattr(member.card, "input_differences", lambda *_: [])
        for difference in differences(infos[res].product_level, infos[res].offset):
            log.warning("model %r, scene %s: %s", member.name, infos[res].path.name, difference)
        try:  # a model trained on reflectance or 8-bit chips must not see DN (nor the reverse)
            check_domain(member.card.value_domain, infos[res].path, repr(member.name))
        except DomainError as exc:
            raise EnsembleError(str(exc)) from None
        chosen.setdefault(res, []).append(i)
    groups = []
    for res in sorted(chosen):
        info = infos[res]
        wanted = {b for i in chosen[res] for b in members[i].card.bands}
        indexes = band_indexes(info, [b for b in info.bands if b in wanted])  # stack order: one read
        dataset = context.enter_context(rasterio.open(info.path))
        grid = Grid(info.crs, info.transform, info.width, info.height)
        groups.append(_Group(chosen[res], info, dataset, indexes, grid))
    return groups


def prepare_model(model: nn.Module, device: torch.device, optimize: bool) -> nn.Module:
    """A member ready for inference on ``device``, in eval mode.

    On a GPU: channels-last layout (the forward runs under float16 autocast). On a CPU with ``optimize``:
    channels-last layout (oneDNN's fast convolution kernels) and batch norms folded into the convolutions
    (``torch.fx``); together 1.3–2× the eager forward of FCN, FarSeg and U-Net on the CPUs here, for well under
    a second of preparation (TorchScript freezing gains about as much but costs seconds per model and warm-up
    calls). A model ``torch.fx`` cannot trace stays eager, channels-last. A classical member (``is_classical``:
    a random forest on pixels, ``ml/forest.py``) runs as it is.
    """
    if getattr(model, "is_classical", False):
        return model.eval()
    if getattr(model, "prepared", False):  # an ONNX Runtime session (inference/onnx.py): nothing to convert
        return model
    model = model.to(device).eval()
    if device.type == "cuda" or optimize:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda" or not optimize:
        return model
    try:
        return fuse_conv_bn(model)
    except Exception as exc:  # noqa: BLE001 - fx tracing fails in many ways on dynamic models; eager still works
        log.warning("could not fold batch norms of %s (%s): it runs unfolded", type(model).__name__, exc)
        return model


def channels_last(device: torch.device, optimize: bool) -> bool:
    """Whether inputs go in channels-last layout (the layout :func:`prepare_model` gave the members)."""
    return device.type == "cuda" or optimize


def group_forward(
    members: Sequence[Member],
    models: Sequence[nn.Module],
    group: _Group,
    options: PredictOptions,
    device: torch.device,
) -> ForwardFn:
    """The function that runs a group's members on a batch of DN windows (B × bands read × size × size)."""
    names = [group.info.bands[k - 1] for k in group.indexes]
    plans = []
    for member, model in zip(members, models, strict=True):
        pick = torch.tensor([names.index(b) for b in member.card.bands])
        # DN → reflectance → standardised in one multiply-add, as in training.
        a, b = standardising_terms(group.info.reflectance_terms, member.card.norm["mean"], member.card.norm["std"])
        plans.append(
            (member, model, pick, torch.from_numpy(a).view(1, -1, 1, 1), torch.from_numpy(b).view(1, -1, 1, 1))
        )
    transforms = tta_transforms(options.tta)
    amp = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    layout = torch.channels_last if channels_last(device, options.optimize) else torch.contiguous_format

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        nodata = (x == 0).any(dim=1, keepdim=True)  # DN 0 in any band is no data (imagery/cache.py)
        out = []
        with torch.inference_mode(), amp:
            for member, model, pick, scale, shift in plans:
                xm = torch.addcmul(shift, x[:, pick], scale).masked_fill_(nodata, 0.0)
                xm = xm.to(device, non_blocking=True).contiguous(memory_format=layout)
                total = None
                for apply, invert in transforms:
                    logits = model(apply(xm))
                    if logits.shape[-2:] != xm.shape[-2:]:
                        raise EnsembleError(
                            f"model {member.name!r} returned {tuple(logits.shape[-2:])} pixels for a "
                            f"{tuple(xm.shape[-2:])} window"
                        )
                    p = invert(probabilities(logits, member.card.task))
                    total = p if total is None else total + p
                out.append((total / len(transforms)).float().cpu())
        return out

    return forward


MMAP_THRESHOLD_BYTES = 2**20
"""Heap blocks from this size on are mapped (and unmapped when freed) by glibc: see :func:`map_large_blocks`."""


def map_large_blocks() -> None:
    """Have glibc map every allocation of 1 MiB or more (``mallopt(M_MMAP_THRESHOLD)``); elsewhere nothing.

    Windows, strips and their temporaries of many sizes, freed by several threads, otherwise land in glibc's
    heap arenas (its threshold rises to 32 MiB after the first large free) and fragment them, so the resident
    set grows with the scene's width (measured: 1.5× from a 1830² scene to a 5490² mosaic, 1.1× with this).
    The forward's large activations were mapped already; the process runs one job, so the setting stays.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    if hasattr(libc, "mallopt"):
        libc.mallopt(-3, MMAP_THRESHOLD_BYTES)  # -3: M_MMAP_THRESHOLD; also stops the threshold's rise


# -- the prediction ---------------------------------------------------------------------------------------------


def _fingerprint(members: Sequence[Member], stacks: Sequence[Path], options: PredictOptions) -> str:
    def stat(path: str | Path) -> list[Any]:
        p = Path(path)
        return [str(p), p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [str(p)]

    described = {
        "members": [[m.name, m.weight, stat(m.source) if m.source else type(m.model).__name__] for m in members],
        "stacks": [stat(s) for s in stacks],
        "options": options.__dict__,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


FINGERPRINT_TAG = "TORCHBEARER_FINGERPRINT"


def is_complete(output: Path, members: Sequence[Member], stacks: Sequence[Path], options: PredictOptions) -> bool:
    """Whether ``output`` is the finished map of exactly this prediction (same members, inputs, options)."""
    if not Path(output).is_file():
        return False
    try:
        with rasterio.open(output) as ds:
            return ds.tags().get(FINGERPRINT_TAG) == _fingerprint(members, stacks, options)
    except rasterio.errors.RasterioError:
        return False


def member_map_path(output: Path, name: str) -> Path:
    """Where member ``name``'s own map goes next to ``output``."""
    return output.with_name(f"{output.stem}.{name}{output.suffix}")


def class_map_path(output: Path) -> Path:
    """Where the class map goes next to ``output``."""
    return output.with_name(f"{output.stem}.classes{output.suffix}")


def map_paths(output: Path, members: Sequence[Member], options: PredictOptions) -> dict[str, Path]:
    """The maps to write: ``probability``, optionally ``classes`` and ``member:<name>`` in the members' order."""
    paths = {"probability": output}
    if options.class_map:
        paths["classes"] = class_map_path(output)
    if options.member_maps:
        paths.update({f"member:{m.name}": member_map_path(output, m.name) for m in members})
    return paths


def _open_streams(
    groups: list[_Group],
    members: Sequence[Member],
    models: list[nn.Module],
    out_grid: Grid,
    rows_done: int,
    options: PredictOptions,
    should_stop: Callable[[], bool] | None,
) -> tuple[list[GroupStream], list[RowCache]]:
    """A stream per group starting where output row ``rows_done`` needs it, and its rows on the output grid."""
    streams, caches = [], []
    classes = 1 if members[0].card.task == "binary" else int(members[0].card.num_classes)
    for group in groups:
        resampler = Resampler(group.grid, out_grid)
        start = resampler.source_rows(rows_done, min(rows_done + 1, out_grid.height))[0]
        forward = group_forward(
            [members[i] for i in group.members], [models[i] for i in group.members], group, options,
            torch.device(options.device),
        )  # fmt: skip
        stream = GroupStream(
            group.dataset, group.indexes, forward, members=len(group.members), classes=classes,
            size=options.window, overlap=options.overlap, batch_size=options.batch_size, start_row=start,
            should_stop=should_stop, strip_rows=STRIP_ROWS,
        )  # fmt: skip
        streams.append(stream)
        caches.append(RowCache(stream.strips(), resampler, start))
    return streams, caches


def predict_scene(
    members: Sequence[Member],
    stacks: Sequence[Path],
    output: Path,
    options: PredictOptions = PredictOptions(),
    *,
    report: Report | None = None,
    should_stop: Callable[[], bool] | None = None,
    created: float | None = None,
) -> PredictResult:
    """Predict one scene with an ensemble and write the combined map (and optional class / member maps).

    Args:
        members: the models (checked for compatibility first).
        stacks: the scene as stacked GeoTIFFs (``imagery/cache.py`` format), one per resolution the members use.
        output: the COG to write; the output grid is the finest member's stack's.
        options: windows, batches, combining, augmentation, device.
        report: called after each strip with progress.
        should_stop: polled before each batch and after each strip; True stops there, keeping the strips
            written (:class:`PredictionInterrupted`).
        created: UNIX time recorded in the tags (default: when this prediction first started).
    """
    check_compatible(members)
    map_large_blocks()
    started = time.perf_counter()
    device = torch.device(options.device)
    card = members[0].card
    classes = 1 if card.task == "binary" else int(card.num_classes)
    weights = np.array([m.weight for m in members], dtype=np.float64)
    threshold = model_threshold(members)
    if options.combine in ("weighted", "vote") and not (weights > 0).all():
        raise EnsembleError(f"model weights must be positive for combine: {options.combine}, got {weights.tolist()}")
    output = Path(output)
    paths = map_paths(output, members, options)
    record = ResumeRecord(output, _fingerprint(members, stacks, options))
    previous = record.load()
    if previous is not None and not all(partial_path(p).exists() for p in paths.values()):
        previous = None  # the record outlived its partial files: start over
    rows_done = int(previous["rows_done"]) if previous else 0
    first_started = float(previous["started"]) if previous else (created or time.time())

    with ExitStack() as context:
        context.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        groups = _group_members(members, stacks, context)
        out_grid = groups[0].grid
        models = [prepare_model(m.model, device, options.optimize) for m in members]
        streams, caches = _open_streams(groups, members, models, out_grid, rows_done, options, should_stop)
        order = np.argsort([i for g in groups for i in g.members])  # back to the members' own order

        profile = {"crs": out_grid.crs, "transform": out_grid.transform, "width": out_grid.width,
                   "height": out_grid.height}  # fmt: skip
        writers = {
            key: StripWriter(path, profile, 1 if key == "classes" else classes, previous is not None)
            for key, path in paths.items()
        }
        background = BackgroundWriter()

        windows_total = sum(s.grid.count for s in streams)
        row = rows_done
        try:
            while row < out_grid.height:
                end = min(row + STRIP_ROWS, out_grid.height)
                parts = [cache.rows(row, end) for cache in caches]
                probs = np.concatenate([p for p, _ in parts], axis=0)[order]
                valid = np.logical_and.reduce([v for _, v in parts])
                background.submit(_strip_job(writers, probs, valid, weights, options, card.task, row, threshold))
                row = end
                if report is not None:
                    elapsed = time.perf_counter() - started
                    rate = (row - rows_done) * out_grid.width / 1e6 / max(elapsed, 1e-9)
                    left = (out_grid.height - row) * out_grid.width / 1e6
                    done = sum(s.stats.windows_done for s in streams)
                    report(done, windows_total, rate, left / rate if rate > 0 else None)
                if row < out_grid.height and should_stop is not None and should_stop():
                    raise StopRequested
            background.join()
        except StopRequested:
            log.info("stop requested: %d of %d rows written, the rest on resume", row, out_grid.height)
            background.join()
            for writer in writers.values():
                writer.close()
            record.save(row, first_started)
            raise PredictionInterrupted(row, out_grid.height) from None
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                background.join()
            for writer in writers.values():
                writer.close()
            raise
        finally:
            for cache in caches:
                cache.close()  # stops the reader threads of a stream left half-way

        tags = {**_tags(members, options, first_started), FINGERPRINT_TAG: record.fingerprint}
        names = [card.classes[-1]] if card.task == "binary" else list(card.classes)
        for key, writer in writers.items():
            if key == "classes":
                writer.finish({**tags, **_class_map_tags(card)}, ["class"], None, "nearest")
            else:
                writer.finish(tags, names, 1.0 / PROBABILITY_SCALE, "average")
        record.clear()

    return PredictResult(
        output=output,
        class_map=paths.get("classes"),
        member_maps={m.name: paths[f"member:{m.name}"] for m in members if f"member:{m.name}" in paths},
        windows=windows_total,
        windows_skipped=sum(s.stats.windows_skipped for s in streams),
        seconds=time.perf_counter() - started,
        megapixels=(out_grid.height - rows_done) * out_grid.width / 1e6,
        resumed_from_row=rows_done,
        stats={g.info.resolution: s.stats for g, s in zip(groups, streams, strict=True)},
        models=models,
    )


def _strip_job(
    writers: dict[str, StripWriter],
    probs: np.ndarray,
    valid: np.ndarray,
    weights: np.ndarray,
    options: PredictOptions,
    task: str,
    row: int,
    threshold: float = 0.5,
) -> Callable[[], None]:
    """The work of one strip, done in the writer thread: combine, quantise, write every map."""

    def job() -> None:
        combined = combine(probs, weights, options.combine, task)
        writers["probability"].write(quantise(combined, valid), row)
        if "classes" in writers:
            classes = class_map(combined, task, threshold)
            classes[~valid] = NODATA
            writers["classes"].write(classes[None], row)
        member_writers = [w for key, w in writers.items() if key.startswith("member:")]
        for m, writer in enumerate(member_writers):  # in the members' order
            writer.write(quantise(probs[m], valid), row)

    return job


def _class_map_tags(card: Any) -> dict[str, str]:
    """Tags of the class map: its values are class indexes (the probability map's tags say probabilities)."""
    legend = ", ".join(f"{i} = {name}" for i, name in enumerate(card.classes))
    return {"TORCHBEARER_VALUES": f"class index ({legend}), {NODATA} = no data"}


def _tags(members: Sequence[Member], options: PredictOptions, started: float) -> dict[str, str]:
    card = members[0].card
    models = [
        {"name": m.name, "source": m.source, "arch": getattr(m.card, "arch", type(m.model).__name__),
         "resolution": m.card.resolution, "weight": m.weight}
        for m in members
    ]  # fmt: skip
    return {
        "TORCHBEARER_MODELS": json.dumps(models),
        "TORCHBEARER_COMBINE": options.combine,
        "TORCHBEARER_TTA": options.tta,
        "TORCHBEARER_WINDOW": f"{options.window} px, overlap {options.overlap:g}",
        "TORCHBEARER_CLASSES": json.dumps(list(card.classes)),
        "TORCHBEARER_VALUES": f"probability × {PROBABILITY_SCALE} (0–{PROBABILITY_SCALE}), {NODATA} = no data",
        "TORCHBEARER_CREATED": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
    }
