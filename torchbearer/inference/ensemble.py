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
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from torch import nn

from torchbearer.imagery.cache import StackBuild
from torchbearer.imagery.grid import Grid
from torchbearer.inference.combine import Combine, class_map, combine
from torchbearer.inference.groups import ResolutionGroup, group_forward, group_members
from torchbearer.inference.members import EnsembleError, Member, check_compatible, model_threshold
from torchbearer.inference.paths import map_paths
from torchbearer.inference.prepare import prepare_model
from torchbearer.inference.resume import FINGERPRINT_TAG, fingerprint
from torchbearer.inference.stream import GroupStream, Resampler, RowCache, StopRequested, StreamStats
from torchbearer.inference.tta import TTA
from torchbearer.inference.writer import (
    NODATA,
    PROBABILITY_SCALE,
    BackgroundWriter,
    ResumeRecord,
    StripWriter,
    partial_path,
    quantise,
)

log = logging.getLogger(__name__)

Report = Callable[[int, int, float, float | None], None]
"""``report(windows_done, windows_total, megapixels_per_s, eta_s)``."""

STRIP_ROWS = 32
"""Rows of the output combined and written at a time (and the step at which an interrupted run resumes)."""
GDAL_CACHE_BYTES = 64 * 2**20
"""GDAL block cache while predicting: a row of input tiles, and flat whatever the scene's size (rasterio
passes an integer ``GDAL_CACHEMAX`` to GDAL as bytes, not megabytes)."""


class PredictionInterrupted(Exception):
    """Stopped on request after ``rows_done`` rows were written; calling again resumes there."""

    def __init__(self, rows_done: int, height: int) -> None:
        super().__init__(f"prediction stopped after {rows_done} of {height} rows; it resumes there")
        self.rows_done = rows_done


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


def _open_streams(
    groups: list[ResolutionGroup],
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
        resampler = Resampler(group.info, out_grid)
        start = resampler.source_rows(rows_done, min(rows_done + 1, out_grid.height))[0]
        forward = group_forward(
            [members[i] for i in group.members], [models[i] for i in group.members], group, options,
            torch.device(options.device),
        )  # fmt: skip
        stream = GroupStream(
            group.dataset, group.indexes, forward, members=len(group.members), classes=classes,
            size=options.window, overlap=options.overlap, batch_size=options.batch_size, start_row=start,
            should_stop=should_stop, strip_rows=STRIP_ROWS, building=group.building,
        )  # fmt: skip
        streams.append(stream)
        caches.append(RowCache(stream.strips(), resampler, start))
    return streams, caches


def predict_scene(
    members: Sequence[Member],
    stacks: Sequence[Path | StackBuild],
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
        stacks: the scene as stacked GeoTIFFs (``imagery/cache.py`` format), one per resolution the members use;
            a :class:`~torchbearer.imagery.cache.StackBuild` (a first prediction from a SAFE folder) is built
            while it is read, windows following its strips.
        output: the COG to write; the output grid is the finest member's stack's.
        options: windows, batches, combining, augmentation, device.
        report: called after each strip with progress.
        should_stop: polled before each batch and after each strip; True stops there, keeping the strips
            written (:class:`PredictionInterrupted`).
        created: UNIX time recorded in the tags (default: when this prediction first started).
    """
    check_compatible(members)
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
    record = ResumeRecord(output, fingerprint(members, stacks, options))
    previous = record.load()
    if previous is not None and not all(partial_path(p).exists() for p in paths.values()):
        previous = None  # the record outlived its partial files: start over
    rows_done = int(previous["rows_done"]) if previous else 0
    first_started = float(previous["started"]) if previous else (created or time.time())

    with ExitStack() as context:
        context.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        builds = [s for s in stacks if isinstance(s, StackBuild)]
        for build in builds:  # a prediction that fails or stops abandons a build it started (no stack is left)
            context.callback(build.cancel)
        groups = group_members(members, stacks, context)
        out_grid: Grid = groups[0].info.grid
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
                probs, valid = _strip_of(caches, order, row, end)
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
        stats = {g.info.resolution: s.stats for g, s in zip(groups, streams, strict=True)}
        windows_skipped = sum(s.stats.windows_skipped for s in streams)
        del streams, caches  # their window, batch and row arrays go before the COGs are written

        for build in builds:
            build.finish()  # its last rows were read: it is being renamed into place
        # Taken again: a stack built during the prediction had no size and time when it started.
        tags = {**_tags(members, options, first_started), FINGERPRINT_TAG: fingerprint(members, stacks, options)}
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
        windows_skipped=windows_skipped,
        seconds=time.perf_counter() - started,
        megapixels=(out_grid.height - rows_done) * out_grid.width / 1e6,
        resumed_from_row=rows_done,
        stats=stats,
        models=models,
    )


def _strip_of(caches: list[RowCache], order: np.ndarray, row: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Output rows ``[row, end)`` of every member (in the members' order) and where all inputs have data: one
    group's rows as they are (views, no copy), several groups' joined."""
    parts = [cache.rows(row, end) for cache in caches]
    if len(parts) == 1:
        return parts[0]  # one group: its members are in the members' order already
    probs = np.concatenate([p for p, _ in parts], axis=0)[order]
    return probs, np.logical_and.reduce([v for _, v in parts])


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
