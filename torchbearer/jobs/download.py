"""The ``download`` kind: fetch (and stack) Sentinel-2 scenes ahead of the jobs that need them.

```yaml
name: chaco-scenes
kind: download
imagery: {source: copernicus, aoi: masks/chaco.geojson, dates: 2023-06-01/2023-09-30, max_cloud: 10, resolution: 20}
```
Each scene's stacked GeoTIFF is recorded as a ``scene`` output. Train and predict jobs with an ``imagery:``
block call :func:`fetch_for_job` themselves, so a separate download job is optional: it lets a night fetch
everything first, or fetch during the day for jobs queued later.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from torchbearer.imagery.spec import ImagerySpec
from torchbearer.jobs import JobKind, register
from torchbearer.spec import JobSpec

if TYPE_CHECKING:
    from torchbearer.context import JobContext


class DownloadSpec(JobSpec):
    """A download job: only an imagery block."""

    kind: Literal["download"] = "download"
    path_fields = ("imagery.paths", "imagery.aoi")
    imagery: ImagerySpec = Field(description="which scenes, from where, at which resolution")


def fetch_for_job(imagery: ImagerySpec, ctx: JobContext) -> list[Path]:
    """The stacks of ``imagery`` for a running job: paths resolved against the project, credentials from
    ``ctx.secret``, progress shown as the ``downloading`` stage, stopping at the job's SIGTERM.

    Raises :class:`~torchbearer.context.JobInterrupted` when stopped (partial files stay for the next attempt).
    """
    from torchbearer.context import JobInterrupted
    from torchbearer.imagery.fetch import ensure_scenes
    from torchbearer.imagery.http import TransferCancelled

    try:
        return ensure_scenes(
            imagery.with_paths(lambda p: ctx.resolve(p)),
            ctx.settings.data_dir,
            ctx.progress,
            env=ctx.secret,
            should_stop=lambda: ctx.should_stop,
        )
    except TransferCancelled as exc:
        if ctx.should_stop:
            raise JobInterrupted(str(exc)) from None
        raise


def run(spec: DownloadSpec, ctx: JobContext) -> None:
    """Fetch the scenes and record each stack as a ``scene`` output."""
    import logging

    log = logging.getLogger("torchbearer.download")
    stacks = fetch_for_job(spec.imagery, ctx)
    for path in stacks:
        ctx.output(path, "scene")
        log.info("scene ready: %s", path)
    ctx.progress("downloading", done=len(stacks), total=len(stacks), unit="scenes", force=True)


register(JobKind("download", DownloadSpec, run, "fetch and stack Sentinel-2 scenes (Copernicus, Earth Search, local)"))
