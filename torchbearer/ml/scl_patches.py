"""A EuroSAT-style patch set cut from a real Sentinel-2 L2A product, labelled by its SCL band.

Usage::

    python -m torchbearer.ml.scl_patches data/S2A_MSIL2A_…_T29UNU_….SAFE data/patches/t29unu-scl

Cuts the product's 60 m stack (the scene cache format, uint16 DN, band descriptions ``B01`` …) into
non-overlapping ``size`` × ``size`` patches and writes each as a GeoTIFF ``<out>/<class>/<row>_<col>.tif``
(DN as in the product, the band names in the band descriptions, the scene's CRS and the patch's transform).
A patch's class is the majority of the scene classification (SCL) among :data:`CLASSES`; a patch with no-data
pixels or whose majority covers less than ``purity`` of it is left out. ``per_class`` caps each class (a seeded
draw) so the cloudy scene does not drown the other classes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

#: Classes of the patch set and the SCL values each gathers.
CLASSES: dict[str, tuple[int, ...]] = {
    "water": (6,),
    "vegetation": (4,),
    "cloud": (8, 9, 10),
    "shadow": (2, 3),  # dark area and cloud shadow
}
SCL_NODATA = 0


def patch_labels(scl: np.ndarray, size: int, purity: float) -> dict[tuple[int, int], str]:
    """Class of each ``size``-pixel patch of an SCL grid, keyed by its (row, column) origin in pixels."""
    labels = {}
    for row in range(0, scl.shape[0] - size + 1, size):
        for col in range(0, scl.shape[1] - size + 1, size):
            window = scl[row : row + size, col : col + size]
            if (window == SCL_NODATA).any():
                continue
            shares = {name: np.isin(window, values).mean() for name, values in CLASSES.items()}
            name, share = max(shares.items(), key=lambda item: item[1])
            if share >= purity:
                labels[(row, col)] = name
    return labels


def make_patches(
    safe: Path, out: Path, *, size: int = 16, purity: float = 0.6, per_class: int | None = 100, seed: int = 0
) -> dict[str, int]:
    """Write the patch set of the SAFE folder ``safe`` under ``out``; returns the patch count per class."""
    import rasterio
    from rasterio.windows import Window

    from torchbearer.imagery.cache import build_stack
    from torchbearer.imagery.safe import read_safe

    safe, out = Path(safe), Path(out)
    scl_files = sorted(safe.glob("GRANULE/*/IMG_DATA/R60m/*_SCL_60m.jp2"))
    if not scl_files:
        raise FileNotFoundError(f"{safe}: no 60 m SCL band (GRANULE/*/IMG_DATA/R60m/*_SCL_60m.jp2)")
    with rasterio.open(scl_files[0]) as src:
        scl = src.read(1)
    labels = patch_labels(scl, size, purity)
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[tuple[int, int]]] = {}
    for name in CLASSES:
        origins = sorted(o for o, label in labels.items() if label == name)
        if per_class is not None and len(origins) > per_class:
            origins = sorted(origins[i] for i in rng.choice(len(origins), per_class, replace=False))
        chosen[name] = origins
    with tempfile.TemporaryDirectory() as cache:
        stack = build_stack(safe, 60, Path(cache))
        with rasterio.open(stack) as src:
            if (src.height, src.width) != scl.shape:
                raise ValueError(f"{safe}: the 60 m stack is {src.shape}, its SCL {scl.shape}")
            product = read_safe(safe).name
            profile = {"driver": "GTiff", "width": size, "height": size, "count": src.count, "dtype": "uint16",
                       "crs": src.crs, "compress": "deflate", "predictor": 2, "nodata": 0}  # fmt: skip
            for name, origins in chosen.items():
                (out / name).mkdir(parents=True, exist_ok=True)
                for row, col in origins:
                    window = Window(col, row, size, size)
                    path = out / name / f"{row:04d}_{col:04d}.tif"
                    with rasterio.open(path, "w", transform=src.window_transform(window), **profile) as dst:
                        dst.write(src.read(window=window))
                        dst.descriptions = src.descriptions
                        dst.update_tags(**src.tags(), CLASS=name)
    counts = {name: len(origins) for name, origins in chosen.items()}
    (out / "README.md").write_text(_readme(product, size, purity, per_class, seed, counts))
    return counts


def _readme(product: str, size: int, purity: float, per_class: int | None, seed: int, counts: dict) -> str:
    return (
        f"# Patches of {product}, labelled by its SCL band\n\n"
        f"{size} × {size} pixels at 60 m, one GeoTIFF per patch (uint16 DN, band names in the band descriptions),"
        f" a folder per class. Class = the SCL majority ({json.dumps({k: list(v) for k, v in CLASSES.items()})})"
        f" covering ≥ {purity:.0%} of the patch, no-data patches left out, at most {per_class} per class"
        f" (seed {seed}). Counts: {json.dumps(counts)}.\n\n"
        "Made by `python -m torchbearer.ml.scl_patches <SAFE folder> <this folder>`.\n\n"
        "Attribution: Copernicus Sentinel data 2022 (the product comes from GitHub stactools-packages/sentinel2,"
        " tests/data-files, commit 46bdb40, Apache-2.0 code).\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("safe", type=Path, help="an L2A SAFE folder with its R60m bands and SCL")
    parser.add_argument("out", type=Path, help="the patch set's folder (a folder per class is made in it)")
    parser.add_argument("--size", type=int, default=16, help="patch side, pixels (default 16)")
    parser.add_argument("--purity", type=float, default=0.6, help="least share of the majority class")
    parser.add_argument("--per-class", type=int, default=100, help="most patches per class (0: no cap)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = make_patches(args.safe, args.out, size=args.size, purity=args.purity,
                          per_class=args.per_class or None, seed=args.seed)  # fmt: skip
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
