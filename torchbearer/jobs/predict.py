"""The ``predict`` kind: an ensemble of trained models → a probability map (COG) per scene.

```yaml
name: chaco-ensemble
kind: predict
models: [{job: fcn}, {job: farseg, weight: 2}, {checkpoint: models/unet.ckpt}]
scenes: [data/S2A_MSIL2A_….SAFE]          # or an imagery: block
combine: weighted                          # mean | weighted | vote | max
output: outputs/chaco-ensemble.tif
```
A ``{job: …}`` model is that finished train job's best checkpoint, and the prediction runs after it. Everything
heavy (torch, rasterio) is imported inside :func:`run`, so reading job files stays light.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from torchbearer.imagery.spec import ImagerySpec
from torchbearer.jobs import JobKind, register
from torchbearer.spec import JobSpec, StrictModel, require_path_or_job

if TYPE_CHECKING:
    from torchbearer.context import JobContext
    from torchbearer.inference.members import Member


class ModelRef(StrictModel):
    """One member: a checkpoint file, or the best checkpoint of a finished train job (by name or id)."""

    checkpoint: str | None = Field(None, description="path to a .ckpt written by a train job")
    job: str | int | None = Field(None, description="a train job (name or id) whose best checkpoint to use")
    weight: float = Field(1.0, gt=0, description="weight for combine: weighted (and weighted votes)")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="name in tags")

    @model_validator(mode="after")
    def _one_source(self) -> ModelRef:
        require_path_or_job(self.checkpoint, self.job, "checkpoint")
        return self


class PredictSpec(JobSpec):
    """A prediction job: which models, which scenes, how to combine, where to write."""

    kind: Literal["predict"] = "predict"
    path_fields = ("scenes", "patches", "output", "models.checkpoint", "imagery.paths", "imagery.aoi")
    models: list[ModelRef] = Field(min_length=1, description="the ensemble's members")
    scenes: list[str | list[str]] = Field(
        default_factory=list,
        description="SAFE folders or stacked GeoTIFFs; a list is one scene at several resolutions",
    )
    imagery: ImagerySpec | None = Field(None, description="fetch the scenes instead of listing them")
    combine: Literal["mean", "weighted", "vote", "max"] = "mean"
    output: str = Field(description="the map (.tif); with several scenes each gets _<scene> added")
    window: int = Field(256, ge=32, le=8192, description="window size, pixels")
    overlap: float = Field(0.25, ge=0, le=0.75, description="overlap of neighbouring windows, fraction")
    batch_size: int = Field(8, ge=1, le=1024, description="most windows per forward pass")
    tta: Literal["none", "flips", "d4"] = Field("none", description="test-time augmentation")
    class_map: bool = Field(False, description="also write a class map (<output>.classes.tif)")
    member_maps: bool = Field(False, description="also write each member's map (<output>.<name>.tif)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    optimize: bool = Field(True, description="trace and freeze the models for a faster CPU forward")
    runtime: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto",
        description="CPU forward: PyTorch, ONNX Runtime, whichever a short measurement finds faster, or ONNX "
        "Runtime on an 8-bit quantization calibrated on the scene (faster, labels not exactly PyTorch's)",
    )
    # Classification checkpoints (a classify job's): see jobs/classify_predict.py.
    patches: str | None = Field(None, description="classifiers: a folder of patches → a CSV output")
    stride: int | None = Field(None, ge=1, le=4096, description="classifiers on a scene: pixels between patches")

    @model_validator(mode="before")
    @classmethod
    def _after_model_jobs(cls, data: Any) -> Any:
        # A member taken from a train job can only be read once that job has finished: run after it.
        if isinstance(data, dict) and isinstance(data.get("models"), list):
            refs = [m["job"] for m in data["models"] if isinstance(m, dict) and m.get("job") is not None]
            after = list(data.get("after") or [])
            data = {**data, "after": after + [r for r in refs if r not in after]}
        return data

    @model_validator(mode="after")
    def _input(self) -> PredictSpec:
        if self.patches is not None:  # classifiers over a folder of patches
            if self.scenes or self.imagery is not None:
                raise ValueError("give patches (a folder) or scenes / imagery, not both")
            if not self.output.lower().endswith(".csv"):
                raise ValueError(f"output {self.output!r}: patches are classified into a CSV (.csv)")
            return self
        if bool(self.scenes) == (self.imagery is not None):
            raise ValueError("give either scenes (paths) or an imagery block, not both and not neither")
        if not self.output.lower().endswith((".tif", ".tiff")):
            raise ValueError(f"output {self.output!r} must be a GeoTIFF path ending in .tif")
        return self


def checkpoint_of(ref: ModelRef, ctx: JobContext, where: str) -> tuple[Path, str]:
    """The checkpoint file a model reference names, and the model's default name (file stem or job)."""
    if ref.checkpoint is not None:
        path = ctx.resolve(ref.checkpoint)
        return path, path.stem
    outputs = ctx.job_outputs(ref.job, "best_checkpoint")
    if not outputs:
        raise LookupError(f"{where}: job {ref.job!r} recorded no best_checkpoint")
    return Path(outputs[-1]["path"]), str(ref.job)


