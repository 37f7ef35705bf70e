"""``torchbearer prepare <step> …``: one preparation step in the foreground, with rich progress bars (no daemon,
no store). A chain of steps is a ``prepare`` job file: ``torchbearer run prepare.yaml`` runs it here too.

Paths are taken relative to the current folder; a SAFE folder or zip is stacked into the data folder's scene
cache at ``--resolution`` metres. Heavy modules load only when a command runs.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="prepare",
    help="Prepare training data in the foreground: rasterize, chip, split, mosaic, flatten, summarize.",
    no_args_is_help=True,
)

Resolution = Annotated[int, typer.Option(help="metres: the stack made of a SAFE scene (10, 20 or 60)")]
Output = Annotated[Path, typer.Option("--output", "-o", help="where to write")]


def _run(ctx: typer.Context, step: dict[str, Any], resolution: int = 20) -> None:
    """Validate one step, run it with progress bars, print what it made; bad input exits 2, failures 1."""
    from pydantic import ValidationError
    from rich.console import Console

    from torchbearer.imagery.cli import RichReport, _expected
    from torchbearer.imagery.grid import GridError
    from torchbearer.ml.labels import LabelError
    from torchbearer.prepare import PrepareError, Stopped
    from torchbearer.prepare.pipeline import Chain, Runner
    from torchbearer.prepare.spec import Step
    from torchbearer.settings import Settings

    err = Console(stderr=True)
    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings.load()
    try:
        parsed = Step.model_validate({name: {k: v for k, v in o.items() if v is not None} for name, o in step.items()})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'options'}: {e['msg']}" for e in exc.errors())
        err.print(f"[red]bad options:[/] {problems}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    report = RichReport(err)
    runner = Runner(resolve=lambda p: Path(p).expanduser().resolve(), data_dir=settings.data_dir,
                    resolution=resolution, report=report, should_stop=stop.is_set)  # fmt: skip
    chain = Chain()
    try:
        with report.progress:
            runner.run([parsed], chain)
    except (PrepareError, GridError, LabelError, Stopped) as exc:
        err.print(f"[red]{parsed.name} failed:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except Exception as exc:
        if not _expected(exc):
            raise
        err.print(f"[red]{parsed.name} failed:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    for note in chain.notes:
        err.print(note, highlight=False, soft_wrap=True)
    for path, _kind in chain.outputs:
        typer.echo(str(path))  # one path a line, unwrapped: scripts read it


def _values(pairs: list[str] | None) -> dict[str, int] | None:
    if not pairs:
        return None
    values = {}
    for pair in pairs:
        key, sep, value = pair.rpartition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise typer.BadParameter(f"{pair!r}: use ATTRIBUTE_VALUE=NUMBER, e.g. cloud=1", param_hint="--value")
        values[key] = int(value)
    return values


def _extent(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use left,bottom,right,top", param_hint="--extent") from None


@app.command()
def rasterize(
    ctx: typer.Context,
    labels: Annotated[Path, typer.Argument(help="GeoJSON, GeoPackage or Shapefile (any CRS)")],
    output: Output,
    scene: Annotated[Path | None, typer.Option(help="burn onto this scene's grid")] = None,
    extent: Annotated[str | None, typer.Option(help="or a grid: left,bottom,right,top in --crs")] = None,
    pixel_size: Annotated[float | None, typer.Option(help="with --extent: pixel size, CRS units")] = None,
    crs: Annotated[str | None, typer.Option(help="with --extent, e.g. EPSG:32629")] = None,
    attribute: Annotated[str | None, typer.Option(help="class attribute (else every feature burns 1)")] = None,
    value: Annotated[list[str] | None, typer.Option(help="ATTRIBUTE_VALUE=NUMBER (repeatable)")] = None,
    order: Annotated[str, typer.Option(help="burn order: file | attribute | area (small on top)")] = "file",
    all_touched: Annotated[bool, typer.Option(help="burn every pixel a polygon touches")] = False,
    ignore_edge: Annotated[int, typer.Option(help="pixels of 255 (ignored) along polygon edges")] = 0,
    resolution: Resolution = 20,
) -> None:
    """Burn vector labels into a uint8 mask on a scene's grid (or an extent and pixel size).

    Example: torchbearer prepare rasterize masks/roofs.gpkg --scene data/S2A_….SAFE --resolution 10
    --attribute material --value metal=1 --value tile=2 --order area --ignore-edge 1 -o prepared/roofs.tif
    """
    _run(ctx, {"rasterize": {
        "labels": str(labels), "output": str(output), "scene": str(scene) if scene else None,
        "extent": _extent(extent), "resolution": pixel_size, "crs": crs, "attribute": attribute,
        "values": _values(value), "order": order, "all_touched": all_touched, "ignore_edge": ignore_edge,
    }}, resolution)  # fmt: skip


@app.command()
def chip(
    ctx: typer.Context,
    scene: Annotated[Path, typer.Argument(help="SAFE folder or zip, GeoTIFF, or any GDAL raster")],
    output: Output,
    size: Annotated[int, typer.Option(help="chip edge, pixels")] = 256,
    overlap: Annotated[int, typer.Option(help="pixels shared by neighbouring chips")] = 0,
    mask: Annotated[Path | None, typer.Option(help="a mask on the scene's grid")] = None,
    positive_only: Annotated[bool, typer.Option(help="skip chips without a pixel above 0 in the mask")] = False,
    nodata: Annotated[float | None, typer.Option(help="padding value (default: the scene's no data, else 0)")] = None,
    resolution: Resolution = 20,
) -> None:
    """Cut a scene (and its mask) into georeferenced chips: train_frames/ train_masks/ + chips.gpkg.

    Example: torchbearer prepare chip data/S2A_….SAFE --resolution 60 --mask prepared/cloud.tif
    --size 64 --overlap 16 -o prepared/chips
    """
    _run(ctx, {"chip": {
        "scene": str(scene), "output": str(output), "size": size, "overlap": overlap,
        "mask": str(mask) if mask else None, "positive_only": positive_only, "nodata": nodata,
    }}, resolution)  # fmt: skip


@app.command()
def split(
    ctx: typer.Context,
    chips: Annotated[Path, typer.Argument(help="a chip folder (made by prepare chip)")],
    val: Annotated[float, typer.Option(help="share of blocks for validation")] = 0.2,
    test: Annotated[float, typer.Option(help="share of blocks for test")] = 0.0,
    block: Annotated[int | None, typer.Option(help="block edge, pixels (default: 4 chips)")] = None,
    seed: Annotated[int, typer.Option(help="shuffles the blocks")] = 0,
) -> None:
    """Split a chip folder into train / val (/ test) by spatial blocks; checks no chips of two splits overlap."""
    _run(ctx, {"split": {"chips": str(chips), "val": val, "test": test, "block": block, "seed": seed}})


@app.command()
def mosaic(
    ctx: typer.Context,
    inputs: Annotated[list[Path], typer.Argument(help="rasters (or SAFE folders) of one CRS and band set")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".tif (a COG) or .vrt")],
    reproject: Annotated[bool, typer.Option(help="warp rasters in another CRS to the first's")] = False,
    resolution: Resolution = 20,
) -> None:
    """Mosaic rasters into one COG (or a VRT when the output ends in .vrt)."""
    _run(ctx, {"mosaic": {"inputs": [str(p) for p in inputs], "output": str(output), "reproject": reproject}},
         resolution)  # fmt: skip


@app.command()
def flatten(
    ctx: typer.Context,
    scene: Annotated[Path, typer.Argument(help="SAFE folder or zip, GeoTIFF, or any GDAL raster")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".parquet, or .csv")],
    mask: Annotated[Path | None, typer.Option(help="labels on the scene's grid: a label column")] = None,
    resolution: Resolution = 20,
) -> None:
    """Write a scene's valid pixels as a table: x, y, lon, lat, row, col, one column per band (, label)."""
    _run(ctx, {"flatten": {"scene": str(scene), "output": str(output), "mask": str(mask) if mask else None}},
         resolution)  # fmt: skip


@app.command()
def summarize(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="a raster (or SAFE folder) or a chip folder")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the CSVs, PNGs and summary.md")],
    mask: Annotated[Path | None, typer.Option(help="with a raster: its mask, for the class balance")] = None,
    resolution: Resolution = 20,
) -> None:
    """Band statistics, histograms and class balance of a raster or a chip folder (CSV, PNG, markdown)."""
    _run(ctx, {"summarize": {"source": str(source), "output": str(output), "mask": str(mask) if mask else None}},
         resolution)  # fmt: skip
