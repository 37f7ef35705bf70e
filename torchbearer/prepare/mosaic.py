"""The ``mosaic`` step: rasters of one CRS, band set and value domain → one COG (or a VRT).

Inputs must agree on what their values mean: CRS, pixel size, bands (count, names, type) and value domain (and
Sentinel-2's ``BOA_ADD_OFFSET``). A mismatch is refused with the names of the files that differ, before any
pixel is read. Rasters in another CRS (or at another pixel size) are warped to the first's only when
``reproject`` is asked for. The mosaic is a VRT (no pixels copied, later inputs drawn over earlier ones where
they have data) and, for a COG, GDAL streams that VRT into the COG driver: memory stays flat.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from torchbearer.imagery.grid import Grid
from torchbearer.prepare import PrepareError
from torchbearer.prepare.rasters import DOMAIN_TAG, Report, band_names, no_report, open_raster, value_tags

#: GDAL's names of the data types a VRT band can declare.
GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "float32": "Float32", "float64": "Float64"}  # fmt: skip
COG_OPTIONS = {"compress": "zstd", "predictor": 2, "blocksize": 512, "bigtiff": "if_safer", "num_threads": 2}


@dataclass(frozen=True)
class VrtSource:
    """One raster placed in a VRT: its path and size, and its upper-left pixel in the VRT (may be fractional)."""

    path: Path
    width: int
    height: int
    x: float
    y: float


@dataclass(frozen=True)
class _Input:
    path: Path
    grid: Grid
    bands: tuple[str, ...]
    dtype: str
    nodata: float | None
    tags: dict[str, str]


def _describe(raster: _Input) -> str:
    return f"{raster.path.name} ({len(raster.bands)} bands {' '.join(raster.bands)}, {raster.dtype})"


def _read_inputs(paths: list[Path]) -> list[_Input]:
    inputs = []
    for path in paths:
        with open_raster(path) as ds:
            if ds.crs is None:
                raise PrepareError(f"mosaic input {path} has no CRS")
            inputs.append(_Input(Path(path), Grid.of(ds), tuple(band_names(ds)), ds.dtypes[0], ds.nodata,
                                 value_tags(ds)))  # fmt: skip
    return inputs


def _check(inputs: list[_Input], reproject: bool) -> None:
    """Refuse inputs that do not make one mosaic, naming the files that differ from the first."""
    first = inputs[0]
    bands = [r for r in inputs if (r.bands, r.dtype) != (first.bands, first.dtype)]
    if bands:
        raise PrepareError(
            f"mosaic inputs have different band sets: {_describe(first)} but " + "; ".join(_describe(r) for r in bands)
        )
    for key in (DOMAIN_TAG, "BOA_ADD_OFFSET", "QUANTIFICATION_VALUE"):
        odd = [r for r in inputs if r.tags.get(key) != first.tags.get(key)]
        if odd:
            raise PrepareError(
                f"mosaic inputs differ in {key}: {first.path.name} has {first.tags.get(key)} but "
                + ", ".join(f"{r.path.name} has {r.tags.get(key)}" for r in odd)
                + " (their values would mean different things)"
            )
    if reproject:
        return
    crs = [r for r in inputs if r.grid.crs != first.grid.crs]
    if crs:
        raise PrepareError(
            f"mosaic inputs have different CRS: {first.path.name} is {first.grid.crs} but "
            + ", ".join(f"{r.path.name} is {r.grid.crs}" for r in crs)
            + "; set reproject: true (--reproject) to warp them to the first's CRS"
        )
    res = [r for r in inputs if not np.isclose(r.grid.resolution, first.grid.resolution)]
    if res:
        raise PrepareError(
            f"mosaic inputs have different pixel sizes: {first.path.name} {first.grid.resolution:g} but "
            + ", ".join(f"{r.path.name} {r.grid.resolution:g}" for r in res)
            + "; set reproject: true (--reproject) to resample them"
        )


def _warp(raster: _Input, target: Grid, folder: Path) -> _Input:
    """A copy of ``raster`` warped to ``target``'s CRS and pixel size (GDAL streams it through a WarpedVRT)."""
    import rasterio.shutil
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import calculate_default_transform

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{raster.path.stem}.warped.tif"
    with open_raster(raster.path) as src:
        transform, width, height = calculate_default_transform(
            src.crs, target.crs, src.width, src.height, *src.bounds, resolution=target.resolution
        )
        with WarpedVRT(src, crs=target.crs, transform=transform, width=width, height=height,
                       resampling=Resampling.nearest, nodata=src.nodata) as vrt:  # fmt: skip
            rasterio.shutil.copy(vrt, out, driver="GTiff", tiled=True, compress="zstd", bigtiff="if_safer")
    with open_raster(out) as ds:
        ds_grid = Grid.of(ds)
    return _Input(out, ds_grid, raster.bands, raster.dtype, raster.nodata, raster.tags)


