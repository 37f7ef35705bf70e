"""Class activation maps of a whole scene: a float32 GeoTIFF on the scene's grid, made window by window.

The windows, their blending and the strip writer are ``predict``'s (``inference/stream.py``,
``inference/blending.py``, ``inference/writer.py``): a :class:`~torchbearer.inference.stream.GroupStream`
reads each window once, skips all-no-data ones, runs the CAMs instead of the forward pass, blends the maps
over the overlaps and hands over finished strips of rows, which are written as they come. Memory is a buffer
one window high and as wide as the scene, whatever its height. The GeoTIFF has one band per method, in the
layer's units (see ``cams.py``), NaN where the scene has no data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
import torch
from torch import nn

from torchbearer.explain.cams import CamMaker
from torchbearer.explain.model import ClassScore
from torchbearer.explain.patches import check_bands
from torchbearer.imagery.cache import StackError, stack_info
from torchbearer.inference.ensemble import GDAL_CACHE_BYTES
from torchbearer.inference.groups import InputBuffers
from torchbearer.inference.stream import READERS, GroupStream, StopRequested
from torchbearer.inference.writer import StripWriter
from torchbearer.ml.checkpoint import ModelCard, standardising_terms

Report = Callable[[int, int, float], None]
"""``report(windows_done, windows_total, megapixels_per_s)``."""


@dataclass
class SceneCamResult:
    """What a scene's CAMs wrote and took: the GeoTIFF, windows computed and skipped, seconds, megapixels."""

    path: Path
    windows: int
    windows_skipped: int
    seconds: float
    megapixels: float


class CamsInterrupted(Exception):
    """``should_stop`` turned True between two batches (the map is redone from the start next time)."""


def cam_readers(device: str) -> int:
    """Threads decoding windows for the CAMs: one on a CPU, ``predict``'s default on a GPU.

    On a CPU a CAM batch (forward and backward) takes many times a window's decoding, so one reader keeps the
    model fed; each further reader holds its own handle on the stack, and on a mosaic (a VRT) its own handle on
    every source file it touches, which made the resident set grow with the scene (measured on the bench's
    6 × 6 mosaic: +131 MB reading with four readers, +65 MB with one). A GPU's pass is fast enough to wait on
    one decoder, so there the readers stay.
    """
    return 1 if torch.device(device).type == "cpu" else READERS


def cam_forward(maker: CamMaker, card: ModelCard, terms: tuple[float, float], index: int, device: torch.device):
    """The function a :class:`GroupStream` runs on a batch of DN windows: their maps (one 'member')."""
    a, b = standardising_terms(terms, card.norm["mean"], card.norm["std"])
    scale, shift = torch.from_numpy(a).view(1, -1, 1, 1), torch.from_numpy(b).view(1, -1, 1, 1)
    binary = card.task == "binary"
    inputs, bands = InputBuffers(), torch.arange(len(card.bands))  # the stream reads the card's bands, in order

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        nodata = inputs.nodata(x)  # DN 0 in any band is no data (imagery/cache.py)
        xm = inputs.standardised(x, bands, scale, shift, torch.contiguous_format).masked_fill_(nodata, 0.0)
        xm = xm.to(device)
        targets = [ClassScore(index, binary, ~nodata[k, 0]) for k in range(len(x))]
        return [torch.from_numpy(maker(xm, targets))]

    return forward


def scene_cams(
    model: nn.Module,
    card: ModelCard,
    layer: nn.Module,
    methods: list[str],
    class_index: int,
    stack: Path,
    output: Path,
    *,
    window: int = 256,
    overlap: float = 0.25,
    batch_size: int = 4,
    device: str = "cpu",
    report: Report | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SceneCamResult:
    """Write the CAMs of class ``class_index`` over a stacked scene into the COG ``output``.

    Args:
        model, card: the network (eval mode, on ``device``) and its card; layer: the target layer (a module of
            ``model``); methods: some of ``cams.METHODS``, one band each.
        stack: the scene (``imagery/cache.py`` format) at the card's resolution, holding its bands.
        window, overlap, batch_size: as for ``predict`` (pixels, fraction, windows a pass).

    Raises:
        ExplainError: the scene's bands or resolution do not fit the model (before any window is read).
        CamsInterrupted: ``should_stop`` said so.
    """
    try:
        info = stack_info(stack)
    except StackError as exc:
        from torchbearer.explain.model import ExplainError

        raise ExplainError(str(exc)) from None
    indexes = check_bands(info, card)
    started = time.perf_counter()
    maker = CamMaker(model, layer, methods)
    forward = cam_forward(maker, card, info.reflectance_terms, class_index, torch.device(device))
    profile = {"crs": info.crs, "transform": info.transform, "width": info.width, "height": info.height}
    output = Path(output)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(stack) as dataset:
        stream = GroupStream(
            dataset, indexes, forward, members=1, classes=len(methods), size=window, overlap=overlap,
            batch_size=batch_size, should_stop=should_stop, strip_rows=32, readers=cam_readers(device),
        )  # fmt: skip
        writer = StripWriter(output, profile, len(methods), resume=False, dtype="float32", nodata=float("nan"))
        strips = stream.strips()
        try:
            for strip in strips:
                values = strip.probs[0]
                values[:, ~strip.valid] = np.nan
                writer.write(values.astype(np.float32, copy=False), strip.row)
                if report is not None:
                    rows = strip.row + values.shape[1]
                    rate = rows * info.width / 1e6 / max(time.perf_counter() - started, 1e-9)
                    report(stream.stats.windows_done, stream.grid.count, rate)
        except StopRequested:
            writer.close()
            raise CamsInterrupted("scene CAMs stopped on request; they are redone from the start") from None
        except BaseException:
            writer.close()
            raise
        finally:
            strips.close()
            maker.close()
        tags = {
            "TORCHBEARER_EXPLAINS": f"class {card.classes[class_index]!r} of {card.arch}",
            "TORCHBEARER_METHODS": ",".join(methods),
            "TORCHBEARER_VALUES": "activation × weight of the target layer, ≥ 0; NaN = no data",
            "TORCHBEARER_WINDOW": f"{window} px, overlap {overlap:g}",
            "TORCHBEARER_CREATED": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        writer.finish(tags, list(methods), None, "average")
    return SceneCamResult(
        path=output,
        windows=stream.grid.count,
        windows_skipped=stream.stats.windows_skipped,
        seconds=time.perf_counter() - started,
        megapixels=info.width * info.height / 1e6,
    )
