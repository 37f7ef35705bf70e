"""Scenes the user already has: SAFE product folders or zips (stacked into the scene cache), or GeoTIFFs,
given by path or glob.

A zipped product (as the Copernicus browser delivers it) is not unpacked whole: only the files the stack
needs are extracted into ``data/products/``, each checked against the product's manifest.safe.
"""

from __future__ import annotations

import glob
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from torchbearer.imagery.dataroot import scene_lock, stack_safe
from torchbearer.imagery.http import Report
from torchbearer.imagery.spec import ImagerySpec

GEOTIFF_SUFFIXES = (".tif", ".tiff")
_CHUNK = 1024 * 1024


class LocalScenesError(FileNotFoundError):
    """A local path holds no usable scene (names the path and what was looked for)."""


def is_safe(path: Path) -> bool:
    """Whether ``path`` is an unpacked SAFE product folder."""
    return path.is_dir() and (path.suffix == ".SAFE" or any(path.glob("MTD_MSIL*.xml")))


def _is_scene_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (*GEOTIFF_SUFFIXES, ".zip")


def find_scenes(path: Path) -> list[Path]:
    """SAFE folders, zipped SAFE products and GeoTIFFs at ``path``: itself, or its direct children, by name;
    a glob (``data/*.SAFE``) gives those of every match, in name order."""
    if glob.has_magic(str(path)):
        matches = sorted(glob.glob(str(path)))
        if not matches:
            raise LocalScenesError(f"scenes: {str(path)!r} matches nothing")
        return [scene for match in matches for scene in find_scenes(Path(match))]
    if not path.exists():
        raise LocalScenesError(f"local path {path} does not exist")
    if is_safe(path) or _is_scene_file(path):
        return [path]
    if path.is_file():
        raise LocalScenesError(f"{path} is neither a SAFE folder or zip nor a GeoTIFF")
    found = sorted(p for p in path.iterdir() if is_safe(p) or _is_scene_file(p))
    if not found:
        raise LocalScenesError(f"{path} holds no SAFE product (*.SAFE, *.zip) and no GeoTIFF (*.tif)")
    return found


def extract_needed(archive_path: Path, products_dir: Path, spec: ImagerySpec) -> Path:
    """Extract from a zipped SAFE product the files a ``spec`` stack needs; returns the SAFE folder."""
    from torchbearer.imagery.manifest import ManifestError, check_file, needed_files, parse_manifest

    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile as exc:
        raise LocalScenesError(f"{archive_path}: not a readable zip ({exc})") from None
    with archive:
        names = set(archive.namelist())
        manifest_name = next(
            (n for n in sorted(names) if n.count("/") == 1 and n.endswith(".SAFE/manifest.safe")), None
        )
        if manifest_name is None:
            raise LocalScenesError(f"{archive_path}: no <name>.SAFE/manifest.safe inside: not a zipped SAFE product")
        root = manifest_name.split("/")[0]
        safe_dir = products_dir / root
        try:
            manifest = parse_manifest(archive.read(manifest_name), f"{archive_path}:{manifest_name}")
        except ManifestError as exc:
            raise LocalScenesError(str(exc)) from None
        entries = list(manifest) if spec.whole_product else needed_files(manifest, spec.bands, spec.resolution)
        for member, target, entry in [(manifest_name, safe_dir / "manifest.safe", None)] + [
            (f"{root}/{e.path}", safe_dir / e.path, e)
            for e in entries  # paths checked by parse_manifest
        ]:
            if target.is_file():
                continue
            if member not in names:
                raise LocalScenesError(f"{archive_path}: {member} is missing from the archive")
            part = target.with_name(target.name + ".part")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, part.open("wb") as sink:
                shutil.copyfileobj(source, sink, _CHUNK)
            if entry is not None and not check_file(part, entry):
                part.unlink()
                raise LocalScenesError(f"{archive_path}: {member} does not match its manifest checksum")
            part.replace(target)
    return safe_dir


def local_stacks(
    spec: ImagerySpec,
    data_dir: Path,
    report: Report | None,
    should_stop: Callable[[], bool],
    *,
    streaming: bool = False,
) -> list[Path]:
    """The stacks of every scene under ``spec.paths``: SAFE folders and zips stacked (once) into the cache,
    GeoTIFFs used as they are (``streaming``: see :func:`~torchbearer.imagery.fetch.ensure_scenes`)."""
    stacks = []
    for given in spec.paths:
        for scene in find_scenes(Path(given)):
            if scene.suffix.lower() in GEOTIFF_SUFFIXES:
                stacks.append(scene)
                continue
            key = scene.name.removesuffix(".zip").removesuffix(".SAFE")
            with scene_lock(data_dir, key, should_stop):
                safe_dir = scene if scene.is_dir() else extract_needed(scene, data_dir / "products", spec)
                stacks.append(stack_safe(safe_dir, spec, data_dir, report, streaming=streaming))
    return stacks