def write_vrt(
    path: Path,
    grid: Grid,
    sources: list[VrtSource],
    *,
    bands: list[str] | tuple[str, ...],
    dtype: str,
    nodata: float | None,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write a VRT of ``sources`` on ``grid`` (later sources drawn over earlier ones where they have data)."""
    t = grid.transform
    srs = grid.crs.to_wkt() if hasattr(grid.crs, "to_wkt") else str(grid.crs)
    lines = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">',
             f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(srs)}</SRS>',
             f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"]  # fmt: skip
    if tags:
        lines.append("  <Metadata>")
        lines += [f"    <MDI key={quoteattr(k)}>{escape(str(v))}</MDI>" for k, v in tags.items()]
        lines.append("  </Metadata>")
    for index, name in enumerate(bands, 1):
        lines.append(f'  <VRTRasterBand dataType="{GDAL_TYPES[dtype]}" band="{index}">')
        lines.append(f"    <Description>{escape(name)}</Description>")
        if nodata is not None:
            lines.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
        for s in sources:
            lines += [
                "    <ComplexSource>",
                f'      <SourceFilename relativeToVRT="0">{escape(str(Path(s.path).resolve()))}</SourceFilename>',
                f"      <SourceBand>{index}</SourceBand>",
                f'      <SrcRect xOff="0" yOff="0" xSize="{s.width}" ySize="{s.height}"/>',
                f'      <DstRect xOff="{s.x!r}" yOff="{s.y!r}" xSize="{s.width}" ySize="{s.height}"/>',
            ]
            if nodata is not None:
                lines.append(f"      <NODATA>{nodata!r}</NODATA>")
            lines.append("    </ComplexSource>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def mosaic(
    paths: list[Path],
    output: Path,
    *,
    format: Literal["cog", "vrt"] = "cog",
    reproject: bool = False,
    report: Report = no_report,
) -> Path:
    """Mosaic ``paths`` into ``output`` (a COG, or a VRT when ``format`` is ``vrt``); returns ``output``.

    Raises:
        PrepareError: fewer than one input, different band sets, value domains, CRS or pixel sizes (the last
            two allowed with ``reproject``); the message names the offending files.
    """
    import rasterio.shutil

    if not paths:
        raise PrepareError("mosaic needs at least one raster")
    inputs = _read_inputs([Path(p) for p in paths])
    _check(inputs, reproject)
    first = inputs[0]
    report("mosaicking", done=0, total=len(inputs) + 1, unit="rasters", step="mosaic")
    if reproject:
        inputs = [first] + [
            r if r.grid.crs == first.grid.crs and np.isclose(r.grid.resolution, first.grid.resolution)
            else _warp(r, first.grid, output.parent / f"{output.stem}.warped")
            for r in inputs[1:]
        ]  # fmt: skip
    res = first.grid.resolution
    left = min(r.grid.bounds[0] for r in inputs)
    right = max(r.grid.bounds[2] for r in inputs)
    bottom = min(r.grid.bounds[1] for r in inputs)
    top = max(r.grid.bounds[3] for r in inputs)
    grid = Grid.from_extent((left, bottom, right, top), res, first.grid.crs)
    sources = [VrtSource(r.path, r.grid.width, r.grid.height, (r.grid.bounds[0] - left) / res,
                         (top - r.grid.bounds[3]) / res) for r in inputs]  # fmt: skip
    nodata = first.nodata if first.nodata is not None else (0 if first.tags[DOMAIN_TAG] == "dn" else None)
    vrt = output if format == "vrt" else output.with_name(output.name + ".part.vrt")
    write_vrt(vrt, grid, sources, bands=first.bands, dtype=first.dtype, nodata=nodata, tags=first.tags)
    report("mosaicking", done=len(inputs), total=len(inputs) + 1, unit="rasters", step="mosaic")
    if format == "cog":
        part = output.with_name(output.name + ".part")
        try:
            rasterio.shutil.copy(vrt, part, driver="COG", **COG_OPTIONS)
            part.replace(output)
        finally:
            vrt.unlink(missing_ok=True)
            part.unlink(missing_ok=True)
    report("mosaicking", done=len(inputs) + 1, total=len(inputs) + 1, unit="rasters", step="mosaic")
    return output
