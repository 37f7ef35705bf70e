"""Synthetic repetitions of a real scene, for training at scale without downloading more tiles.

Usage::

    python data/make_repetitions.py <stack GeoTIFF or SAFE folder> <mask GeoTIFF> <out folder> [--count 8]
        [--crop-step 16] [--resolution 60]

Writes ``<out>/scenes/rep_{i}.tif`` and ``<out>/masks/rep_{i}.tif``: copy ``i`` of the scene's stack (a SAFE
folder is stacked first) and of its mask (warped to the scene's grid), both moved ``i`` scene widths (plus a
gap of 10 km) east, so each copy lies on other ground with a transform of its own; with ``crop_step``, copy
``i`` keeps its first ``height - i × crop_step`` rows, so the copies differ in labelled area. These are
**synthetic repetitions of real data** (the same pixels at made-up places): they exercise many scenes, not
more information. The committed sample (``data/``, real Sentinel-2, Copernicus Sentinel data 2022) and its
cloud mask (``masks/``) are the defaults of the example job ``configs/examples/many_scenes.yaml``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from torchbearer.imagery.cache import build_stack, stack_info  # noqa: E402
from torchbearer.ml.labels import IGNORE, reproject_mask  # noqa: E402

#: Gap between copies, metres (their blocks of the spatial split never touch).
GAP_M = 10_000


def shifted(transform: Affine, metres_east: float) -> Affine:
    return Affine.translation(metres_east, 0) @ transform


def repeat_scene(stack: Path, mask: Path, out: Path, count: int, *, crop_step: int = 0, num_classes: int = 2,
                 first: int = 0) -> list[tuple[Path, Path]]:  # fmt: skip
    """Write ``count`` shifted (and optionally cropped) copies of ``stack`` and ``mask``; returns their paths.

    ``first`` numbers the copies from there (copy ``i`` is ``i`` scene widths east: ``first=100`` puts them
    far from the others).
    """
    info = stack_info(stack)
    target = reproject_mask(mask, info, num_classes)
    with rasterio.open(stack) as src:
        profile, dn, tags, names = src.profile, src.read(), src.tags(), src.descriptions
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(first, first + count):
        rows = info.height - (i - first) * crop_step
        if rows < 32:
            raise ValueError(f"copy {i}: {rows} rows left; lower crop_step")
        transform = shifted(info.transform, i * (info.width * info.resolution + GAP_M))
        scene_path, mask_path = out / "scenes" / f"rep_{i}.tif", out / "masks" / f"rep_{i}.tif"
        with rasterio.open(scene_path, "w", **{**profile, "height": rows, "transform": transform}) as dst:
            dst.write(dn[:, :rows])
            dst.update_tags(**tags)
            dst.descriptions = names
        mask_profile = {"driver": "GTiff", "width": info.width, "height": rows, "count": 1, "dtype": "uint8",
                        "crs": info.crs, "transform": transform, "nodata": IGNORE}  # fmt: skip
        with rasterio.open(mask_path, "w", **mask_profile) as dst:
            dst.write(target[:rows], 1)
        written.append((scene_path, mask_path))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path, help="a stack GeoTIFF or a SAFE folder")
    parser.add_argument("mask", type=Path, help="a class-index GeoTIFF over the scene (any CRS)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--crop-step", type=int, default=16, help="rows fewer in each next copy")
    parser.add_argument("--resolution", type=int, default=60, help="for a SAFE folder: the stack's metres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = build_stack(args.scene, args.resolution, Path(tmp)) if args.scene.is_dir() else args.scene
        for scene, mask in repeat_scene(stack, args.mask, args.out, args.count, crop_step=args.crop_step):
            print(scene, mask, np.unique(rasterio.open(mask).read(1)).tolist())


if __name__ == "__main__":
    main()