def load_members(spec: PredictSpec, ctx: JobContext, device: str) -> list[Member]:
    """Load every member's checkpoint and check they can be combined (before any scene is touched)."""
    from torchbearer.inference.members import Member, check_compatible
    from torchbearer.ml.members import load_member

    members: list[Member] = []
    for i, ref in enumerate(spec.models):
        path, default = checkpoint_of(ref, ctx, f"models[{i}]")
        model, card = load_member(path, device)
        members.append(Member(name=ref.name or default, model=model, card=card, source=str(path), weight=ref.weight))
    names = Counter(m.name for m in members)
    seen: Counter[str] = Counter()
    for m in members:
        if names[m.name] > 1:  # two checkpoints with one stem (or one job twice): number them
            seen[m.name] += 1
            m.name = f"{m.name}-{seen[m.name]}"
    check_compatible(members)
    return members


def run(spec: PredictSpec, ctx: JobContext) -> None:
    """Load and check the members, get the scenes, predict each into its map; resumable after SIGTERM."""
    import torch

    from torchbearer.context import JobInterrupted
    from torchbearer.imagery.acquire import job_scenes, scene_output
    from torchbearer.inference.ensemble import PredictionInterrupted, PredictOptions, predict_scene
    from torchbearer.inference.onnx import choose_runtimes
    from torchbearer.inference.paths import map_paths
    from torchbearer.inference.resume import is_complete
    from torchbearer.jobs.classify_predict import is_classification, run_classification

    if is_classification(spec, ctx):
        return run_classification(spec, ctx)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if spec.device == "auto" else spec.device
    members = load_members(spec, ctx, device)
    runtimes = choose_runtimes(members, spec.runtime, device, window=spec.window, optimize=spec.optimize,
                               int8_dir=ctx.run_dir / "int8")  # fmt: skip
    resolutions = sorted({int(m.card.resolution) for m in members})
    # SAFE folders not stacked yet are stacked while the windows are read (they flow from the first strip)
    scenes = job_scenes(ctx, resolutions, imagery=spec.imagery, scenes=spec.scenes, streaming=True)
    options = PredictOptions(
        window=spec.window, overlap=spec.overlap, batch_size=spec.batch_size, combine=spec.combine, tta=spec.tta,
        class_map=spec.class_map, member_maps=spec.member_maps, device=device, optimize=spec.optimize,
        runtime=",".join(runtimes),
    )  # fmt: skip
    for i, stacks in enumerate(scenes):
        output = scene_output(ctx.resolve(spec.output), stacks, len(scenes))
        if is_complete(output, members, stacks, options):  # done by an earlier attempt
            for path in map_paths(output, members, options).values():
                ctx.output(path, "map")
            continue

        def report(done: int, total: int, mpx_per_s: float, eta_s: float | None, i: int = i) -> None:
            ctx.progress(
                "predicting", done=done, total=total, unit="windows", eta_s=eta_s,
                mpx_per_s=mpx_per_s, scene=f"{i + 1}/{len(scenes)}",
            )  # fmt: skip

        try:
            predict_scene(members, stacks, output, options, report=report, should_stop=lambda: ctx.should_stop)
        except PredictionInterrupted as exc:
            raise JobInterrupted(str(exc)) from exc
        ctx.progress("writing", done=i + 1, total=len(scenes), unit="scenes", force=True)
        for path in map_paths(output, members, options).values():
            ctx.output(path, "map")


register(JobKind(name="predict", spec=PredictSpec, run=run, description="ensemble of models → probability map"))
