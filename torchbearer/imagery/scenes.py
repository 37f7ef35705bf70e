"""A scene found by a search (either source), and how a job's scenes are picked among the hits (both sources
share the picking, the AOI-cloud ranking and the "nothing found" error)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torchbearer.imagery.spec import ImagerySpec

log = logging.getLogger(__name__)

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
class FoundScene:
    """One product a search (Copernicus or Earth Search) found: what it is, not its pixels. ``cloud`` is
    percent of the scene, ``size`` bytes (when known)."""

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


def _duplicate_key(scene: FoundScene) -> tuple:
    # The same acquisition over the same tile is often reprocessed (several baselines): keep one.
    parts = parse_product_name(scene.name)
    if parts is None:
        return (scene.name,)
    return (parts["mission"], parts["level"], parts["sensed"], parts["tile"])


def pick_scenes(
    scenes: list[FoundScene],
    *,
    max_scenes: int,
    pick: Literal["least-cloud", "newest"],
    tiles: list[str] | None = None,
) -> list[FoundScene]:
    """At most ``max_scenes`` scenes: the least cloudy (ties: newest) or the newest.

    Offline products and tiles not asked for are left out; of reprocessed duplicates the newest processing
    is kept. Scenes with no cloud figure sort after those with one.
    """
    newest: dict[tuple, FoundScene] = {}
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


class NoScenesError(LookupError):
    """The search found nothing to use (says what was searched, and what to widen)."""


def describe_search(spec: ImagerySpec) -> str:
    """What a spec searches for, in words (for the error when nothing is found)."""
    tiles = f", tiles {', '.join(spec.tiles)}" if spec.tiles else ""
    return f"{spec.product} over the AOI, {spec.dates}, cloud ≤ {spec.max_cloud:g} %{tiles}"


def pick_for_spec(spec: ImagerySpec, found: list[FoundScene]) -> list[FoundScene]:
    """The scenes ``spec`` asks for among a search's hits (logged); :class:`NoScenesError` if none is left."""
    scenes = pick_scenes(found, max_scenes=spec.max_scenes, pick=spec.pick, tiles=spec.tiles or None)
    if not scenes:
        raise NoScenesError(
            f"{spec.source}: no scene found ({describe_search(spec)}; {len(found)} hits before picking): "
            "widen dates or max_cloud, or check the aoi"
        )
    picked = ", ".join(f"{s.stem} ({'?' if s.cloud is None else f'{s.cloud:.0f}'} % cloud)" for s in scenes)
    log.info("%s: picked %s", spec.source, picked)
    return scenes


#: How many of the least cloudy scenes (by their whole-tile figure) have their cloud over the AOI measured,
#: per scene a job asks for: each costs the product's 60 m SCL layer, about 0.2 % of its bytes.
AOI_CLOUD_CANDIDATES_PER_SCENE = 3


def rank_by_aoi_cloud(
    spec: ImagerySpec, found: list[FoundScene], measure: Callable[[FoundScene], float | None]
) -> list[FoundScene]:
    """The best candidates with ``cloud`` replaced by ``measure(scene)``, their cloud over the AOI (0–1).

    Only worth it when there is a choice; a candidate that cannot be measured keeps its tile-wide figure.
    """
    from torchbearer.imagery.http import ChecksumError, HttpError

    count = max(spec.max_scenes * AOI_CLOUD_CANDIDATES_PER_SCENE, spec.max_scenes)
    candidates = pick_scenes(found, max_scenes=count, pick="least-cloud", tiles=spec.tiles or None)
    if len(candidates) <= spec.max_scenes:
        return found
    ranked = []
    for scene in candidates:
        try:
            share = measure(scene)
        except (OSError, HttpError, ChecksumError, ValueError) as exc:  # RasterioIOError is an OSError
            log.warning("%s: cloud over the AOI unknown (%s); using the tile's %s %%", scene.stem, exc, scene.cloud)
            ranked.append(scene)
            continue
        shown = "unknown (no valid pixel)" if share is None else f"{share * 100:.1f} %"
        log.info("%s: cloud over the AOI %s (tile: %s %%)", scene.stem, shown, scene.cloud)
        ranked.append(replace(scene, cloud=None if share is None else share * 100))
    return ranked
