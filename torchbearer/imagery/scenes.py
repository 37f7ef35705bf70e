"""A scene found by a search (either source), and how a job's scenes are picked among the hits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

#: ``S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454(.SAFE)``
_NAME = re.compile(
    r"^(?P<mission>S2[A-D])_MSI(?P<level>L[12][AC])_(?P<sensed>\d{8}T\d{6})_N(?P<baseline>\d{4})_R\d{3}"
    r"_T(?P<tile>\d{2}[A-Z]{3})_(?P<generated>\d{8}T\d{6})(\.SAFE)?$"
)


def parse_product_name(name: str) -> dict[str, str] | None:
    """Mission, level, sensing time, baseline (``"0400"``), tile and generation time of a product name."""
    match = _NAME.match(name)
    return match.groupdict() if match else None


@dataclass(frozen=True)
class Scene:
    """One product a search returned. ``cloud`` is percent of the scene, ``size`` bytes (when known)."""

    source: str
    id: str
    name: str
    sensed: datetime
    cloud: float | None = None
    tile: str | None = None
    size: int | None = None
    online: bool = True
    #: Source-specific details: the STAC item of an Earth Search scene.
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def stem(self) -> str:
        """The product name without ``.SAFE``: the scene cache's key."""
        return self.name.removesuffix(".SAFE")

    @property
    def baseline(self) -> str | None:
        """Processing baseline as ``"04.00"`` (None if the name does not say)."""
        parts = parse_product_name(self.name)
        return f"{parts['baseline'][:2]}.{parts['baseline'][2:]}" if parts else None


def _duplicate_key(scene: Scene) -> tuple:
    # The same acquisition over the same tile is often reprocessed (several baselines): keep one.
    parts = parse_product_name(scene.name)
    if parts is None:
        return (scene.name,)
    return (parts["mission"], parts["level"], parts["sensed"], parts["tile"])


def pick_scenes(
    scenes: list[Scene],
    *,
    max_scenes: int,
    pick: Literal["least-cloud", "newest"],
    tiles: list[str] | None = None,
) -> list[Scene]:
    """At most ``max_scenes`` scenes: the least cloudy (ties: newest) or the newest.

    Offline products and tiles not asked for are left out; of reprocessed duplicates the newest processing
    is kept. Scenes with no cloud figure sort after those with one.
    """
    newest: dict[tuple, Scene] = {}
    for scene in scenes:
        if not scene.online or (tiles and scene.tile not in tiles):
            continue
        key = _duplicate_key(scene)
        if key not in newest or scene.name > newest[key].name:
            newest[key] = scene
    kept = list(newest.values())
    if pick == "newest":
        kept.sort(key=lambda s: s.sensed, reverse=True)
    else:
        kept.sort(key=lambda s: (s.cloud is None, s.cloud or 0.0, -s.sensed.timestamp()))
    return kept[:max_scenes]
