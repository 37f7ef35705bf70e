"""Members grouped by resolution: each group reads the scene's stack at its resolution once per window for all its
members, and runs them on a batch of DN windows (reflectance, standardising, no data, TTA in one function)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import rasterio
import torch
from torch import nn

from torchbearer.imagery.cache import StackBuild, StackInfo, band_indexes, stack_info
from torchbearer.inference.combine import probabilities
from torchbearer.inference.members import EnsembleError, Member
from torchbearer.inference.prepare import input_layout
from torchbearer.inference.stream import ForwardFn
from torchbearer.inference.tta import tta_transforms
from torchbearer.ml.checkpoint import standardising_terms
from torchbearer.ml.domains import DomainError, check_domain

if TYPE_CHECKING:
    from torchbearer.inference.ensemble import PredictOptions

log = logging.getLogger(__name__)


@dataclass
class ResolutionGroup:
    """Members sharing a resolution, and the stack they read."""

    members: list[int]
    """Indexes of the group's members in the ensemble."""
    info: StackInfo
    """The stack they read (its grid is the group's grid)."""
    dataset: rasterio.io.DatasetReader | None
    """The open stack; None while it is being built (windows come from the build's strips in memory)."""
    indexes: list[int]
    """The stack's bands any of them needs, 1-based, in stack order (one read per window)."""
    building: StackBuild | None = None
    """The stack while it is being built (windows wait for its strips), None for a finished one."""


def group_members(
    members: Sequence[Member], stacks: Sequence[Path | StackBuild], context: ExitStack
) -> list[ResolutionGroup]:
    """Group the members by resolution, each with the scene's stack at that resolution (finest first).

    A stack still to be built (:class:`~torchbearer.imagery.cache.StackBuild`) is started here: its grid, bands
    and tags are known at once, its pixels follow strip by strip (one built meanwhile by another process is
    read as a finished stack).
    """
    infos: dict[float, StackInfo] = {}
    builds: dict[float, StackBuild] = {}
    for path in stacks:
        if isinstance(path, StackBuild):
            path.start()
            info = path.info or stack_info(path.path)
            if path.info is not None:
                builds[round(info.resolution, 6)] = path
        else:
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
            found = "dn" if res in builds else None  # a stack being built holds DN, and is not readable yet
            check_domain(member.card.value_domain, infos[res].path, repr(member.name), found)
        except DomainError as exc:
            raise EnsembleError(str(exc)) from None
        chosen.setdefault(res, []).append(i)
    groups = []
    for res in sorted(chosen):
        info = infos[res]
        wanted = {b for i in chosen[res] for b in members[i].card.bands}
        indexes = band_indexes(info, [b for b in info.bands if b in wanted])  # stack order: one read
        building = builds.get(res)
        dataset = None if building else context.enter_context(rasterio.open(info.path))
        groups.append(ResolutionGroup(chosen[res], info, dataset, indexes, building))
    return groups


def group_forward(
    members: Sequence[Member],
    models: Sequence[nn.Module],
    group: ResolutionGroup,
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
        scale, shift = torch.from_numpy(a).view(1, -1, 1, 1), torch.from_numpy(b).view(1, -1, 1, 1)
        plans.append((member, model, pick, scale, shift, input_layout(model, device, options.optimize)))
    transforms = tta_transforms(options.tta)
    amp = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    inputs = InputBuffers()

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        nodata = inputs.nodata(x)  # DN 0 in any band is no data (imagery/cache.py)
        out = []
        with torch.inference_mode(), amp:
            for member, model, pick, scale, shift, layout in plans:
                xm = inputs.standardised(x, pick, scale, shift, layout).masked_fill_(nodata, 0.0)
                xm = xm.to(device, non_blocking=True)
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
                assert total is not None
                if len(transforms) > 1:
                    total = total / len(transforms)
                out.append(total.float().cpu())
        return out

    return forward


class InputBuffers:
    """The arrays a group's forward fills each batch (the no-data mask, each layout's standardised input) and
    refills the next, instead of allocating them afresh: a batch's inputs are tens of MiB, and fresh blocks of
    those sizes on the forward's thread fragment glibc's heap (see ``inference/stream.py``). One forward thread
    uses them; each member's input is consumed before the next member's is written."""

    def __init__(self) -> None:
        self._arrays: dict[tuple, torch.Tensor] = {}

    def _array(self, shape: tuple[int, ...], dtype: torch.dtype, layout: torch.memory_format) -> torch.Tensor:
        """A ``shape`` view into the kept array of that kind (grown when a larger batch comes)."""
        key = (shape[1:], dtype, layout)
        kept = self._arrays.get(key)
        if kept is None or kept.shape[0] < shape[0]:
            kept = self._arrays[key] = torch.empty(shape, dtype=dtype, memory_format=layout)
        return kept[: shape[0]]

    def nodata(self, x: torch.Tensor) -> torch.Tensor:
        """Where any band of ``x`` (B × bands × h × w DN) is 0: B × 1 × h × w, bool."""
        b, bands, h, w = x.shape
        mask = self._array((b, 1, h, w), torch.bool, torch.contiguous_format)
        band = self._array((b, h, w), torch.bool, torch.contiguous_format)
        torch.eq(x[:, 0], 0, out=mask[:, 0])
        for k in range(1, bands):  # band by band: the whole comparison at once is a B × bands × h × w temporary
            mask[:, 0].logical_or_(torch.eq(x[:, k], 0, out=band))
        return mask

    def standardised(
        self, x: torch.Tensor, pick: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
        layout: torch.memory_format,
    ) -> torch.Tensor:  # fmt: skip
        """``shift + x[:, pick] × scale`` (float32, in ``layout``): DN to the member's standardised input.

        Copied into the float array (one pass, into the layout), then scaled there: ``addcmul`` straight from
        the uint16 batch would cast it into a float temporary of the whole batch first (and ``x[:, pick]``
        allocate another).
        """
        b, bands, h, w = x.shape
        out = self._array((b, len(pick), h, w), torch.float32, layout)
        if len(pick) == bands and bool((pick == torch.arange(bands)).all()):
            out.copy_(x)
        else:
            picked = self._array((b, len(pick), h, w), x.dtype, torch.contiguous_format)
            out.copy_(torch.index_select(x, 1, pick, out=picked))
        return torch.addcmul(shift, out, scale, out=out)
