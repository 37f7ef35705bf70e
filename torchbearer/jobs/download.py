"""The ``download`` kind: fetch (and stack) Sentinel-2 scenes ahead of the jobs that need them.

```yaml
name: chaco-scenes
kind: download
imagery: {source: copernicus, aoi: masks/chaco.geojson, dates: 2023-06-01/2023-09-30, max_cloud: 10, resolution: 20}
```
Each scene's stacked GeoTIFF is recorded as a ``scene`` output. Every kind that reads scenes gets them through
:func:`torchbearer.imagery.acquire.job_scenes` itself, so a separate download job is optional: it lets a night fetch
everything first, or fetch during the day for jobs queued later.
"""

from __future__ import annotations

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


def run(spec: DownloadSpec, ctx: JobContext) -> None:
    """Fetch the scenes and record each stack as a ``scene`` output."""
    import logging

    from torchbearer.imagery.acquire import job_scenes

    log = logging.getLogger("torchbearer.download")
    stacks = [stacks[0] for stacks in job_scenes(ctx, [spec.imagery.resolution], imagery=spec.imagery)]
    for path in stacks:
        ctx.output(path, "scene")
        log.info("scene ready: %s", path)
    ctx.progress("downloading", done=len(stacks), total=len(stacks), unit="scenes", force=True)


register(JobKind("download", DownloadSpec, run, "fetch and stack Sentinel-2 scenes (Copernicus, Earth Search, local)"))
