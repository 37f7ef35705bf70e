"""Chip folders for tests, cut from the committed sample scene and its cloud mask with plain rasterio windows.

The layout is the roof-classify one that ``prepare``'s chip step writes: ``train_frames/ train_masks/
val_frames/ val_masks/`` with ``train_0.tif`` …, each chip a georeferenced GeoTIFF tagged ``VALUE_DOMAIN``, and
a ``prepare.json``. Chips are ``size`` pixels square on a grid; the chip columns 2 and 6 (of 64 px) go to
validation, the rest to training; chips that are all no data are skipped.

``python -m tests.ml.make_chips DEST [--domain dn|reflectance] [--rescale 1e-4]`` writes one by hand.

Data: Copernicus Sentinel data 2022 (tile T29UNU, 5 Oct 2022; via GitHub stactools-packages/sentinel2,
tests/data-files, commit 46bdb40): ``data/S2A_MSIL2A_…_T29UNU_….SAFE`` and ``masks/t29unu_cloud.tif``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[2]
SAFE = REPO / "data" / "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
MASK = REPO / "masks" / "t29unu_cloud.tif"
#: The sample's processing baseline 04.00 adds this to DN before dividing by 10 000.
BOA_ADD_OFFSET = -1000
#: No-data value of float frames.
FLOAT_NODATA = -9999.0
#: Chip columns (of the 64 px grid) that go to validation.
VAL_COLUMNS = (2, 6)


def band_file(band: str) -> Path:
    """The sample's 60 m JPEG 2000 file of ``band`` (e.g. ``B04``)."""
    return next(SAFE.glob(f"GRANULE/*/IMG_DATA/R60m/*_{band}_60m.jp2"))


def make_chip_folder(
    dest: Path,
    *,
    bands: tuple[str, ...] = ("B02", "B03", "B04", "B8A"),
    size: int = 64,
    domain: str = "dn",
    rescale: float = 1.0,
) -> Path:
    """Write a chip folder at ``dest``: ``domain`` ``dn`` (uint16 DN) or ``reflectance`` (float32, times
    ``rescale``: 1e-4 makes reflectance scaled twice, the seed's blank-mask failure)."""
    dest = Path(dest)
    sources = [rasterio.open(band_file(b)) for b in bands]
    mask_src = rasterio.open(MASK)
    try:
        height, width = mask_src.height, mask_src.width
        counters = {"train": 0, "val": 0}
        for r in range(0, height, size):
            for c in range(0, width, size):
                window = Window(c, r, size, size)
                dn = np.stack([s.read(1, window=window, boundless=True, fill_value=0) for s in sources])
                if (dn == 0).all():
                    continue
                mask = mask_src.read(1, window=window, boundless=True, fill_value=255)
                split = "val" if c // 64 in VAL_COLUMNS else "train"
                name = f"{split}_{counters[split]}.tif"
                counters[split] += 1
                profile = {"driver": "GTiff", "width": size, "height": size, "crs": mask_src.crs,
                           "transform": mask_src.window_transform(window)}  # fmt: skip
                _write_frame(dest / f"{split}_frames" / name, dn, profile, bands, domain, rescale)
                (dest / f"{split}_masks").mkdir(parents=True, exist_ok=True)
                with rasterio.open(dest / f"{split}_masks" / name, "w", **profile, count=1, dtype="uint8",
                                   nodata=255) as out:  # fmt: skip
                    out.write(mask, 1)
    finally:
        for s in sources:
            s.close()
        mask_src.close()
    prepare = {"step": "chip", "size": size, "value_domain": domain, "bands": list(bands), "source": SAFE.name,
               "made_by": "tests/ml/make_chips.py", "rescale": rescale}  # fmt: skip
    (dest / "prepare.json").write_text(json.dumps(prepare, indent=2))
    return dest


def _write_frame(path: Path, dn: np.ndarray, profile: dict, bands: tuple[str, ...], domain: str, rescale: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    tags = {"VALUE_DOMAIN": domain}
    if domain == "dn":
        values, nodata = dn, 0
        tags.update(BOA_ADD_OFFSET=str(BOA_ADD_OFFSET), QUANTIFICATION_VALUE="10000")
    else:
        values = ((dn.astype(np.float32) + BOA_ADD_OFFSET) / 10000 * rescale).astype(np.float32)
        values[:, (dn == 0).any(axis=0)] = FLOAT_NODATA
        nodata = FLOAT_NODATA
    with rasterio.open(path, "w", **profile, count=len(bands), dtype=values.dtype, nodata=nodata) as out:
        out.write(values)
        out.update_tags(**tags)
        for i, band in enumerate(bands, 1):
            out.set_band_description(i, band)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--domain", choices=("dn", "reflectance"), default="dn")
    parser.add_argument("--rescale", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    print(make_chip_folder(args.dest, domain=args.domain, rescale=args.rescale, size=args.size))
