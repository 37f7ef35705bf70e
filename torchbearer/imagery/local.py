"""Scenes the user already has: SAFE product folders (stacked into the scene cache) or ready GeoTIFFs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torchbearer.imagery.http import Report
from torchbearer.imagery.spec import ImagerySpec

GEOTIFF_SUFFIXES = (".tif", ".tiff")


class LocalScenesError(FileNotFoundError):
    """A local path holds no usable scene (names the path and what was looked for)."""


def is_safe(path: Path) -> bool:
    """Whether ``path`` is an unpacked SAFE product folder."""
    return path.is_dir() and (path.suffix == ".SAFE" or any(path.glob("MTD_MSIL*.xml")))


def find_scenes(path: Path) -> list[Path]:
    """SAFE folders and GeoTIFFs at ``path``: itself, or its direct children, sorted by name."""
    if not path.exists():
        raise LocalScenesError(f"local path {path} does not exist")
    if is_safe(path) or (path.is_file() and path.suffix.lower() in GEOTIFF_SUFFIXES):
        return [path]
    if path.is_file():
        raise LocalScenesError(
            f"{path} is neither a SAFE folder nor a GeoTIFF{' (unzip it first)' if path.suffix == '.zip' else ''}"
        )
    found = sorted(p for p in path.iterdir() if is_safe(p) or p.suffix.lower() in GEOTIFF_SUFFIXES)
    if not found:
        raise LocalScenesError(f"{path} holds no SAFE folder (*.SAFE) and no GeoTIFF (*.tif)")
    return found


def local_stacks(
    spec: ImagerySpec, data_dir: Path, report: Report | None, should_stop: Callable[[], bool]
) -> list[Path]:
    """The stacks of every scene under ``spec.paths``: SAFE folders stacked (once) into the cache, GeoTIFFs
    used as they are."""
    from torchbearer.imagery.fetch import scene_lock, stack_safe

    stacks = []
    for given in spec.paths:
        for scene in find_scenes(Path(given)):
            if not scene.is_dir():
                stacks.append(scene)
                continue
            with scene_lock(data_dir, scene.name.removesuffix(".SAFE"), should_stop):
                stacks.append(stack_safe(scene, spec, data_dir / "cache", report))
    return stacks
