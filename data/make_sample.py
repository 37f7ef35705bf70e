"""Make the sample SAFE product and its SCL-derived targets from the real T29UNU scene.

Usage::

    python data/make_sample.py /path/to/S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE

Writes, next to this script, a small but real SAFE folder with the same name: ``MTD_MSIL2A.xml`` (unchanged),
``MTD_TL.xml`` (tile size and upper-left corner set to the crop), ``manifest.safe`` (sizes and SHA3-256
checksums updated for every file rewritten here; entries for files left out stay, as in the public copy of
the product) and the R60m JP2s of the 11 spectral bands and SCL, cropped losslessly to ``WINDOW``. The crop
keeps the scene's grid: its transform is the original one shifted by the window offset.

It also writes the target ``masks/t29unu_cloud.tif`` (uint8 on the crop's grid: 1 cloud = SCL 8, 9, 10;
0 clear; 255 no data where SCL is 0) and the same target as polygons, ``masks/t29unu_cloud.geojson``
(cloud polygons in EPSG:4326, for rasterization tests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
MASKS = HERE.parent / "masks"

# Rows 400-720, columns 752-1264 of the 1830² 60 m grid: land, a lake and sea inlets, cloud and cloud
# shadow, and the diagonal no-data wedge on the east side (12 % of the pixels).
WINDOW = Window(col_off=752, row_off=400, width=512, height=320)
RESOLUTION = 60
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "SCL")
CLOUD_CLASSES = (8, 9, 10)
MASK_NODATA = 255


def crop_jp2(src_path: Path, dst_path: Path, window: Window) -> None:
    """Copy ``window`` (pixels) of a JP2 band losslessly, with the shifted georeferencing."""
    with rasterio.open(src_path) as src:
        data = src.read(1, window=window)
        profile = {
            "driver": "JP2OpenJPEG",
            "width": int(window.width),
            "height": int(window.height),
            "count": 1,
            "dtype": data.dtype,
            "crs": src.crs,
            "transform": src.window_transform(window),
        }
    # REVERSIBLE + QUALITY 100 is the lossless 5/3 wavelet, as ESA writes the products.
    with rasterio.open(
        dst_path,
        "w",
        **profile,
        QUALITY=100,
        REVERSIBLE="YES",
        YCC="NO",
        BLOCKXSIZE=192,
        BLOCKYSIZE=192,
    ) as dst:
        dst.write(data, 1)
    aux = dst_path.with_name(dst_path.name + ".aux.xml")
    aux.unlink(missing_ok=True)


def rewrite_tile_metadata(src: Path, dst: Path, window: Window) -> None:
    """Copy MTD_TL.xml with the tile size and upper-left corner of the crop at every resolution."""
    text = src.read_text(encoding="utf-8")
    for res in (10, 20, 60):
        scale = RESOLUTION // res
        rows, cols = int(window.height) * scale, int(window.width) * scale
        text = re.sub(
            rf'(<Size resolution="{res}">\s*<NROWS>)\d+(</NROWS>\s*<NCOLS>)\d+(</NCOLS>)',
            rf"\g<1>{rows}\g<2>{cols}\g<3>",
            text,
        )

        def shift(match: re.Match[str], res: int = res) -> str:
            ulx = int(match.group(2)) + int(window.col_off) * RESOLUTION
            uly = int(match.group(4)) - int(window.row_off) * RESOLUTION
            return f"{match.group(1)}{ulx}{match.group(3)}{uly}{match.group(5)}"

        text = re.sub(rf'(<Geoposition resolution="{res}">\s*<ULX>)(\d+)(</ULX>\s*<ULY>)(\d+)(</ULY>)', shift, text)
    dst.write_text(text, encoding="utf-8")


def update_manifest(safe: Path, rewritten: list[Path]) -> None:
    """Set size and SHA3-256 of each rewritten file's entry in manifest.safe, keeping the digest's case."""
    manifest = safe / "manifest.safe"
    text = manifest.read_text(encoding="utf-8")
    for path in rewritten:
        href = "./" + path.relative_to(safe).as_posix()
        digest = hashlib.sha3_256(path.read_bytes()).hexdigest()
        pattern = re.compile(
            r'(<byteStream[^>]*size=")\d+("[^>]*>\s*<fileLocation href="'
            + re.escape(href)
            + r'"[^>]*/>\s*<checksum checksumName="SHA3-256">)([0-9A-Fa-f]+)(</checksum>)'
        )
        match = pattern.search(text)
        if match is None:
            raise SystemExit(f"manifest.safe has no entry for {href}")
        old = match.group(3)
        new = digest.upper() if old.isupper() else digest
        text = (
            text[: match.start()]
            + f"{match.group(1)}{path.stat().st_size}{match.group(2)}{new}{match.group(4)}"
            + text[match.end() :]
        )
    manifest.write_text(text, encoding="utf-8")


def write_targets(scl_path: Path) -> None:
    """Write the cloud target as a GeoTIFF on the crop's grid and as GeoJSON polygons (EPSG:4326)."""
    with rasterio.open(scl_path) as src:
        scl = src.read(1)
        crs, transform = src.crs, src.transform
    mask = np.isin(scl, CLOUD_CLASSES).astype("uint8")
    mask[scl == 0] = MASK_NODATA
    MASKS.mkdir(exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": mask.shape[1],
        "height": mask.shape[0],
        "count": 1,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        "nodata": MASK_NODATA,
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with rasterio.open(MASKS / "t29unu_cloud.tif", "w", **profile) as dst:
        dst.write(mask, 1)
        dst.set_band_description(1, "cloud")

    features = []
    for geom, value in rasterio.features.shapes(mask, mask=mask == 1, transform=transform):
        if value != 1:
            continue
        geom = rasterio.warp.transform_geom(crs, "EPSG:4326", geom, precision=7)
        features.append({"type": "Feature", "properties": {"class": "cloud"}, "geometry": geom})
    collection = {"type": "FeatureCollection", "features": features}
    (MASKS / "t29unu_cloud.geojson").write_text(json.dumps(collection), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("product", type=Path, help="the T29UNU SAFE folder of the shared fixtures")
    args = parser.parse_args()
    src_safe: Path = args.product.resolve()
    dst_safe = HERE / src_safe.name
    granule = next((src_safe / "GRANULE").iterdir())
    dst_granule = dst_safe / "GRANULE" / granule.name
    r60 = dst_granule / "IMG_DATA" / "R60m"
    r60.mkdir(parents=True, exist_ok=True)

    for name in ("MTD_MSIL2A.xml", "manifest.safe"):
        (dst_safe / name).write_bytes((src_safe / name).read_bytes())
    rewritten = [dst_granule / "MTD_TL.xml"]
    rewrite_tile_metadata(granule / "MTD_TL.xml", rewritten[0], WINDOW)
    for band in BANDS:
        src = next((granule / "IMG_DATA" / "R60m").glob(f"*_{band}_60m.jp2"))
        dst = r60 / src.name
        crop_jp2(src, dst, WINDOW)
        rewritten.append(dst)
    update_manifest(dst_safe, rewritten)
    write_targets(next(r60.glob("*_SCL_60m.jp2")))
    total = sum(p.stat().st_size for p in dst_safe.rglob("*") if p.is_file())
    print(f"wrote {dst_safe.name}: {total / 1e6:.2f} MB; targets in {MASKS}")


if __name__ == "__main__":
    main()
