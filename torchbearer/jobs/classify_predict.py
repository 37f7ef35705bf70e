"""The ``predict`` kind with classification checkpoints (cards with ``arch: classifier``).

```yaml
name: scl-map
kind: predict
models: [{job: scl-classifier}]
scenes: [data/S2A_MSIL2A_…_T29UNU_….SAFE]    # → a class-probability GeoTIFF at patch resolution
stride: 8                                   # pixels between patches (default: the patch size)
output: outputs/scl-classes.tif
# or, instead of scenes: patches: data/patches/new/  with output: outputs/patches.csv
```
:func:`run_classification` is what ``predict``'s ``run`` hands over to when its models are classifiers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchbearer.context import JobContext
    from torchbearer.jobs.predict import PredictSpec


def member_checkpoints(spec: PredictSpec, ctx: JobContext) -> list[Path]:
    """Each model's checkpoint file: a path, or the best checkpoint of a finished job."""
    paths = []
    for i, ref in enumerate(spec.models):
        if ref.checkpoint is not None:
            paths.append(ctx.resolve(ref.checkpoint))
            continue
        outputs = ctx.job_outputs(ref.job, "best_checkpoint")
        if not outputs:
            raise LookupError(f"models[{i}]: job {ref.job!r} recorded no best_checkpoint")
        paths.append(Path(outputs[-1]["path"]))
    return paths


def is_classification(spec: PredictSpec, ctx: JobContext) -> bool:
    """True when the models are classifiers (all of them: mixing with segmentation models is an error)."""
    from torchbearer.inference.classify import CLASSIFIER_ARCH
    from torchbearer.ml.checkpoint import CheckpointError
    from torchbearer.ml.members import read_card

    paths = member_checkpoints(spec, ctx)
    kinds = {path: read_card(path).arch == CLASSIFIER_ARCH for path in paths}
    if len(set(kinds.values())) > 1:
        raise CheckpointError(f"classifiers and segmentation models cannot be combined: {kinds}")
    if spec.patches is not None and not all(kinds.values()):
        raise CheckpointError("patches: needs classification checkpoints (a classify job's); these segment scenes")
    return all(kinds.values())


def run_classification(spec: PredictSpec, ctx: JobContext) -> None:
    """Classify a folder of patches into a CSV, or sweep each scene into a class-probability GeoTIFF."""
    import torch

    from torchbearer.imagery.acquire import job_scenes, scene_output
    from torchbearer.inference.classify import (
        check_compatible,
        load_classifier,
        predict_patch_folder,
        predict_scene_patches,
    )

    device = ("cuda" if torch.cuda.is_available() else "cpu") if spec.device == "auto" else spec.device
    classifiers = [load_classifier(path, device, ref.weight)
                   for path, ref in zip(member_checkpoints(spec, ctx), spec.models, strict=True)]  # fmt: skip
    check_compatible(classifiers)
    if spec.patches is not None:
        output = ctx.resolve(spec.output)
        count = predict_patch_folder(classifiers, ctx.resolve(spec.patches), output, batch_size=spec.batch_size,
                                     report=ctx.progress)  # fmt: skip
        ctx.progress("writing", done=count, total=count, unit="patches", force=True)
        ctx.output(output, "table")
        return
    resolution = round(classifiers[0].card.resolution or 20)
    scenes = job_scenes(ctx, [resolution], imagery=spec.imagery, scenes=spec.scenes)
    for i, stacks in enumerate(scenes):
        output = scene_output(ctx.resolve(spec.output), stacks, len(scenes))
        predict_scene_patches(classifiers, stacks[0], output, stride=spec.stride, batch_size=spec.batch_size,
                              report=ctx.progress, should_stop=lambda: ctx.should_stop)  # fmt: skip
        ctx.progress("writing", done=i + 1, total=len(scenes), unit="scenes", force=True)
        ctx.output(output, "map")
