"""``torchbearer download``: fetch scenes in the foreground, with rich progress bars (no daemon, no store).

``torchbearer/cli.py`` registers :func:`download` as the ``download`` command; the scenes come through
:func:`torchbearer.imagery.acquire.acquire`, as a job's do. Heavy modules load only when the command runs.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer


class RichReport:
    """A ``report`` callable for :func:`~torchbearer.imagery.acquire.acquire` that draws one bar per
    scene and stage: bytes (with speed) while downloading, bands while stacking."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.tasks: dict[tuple[str, str], Any] = {}

    def __call__(self, stage: str | None = None, *, done: float | None = None, total: float | None = None,
                 unit: str = "", scene: str = "", **fields: Any) -> None:  # fmt: skip
        from rich.filesize import decimal

        key = (stage or "", scene)
        if key not in self.tasks:
            label = f"{stage or 'working'} {scene[:44]}".strip()
            self.tasks[key] = self.progress.add_task(label, total=total or None, detail="")
        if unit == "B" and done is not None:
            files = f", {fields['files_done']}/{fields['files_total']} files" if "files_total" in fields else ""
            detail = f"{decimal(int(done))}/{decimal(int(total or 0))}{files}"
        else:
            detail = f"{done or 0:.0f}/{total or 0:.0f} {unit}".rstrip()
        self.progress.update(self.tasks[key], completed=done or 0, total=total or None, detail=detail)


def download(
    ctx: typer.Context,
    aoi: Annotated[
        str | None, typer.Option(help="bbox 'minx,miny,maxx,maxy', WKT, or a GeoJSON/GeoPackage file")
    ] = None,
    dates: Annotated[str | None, typer.Option(help="sensing dates, YYYY-MM-DD/YYYY-MM-DD")] = None,
    source: Annotated[str, typer.Option(help="copernicus | earth-search | local")] = "copernicus",
    max_cloud: Annotated[float, typer.Option(help="largest scene cloud cover, percent")] = 30.0,
    product: Annotated[str, typer.Option(help="L2A or L1C (copernicus)")] = "L2A",
    tile: Annotated[list[str] | None, typer.Option(help="MGRS tile to keep, e.g. 29UNU (repeatable)")] = None,
    resolution: Annotated[int, typer.Option(help="10, 20 or 60 metres")] = 20,
    max_scenes: Annotated[int, typer.Option(help="at most this many scenes")] = 1,
    pick: Annotated[str, typer.Option(help="least-cloud | newest")] = "least-cloud",
    path: Annotated[
        list[Path] | None, typer.Option(help="local: SAFE folder or zip, GeoTIFF, or a folder of them")
    ] = None,
    aoi_crs: Annotated[str, typer.Option(help="CRS of a bbox or WKT aoi")] = "EPSG:4326",
    whole_product: Annotated[bool, typer.Option(help="fetch every file of each product")] = False,
) -> None:
    """Find and fetch Sentinel-2 scenes into the data folder's scene cache, with progress bars.

    Example: torchbearer download --aoi=-8.2,52.9,-8.0,53.0 --dates 2022-10-01/2022-10-10 --resolution 60
    """
    from pydantic import ValidationError
    from rich.console import Console

    from torchbearer.imagery.spec import ImagerySpec, aoi_kind
    from torchbearer.settings import Settings

    err = Console(stderr=True)
    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings.load()
    values: dict[str, Any] = {
        "source": source, "aoi": aoi, "dates": dates, "max_cloud": max_cloud, "product": product,
        "tiles": tile or [], "resolution": resolution, "max_scenes": max_scenes, "pick": pick,
        "paths": [str(p.resolve()) for p in path or []], "aoi_crs": aoi_crs, "whole_product": whole_product,
    }  # fmt: skip
    try:
        if aoi is not None and aoi_kind(aoi) == "file":
            values["aoi"] = str(Path(aoi).expanduser().resolve())  # relative to where the command runs
        spec = ImagerySpec(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        err.print(f"[red]bad options:[/] {problems}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        err.print(f"[red]bad options:[/] aoi: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    stacks = _fetch(spec, settings, err)
    for stack in stacks:
        typer.echo(str(stack))  # one path a line, unwrapped: scripts read it


def _fetch(spec: Any, settings: Any, err: Any) -> list[Path]:
    """Get the scenes with bars; Ctrl-C stops at the next chunk and keeps partial files for a resume."""
    from torchbearer.imagery.acquire import acquire

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    report = RichReport(err)
    try:
        with report.progress:
            scenes = acquire(spec, settings.data_dir, [spec.resolution], report=report, env=settings.secret,
                             should_stop=stop.is_set)  # fmt: skip
            return [stacks[0] for stacks in scenes]
    except Exception as exc:
        if not _expected(exc):
            raise
        note = " (partial files are kept: run the same command again to resume)" if stop.is_set() else ""
        err.print(f"[red]download failed:[/] {exc}{note}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        signal.signal(signal.SIGINT, previous)


def _expected(exc: Exception) -> bool:
    """Errors with a message meant for the user (no traceback needed)."""
    from torchbearer.imagery.aoi import AoiError
    from torchbearer.imagery.cache import StackError
    from torchbearer.imagery.copernicus import CredentialsMissing, LoginError
    from torchbearer.imagery.http import ChecksumError, DiskSpaceError, HttpError, TransferCancelled
    from torchbearer.imagery.local import LocalScenesError
    from torchbearer.imagery.manifest import ManifestError
    from torchbearer.imagery.scenes import NoScenesError

    expected = (AoiError, StackError, CredentialsMissing, LoginError, NoScenesError, ChecksumError, DiskSpaceError,
                HttpError, TransferCancelled, LocalScenesError, ManifestError)  # fmt: skip
    return isinstance(exc, expected)
