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

#: Classes of the patch set and the SCL values each gathers.
CLASSES: dict[str, tuple[int, ...]] = {
    "water": (6,),
    "vegetation": (4,),
    "cloud": (8, 9, 10),
    "shadow": (2, 3),  # dark area and cloud shadow
}
SCL_NODATA = 0


def make_patches(
    safe: Path, out: Path, *, size: int = 16, purity: float = 0.6, per_class: int | None = 100, seed: int = 0
) -> dict[str, int]:
    """Write the patch set of the SAFE folder ``safe`` under ``out``; returns the patch count per class.

    The same cut as the ``prepare`` kind's ``patches`` step (:func:`torchbearer.prepare.patches.label_patches`)
    on the product's 60 m stack with its SCL band as the class raster."""
    from torchbearer.imagery.cache import build_stack
    from torchbearer.imagery.safe import read_safe
    from torchbearer.prepare.patches import label_patches

    safe, out = Path(safe), Path(out)
    scl_files = sorted(safe.glob("GRANULE/*/IMG_DATA/R60m/*_SCL_60m.jp2"))
    if not scl_files:
        raise FileNotFoundError(f"{safe}: no 60 m SCL band (GRANULE/*/IMG_DATA/R60m/*_SCL_60m.jp2)")
    with tempfile.TemporaryDirectory() as cache:
        stack = build_stack(safe, 60, Path(cache))
        counts = label_patches(stack, scl_files[0], out, classes=CLASSES, size=size, purity=purity,
                               per_class=per_class, seed=seed, label_nodata=SCL_NODATA)  # fmt: skip
    (out / "README.md").write_text(_readme(read_safe(safe).name, size, purity, per_class, seed, counts))
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
