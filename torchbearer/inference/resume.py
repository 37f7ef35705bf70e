"""Recognising a prediction: a fingerprint of its members, inputs and options, written into the finished map (and
the resume record), so a finished map is not redone and an interrupted one resumes only with the same inputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rasterio

if TYPE_CHECKING:
    from torchbearer.inference.ensemble import PredictOptions
    from torchbearer.inference.members import Member

FINGERPRINT_TAG = "TORCHBEARER_FINGERPRINT"


def fingerprint(members: Sequence[Member], stacks: Sequence[Path], options: PredictOptions) -> str:
    def stat(path: str | Path) -> list[Any]:
        p = Path(path)
        return [str(p), p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [str(p)]

    described = {
        "members": [[m.name, m.weight, stat(m.source) if m.source else type(m.model).__name__] for m in members],
        "stacks": [stat(s) for s in stacks],
        "options": options.__dict__,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def is_complete(output: Path, members: Sequence[Member], stacks: Sequence[Path], options: PredictOptions) -> bool:
    """Whether ``output`` is the finished map of exactly this prediction (same members, inputs, options)."""
    if not Path(output).is_file():
        return False
    try:
        with rasterio.open(output) as ds:
            return ds.tags().get(FINGERPRINT_TAG) == fingerprint(members, stacks, options)
    except rasterio.errors.RasterioError:
        return False
