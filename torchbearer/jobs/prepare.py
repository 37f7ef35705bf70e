"""The ``prepare`` kind: turn a scene and vector labels into training data, one or several steps per job.

```yaml
name: cloud-chips
kind: prepare
scene: data/S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE   # or imagery: {...}
resolution: 60                        # the stack of a SAFE folder
steps:
  - rasterize: {labels: masks/t29unu_cloud.geojson, output: prepared/cloud.tif, all_touched: true}
  - chip: {size: 64, overlap: 16, output: prepared/chips}          # mask: the rasterize output
  - split: {val: 0.2, seed: 7}                                       # chips: the chip folder
  - summarize: {output: prepared/summary}
```
The steps (:mod:`torchbearer.prepare`) are rasterize, chip, split, mosaic, flatten and summarize; each one's
product feeds the next. Products are recorded as outputs: ``mask``, ``chips``, ``scene`` (a mosaic),
``table``, ``summary`` and ``plot``. Heavy imports happen inside :func:`run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from torchbearer.imagery.spec import ImagerySpec
from torchbearer.jobs import JobKind, register
from torchbearer.prepare.spec import Step, check_chain
from torchbearer.spec import JobSpec

if TYPE_CHECKING:
    from torchbearer.context import JobContext


class PrepareSpec(JobSpec):
    """A preparation job: the scene the steps start from (optional: a mosaic can make one) and the steps."""

    kind: Literal["prepare"] = "prepare"
    path_fields = ("scene", "imagery.paths", "imagery.aoi", "steps.rasterize.labels", "steps.rasterize.output",
                   "steps.rasterize.scene", "steps.chip.output", "steps.chip.scene", "steps.chip.mask",
                   "steps.split.chips", "steps.mosaic.inputs", "steps.mosaic.output", "steps.flatten.output",
                   "steps.flatten.scene", "steps.flatten.mask", "steps.summarize.output", "steps.summarize.source",
                   "steps.summarize.mask", "steps.patches.labels", "steps.patches.output",
                   "steps.patches.scene")  # fmt: skip
    scene: str | None = Field(None, description="SAFE folder or zip, stacked GeoTIFF, or any GDAL raster")
    imagery: ImagerySpec | None = Field(None, description="fetch the scene instead of naming it (the first one)")
    resolution: Literal[10, 20, 60] = Field(20, description="metres: the stack made of a SAFE scene")
    steps: list[Step] = Field(min_length=1, description="run in order; each product feeds the next step")

    @model_validator(mode="after")
    def _chain(self) -> PrepareSpec:
        if self.scene is not None and self.imagery is not None:
            raise ValueError("give scene (a path) or an imagery block, not both")
        check_chain(self.steps, self.scene is not None or self.imagery is not None)
        return self


def run(spec: PrepareSpec, ctx: JobContext) -> None:
    """Fetch or stack the scene if there is one, run the steps, record their products."""
    from torchbearer.context import JobInterrupted
    from torchbearer.imagery.acquire import job_scenes, one_scene, stops_interrupt
    from torchbearer.prepare import Stopped
    from torchbearer.prepare.pipeline import Chain, Runner

    runner = Runner(resolve=lambda p: ctx.resolve(p), data_dir=ctx.settings.data_dir, resolution=spec.resolution,
                    report=ctx.progress, should_stop=lambda: ctx.should_stop)  # fmt: skip
    runner.preflight(spec.steps)
    chain = Chain()
    if spec.imagery is not None:
        chain.scene = one_scene(job_scenes(ctx, [spec.imagery.resolution], imagery=spec.imagery), "imagery")[0]
    elif spec.scene is not None:
        with stops_interrupt(ctx):  # a SAFE folder or zip is stacked through the same path
            chain.scene = runner.scene(spec.scene)
    try:
        runner.run(spec.steps, chain)
    except Stopped as exc:
        raise JobInterrupted(str(exc)) from None
    finally:
        for path, kind in chain.outputs:
            ctx.output(path, kind)
    ctx.progress("writing", done=len(spec.steps), total=len(spec.steps), unit="steps", force=True)


register(JobKind("prepare", PrepareSpec, run, "rasterize labels, chip, mosaic, split, flatten, summarize"))
