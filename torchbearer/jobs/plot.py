"""The ``plot`` kind: a trained model drawn on a scene or a chip folder, and a job's learning curves.

```yaml
name: look-unet
kind: plot
model: {job: unet}                 # or {checkpoint: runs/…/checkpoints/best.ckpt} (a forest's .joblib too)
input: data/chips/                 # a chip folder, or a scene: SAFE folder or stacked GeoTIFF
masks: masks/t29unu_cloud.tif      # with a scene: its labels (optional; the mask panel stays blank without)
count: 4                           # plot_0.png … plot_3.png
patch_size: 256                    # with a scene: window edge, pixels
curves: unet                       # optional: learning curves of this job (curves_loss.png …)
```
Each ``plot_{i}.png`` shows the image (RGB composite, 2–98 % stretch), the mask and the prediction side by side.
A model taken from a job makes the plot run after it. Heavy imports happen inside :func:`run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from torchbearer.jobs import JobKind, register
from torchbearer.jobs.predict import ModelRef
from torchbearer.spec import JobSpec

if TYPE_CHECKING:
    from torchbearer.context import JobContext


class PlotSpec(JobSpec):
    """A plot job: ``model`` on ``input`` (``count`` plots), and/or the learning ``curves`` of a job."""

    kind: Literal["plot"] = "plot"
    path_fields = ("model.checkpoint", "input", "masks", "output")
    model: ModelRef | None = Field(None, description="a checkpoint, or a train job whose best checkpoint to use")
    input: str | None = Field(None, description="a chip folder, or a scene (SAFE folder or stacked GeoTIFF)")
    masks: str | list[str] | None = Field(None, description="with a scene: mask files or folders (optional)")
    count: int = Field(4, ge=1, le=1000, description="plot_{i}.png files to draw")
    patch_size: int = Field(256, ge=16, le=4096, description="with a scene: window edge, pixels")
    curves: str | int | None = Field(None, description="a job (name or id) whose learning curves to draw")
    output: str | None = Field(None, description="folder for the PNGs (default: the run folder)")

    @model_validator(mode="before")
    @classmethod
    def _after_jobs(cls, data: Any) -> Any:
        # A model or curves taken from a job can only be read once that job has finished: run after it.
        if isinstance(data, dict):
            refs = [data.get("curves")]
            if isinstance(data.get("model"), dict):
                refs.append(data["model"].get("job"))
            after = list(data.get("after") or [])
            data = {**data, "after": after + [r for r in refs if r is not None and r not in after]}
        return data

    @model_validator(mode="after")
    def _what(self) -> PlotSpec:
        if (self.model is None) != (self.input is None):
            raise ValueError("give model and input together (what to draw on what)")
        if self.model is None and self.curves is None:
            raise ValueError("nothing to plot: give model and input, or curves (a job), or both")
        if self.masks is not None and self.input is None:
            raise ValueError("masks go with a scene input")
        return self


def model_path(ref: ModelRef, ctx: JobContext) -> Path:
    """The checkpoint file of a model reference (a path, or a finished train job's best checkpoint)."""
    if ref.checkpoint is not None:
        return ctx.resolve(ref.checkpoint)
    outputs = ctx.job_outputs(ref.job, "best_checkpoint")
    if not outputs:
        raise LookupError(f"model: job {ref.job!r} recorded no best_checkpoint")
    return Path(outputs[-1]["path"])


def is_chip_folder(path: Path) -> bool:
    """Whether ``path`` is a chip folder (it has ``train_frames/`` or ``val_frames/``), not a SAFE product."""
    return path.is_dir() and any((path / f"{s}_frames").is_dir() for s in ("train", "val", "test"))


def draw_samples(checkpoint: Path, source: Path, count: int, out_dir: Path, *, masks: list[Path] | None = None,
                 patch_size: int = 256, data_dir: Path | None = None, report: Any = None) -> list[Path]:  # fmt: skip
    """``plot_{i}.png`` of the model in ``checkpoint`` on a chip folder or a scene (a SAFE folder is stacked at
    the model's resolution into ``data_dir/cache`` first). The job and the ``torchbearer plot`` command share it.
    """
    from torchbearer.imagery.acquire import acquire, local_imagery, one_scene
    from torchbearer.ml.members import load_member
    from torchbearer.ml.plots import plot_chips, plot_scene

    if not source.exists():
        raise FileNotFoundError(f"input {source} does not exist")
    model, card = load_member(checkpoint, "cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_chip_folder(source):
        if masks:
            raise ValueError(f"{source} is a chip folder: its masks are inside, leave masks out")
        return plot_chips(model, card, source, count, out_dir, report)
    resolution = int(card.resolution)
    scenes = acquire(local_imagery([source], resolution), data_dir or source.parent, [resolution], report=report)
    [stack] = one_scene(scenes, str(source))
    return plot_scene(model, card, stack, count, out_dir, masks=masks, patch_size=patch_size, report=report)


def draw_curves(metrics: list[dict[str, Any]], job_name: str, job_id: int, out_dir: Path) -> list[Path]:
    """The learning curves of a job from its metric rows (``name``, ``value``, ``step``, ``epoch`` …; PNG
    files in ``out_dir``)."""
    from torchbearer.ml.plots import plot_curves

    if not metrics:
        raise LookupError(f"curves: job {job_name} (#{job_id}) recorded no metrics")
    out_dir.mkdir(parents=True, exist_ok=True)
    return plot_curves(metrics, out_dir, title=job_name)


def run(spec: PlotSpec, ctx: JobContext) -> None:
    """Draw the plots into the run folder (or ``output``) and record each as a ``plot`` output."""
    out_dir = ctx.resolve(spec.output) if spec.output else ctx.run_dir
    paths: list[Path] = []
    if spec.curves is not None:
        try:
            job = ctx.job_record(spec.curves)  # its metrics, written into job.json by the daemon
        except LookupError:
            raise LookupError(f"curves: no job {spec.curves!r}") from None
        paths += draw_curves(job.get("metrics", []), job["name"], job["id"], out_dir)
    if spec.model is not None and spec.input is not None:
        masks = [ctx.resolve(m) for m in ([spec.masks] if isinstance(spec.masks, str) else spec.masks or [])]
        ctx.progress("preparing data", force=True)
        paths += draw_samples(model_path(spec.model, ctx), ctx.resolve(spec.input), spec.count, out_dir,
                              masks=masks, patch_size=spec.patch_size, data_dir=ctx.settings.data_dir,
                              report=ctx.progress)  # fmt: skip
    for path in paths:
        ctx.output(path, "plot")


register(JobKind("plot", PlotSpec, run, "draw a model on a scene or chip folder, or a job's learning curves"))
