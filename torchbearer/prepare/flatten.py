"""The ``flatten`` step: a scene's valid pixels (and their labels) as a table, for classical models and for
looking at data outside GIS tools.

One row per pixel that has data in every band (and, with a mask, a label other than 255): ``x``, ``y`` (the
pixel centre in the scene's CRS), ``lon``, ``lat`` (WGS84), ``row``, ``col``, one column per band named by its
description (``B01`` …, the scene's own values and dtype), and ``label`` with a mask. Parquet by default
(the value domain, CRS and band names are in its schema metadata), CSV on request.

The scene is read a block at a time and each block is written as it comes (a Parquet row group, a CSV chunk):
memory does not grow with the scene.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rasterio.windows import Window

from torchbearer.imagery.grid import Grid
from torchbearer.prepare import PrepareError, Stopped
from torchbearer.prepare.rasters import (
    IGNORE,
    Report,
    band_names,
    no_report,
    open_mask,
    open_raster,
    value_tags,
)

#: Edge of a block read at once, pixels (512² pixels × ~18 columns ≈ 40 MB at most).
BLOCK = 512


def flatten_scene(
    scene: Path,
    output: Path,
    *,
    mask: Path | None = None,
    format: Literal["parquet", "csv"] = "parquet",
    block: int = BLOCK,
    report: Report = no_report,
    should_stop: Callable[[], bool] = bool,
) -> int:
    """Write the valid pixels of ``scene`` to ``output``; returns the number of rows.

    Raises:
        PrepareError: unreadable rasters, a mask on another grid, a scene without CRS.
        Stopped: ``should_stop`` turned true (the partial file is removed).
    """
    from pyproj import Transformer

    output.parent.mkdir(parents=True, exist_ok=True)
    part = output.with_name(output.name + ".part")
    with open_raster(scene) as src:
        if src.crs is None:
            raise PrepareError(f"scene {scene} has no CRS: its pixels have no coordinates")
        grid = Grid.of(src)
        mask_src = open_mask(mask, scene, grid) if mask is not None else None
        try:
            names = band_names(src)
            to_lonlat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
            schema = _schema(src, names, mask is not None).with_metadata(
                {
                    "torchbearer": json.dumps(
                        {
                            "scene": str(scene),
                            "crs": src.crs.to_string(),
                            "bands": names,
                            "nodata": src.nodata,
                            **value_tags(src),
                        }
                    )
                }
            )
            windows = [Window(c, r, min(block, grid.width - c), min(block, grid.height - r))
                       for r in range(0, grid.height, block) for c in range(0, grid.width, block)]  # fmt: skip
            rows = 0
            with _writer(part, schema, format) as write:
                for done, window in enumerate(windows, 1):
                    if should_stop():
                        raise Stopped(f"flatten stopped at block {done} of {len(windows)}")
                    table = _block_table(src, mask_src, window, names, to_lonlat, schema)
                    rows += table.num_rows
                    write(table)
                    report("flattening", done=done, total=len(windows), unit="blocks", rows=rows, step="flatten")
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        finally:
            if mask_src is not None:
                mask_src.close()
    part.replace(output)
    return rows


def _schema(src: Any, names: list[str], with_label: bool) -> Any:
    import pyarrow as pa

    band_type = pa.from_numpy_dtype(np.dtype(src.dtypes[0]))
    fields = [pa.field("x", pa.float64()), pa.field("y", pa.float64()), pa.field("lon", pa.float64()),
              pa.field("lat", pa.float64()), pa.field("row", pa.int32()), pa.field("col", pa.int32())]  # fmt: skip
    fields += [pa.field(name, band_type) for name in names]
    if with_label:
        fields.append(pa.field("label", pa.uint8()))
    return pa.schema(fields)


def _block_table(src: Any, mask_src: Any, window: Window, names: list[str], to_lonlat: Any, schema: Any) -> Any:
    """The rows of one block: its valid pixels in row-major order."""
    import pyarrow as pa

    data = src.read(window=window)
    valid = np.ones(data.shape[1:], dtype=bool)
    if src.nodata is not None:
        valid &= (data != src.nodata).all(axis=0) if not np.isnan(src.nodata) else ~np.isnan(data).any(axis=0)
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    label = None
    if mask_src is not None:
        label = mask_src.read(1, window=window)
        valid &= label != IGNORE
    rows, cols = np.nonzero(valid)
    rows = (rows + window.row_off).astype(np.int32)
    cols = (cols + window.col_off).astype(np.int32)
    t = src.transform
    x = t.c + (cols + 0.5) * t.a + (rows + 0.5) * t.b  # pixel centres
    y = t.f + (cols + 0.5) * t.d + (rows + 0.5) * t.e
    lon, lat = to_lonlat.transform(x, y)
    columns: dict[str, Any] = {"x": x, "y": y, "lon": np.asarray(lon), "lat": np.asarray(lat), "row": rows,
                               "col": cols}  # fmt: skip
    values = data[:, valid]
    for i, name in enumerate(names):
        columns[name] = values[i]
    if label is not None:
        columns["label"] = label[valid]
    return pa.Table.from_pydict(columns, schema=schema)


class _writer:
    """A context manager giving ``write(table)`` for Parquet (one row group per block) or CSV."""

    def __init__(self, path: Path, schema: Any, format: str) -> None:
        self.path, self.schema, self.format = path, schema, format

    def __enter__(self) -> Callable[[Any], None]:
        if self.format == "csv":
            import pyarrow.csv as csv

            self.sink = csv.CSVWriter(str(self.path), self.schema)
        else:
            import pyarrow.parquet as pq

            self.sink = pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
        return self.sink.write_table

    def __exit__(self, *exc: object) -> None:
        self.sink.close()
