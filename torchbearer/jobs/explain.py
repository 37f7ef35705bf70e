"""The ``explain`` kind: why a trained model says what it says.

```yaml
name: why-cloud
kind: explain
model: {job: fcn}                       # or {checkpoint: models/unet.ckpt}
target_class: cloud                     # default: a binary model's target class
layer: auto                             # or a module name, e.g. encoder.layer3
methods: [gradcam, gradcam++, guided]
patches: {job: fcn, count: 8}           # a train (or classify) job's validation patches; or {folder: patches/}
scene: data/S2A_MSIL2A_….SAFE           # also a whole-scene CAM GeoTIFF (SAFE folder or stacked GeoTIFF)
attributions: {method: integrated_gradients, baseline: mean}
embeddings: {k: null, k_range: [2, 8], tensorboard: true}
```
Everything goes to ``<run folder>/explain/`` and is recorded as outputs of kind ``explanation``; ``explain.md``
in the run folder lists what was made. Heavy imports happen inside :func:`run`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from torchbearer.jobs import JobKind, register
from torchbearer.jobs.predict import ModelRef
from torchbearer.spec import JobSpec, StrictModel, require_path_or_job

if TYPE_CHECKING:
    from torchbearer.context import JobContext
    from torchbearer.explain.patches import Patch
    from torchbearer.ml.checkpoint import ModelCard

log = logging.getLogger(__name__)

Method = Literal["gradcam", "gradcam++", "guided"]


class PatchesSpec(StrictModel):
    """Patches to explain: a folder of patches, or the validation patches of a train or classify job."""

    folder: str | None = Field(None, description="GeoTIFF patches (uint16 DN, bands named or in stack order)")
    job: str | int | None = Field(None, description="a train or classify job (name or id): its validation patches")
    count: int = Field(16, ge=1, le=10_000, description="most patches taken (a classifier's: spread over them)")

    @model_validator(mode="after")
    def _one_source(self) -> PatchesSpec:
        require_path_or_job(self.folder, self.job, "folder")
        return self


class AttributionSpec(StrictModel):
    """Per-band importance through Captum."""

    method: Literal["integrated_gradients", "gradient_shap"] = "integrated_gradients"
    baseline: Literal["mean", "zero"] = Field("mean", description="mean: training mean, as no data is fed; zero")
    steps: int = Field(32, ge=2, le=512, description="integration steps (IG) or samples (GradientShap)")
    patches: int = Field(16, ge=1, le=10_000, description="most patches attributed")


class EmbeddingSpec(StrictModel):
    """Feature vectors per patch (or scene window) clustered into patterns."""

    k: int | None = Field(None, ge=2, le=100, description="clusters; null: best silhouette over k_range")
    k_range: tuple[int, int] = Field((2, 8), description="smallest and largest k tried")
    tensorboard: bool = Field(True, description="also write TensorBoard projector files")

    @model_validator(mode="after")
    def _range(self) -> EmbeddingSpec:
        if not 2 <= self.k_range[0] <= self.k_range[1]:
            raise ValueError(f"k_range {list(self.k_range)} must be [low, high] with 2 ≤ low ≤ high")
        return self


class ExplainSpec(JobSpec):
    """An explanation job: which model, which class, which inputs, which explanations."""

    kind: Literal["explain"] = "explain"
    path_fields = ("model.checkpoint", "patches.folder", "scene")
    model: ModelRef = Field(description="the checkpoint to explain (a file, or a train job's best)")
    target_class: str | None = Field(None, description="class name to explain (default: a binary target)")
    layer: str = Field("auto", description="target layer: auto (per architecture) or a module name")
    methods: list[Method] = Field(default_factory=lambda: ["gradcam", "gradcam++", "guided"], min_length=1)
    patches: PatchesSpec | None = Field(None, description="patches drawn as CAM overlays")
    scene: str | None = Field(None, description="a SAFE folder or stacked GeoTIFF: whole-scene CAM GeoTIFF")
    attributions: AttributionSpec | None = Field(default_factory=AttributionSpec)
    embeddings: EmbeddingSpec | None = Field(default_factory=EmbeddingSpec)
    window: int = Field(256, ge=32, le=8192, description="scene window size, pixels (a multiple of 32)")
    overlap: float = Field(0.25, ge=0, le=0.75, description="overlap of scene windows, fraction")
    batch_size: int = Field(4, ge=1, le=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _after_jobs(cls, data: Any) -> Any:
        # The model's and the patches' jobs must have finished: run after them.
        if isinstance(data, dict):
            refs = [part.get("job") for part in (data.get("model"), data.get("patches")) if isinstance(part, dict)]
            after = list(data.get("after") or [])
            data = {**data, "after": after + [r for r in refs if r is not None and r not in after]}
        return data

    @model_validator(mode="after")
    def _inputs(self) -> ExplainSpec:
        if self.patches is None and self.scene is None:
            raise ValueError("give patches (a folder, or a train or classify job) or a scene, or both")
        if self.window % 32:
            raise ValueError(f"window {self.window} must be a multiple of 32 (U-Net and FarSeg downsample by 32)")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods are listed twice")
        return self


# -- running ---------------------------------------------------------------------------------------------------


@dataclass
class Made:
    """What the job wrote, for the outputs and ``explain.md``: (path, what it is)."""

    items: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, ctx: JobContext, path: Path, what: str) -> None:
        ctx.output(path, "explanation")
        self.items.append((Path(path), what))


@dataclass
class Subject:
    """The model being explained: network, card, target layer, class index; where its explanations go."""

    model: Any
    card: ModelCard
    layer: Any
    index: int
    device: str
    out: Path
    made: Made


def scene_stack(spec: ExplainSpec, ctx: JobContext, resolution: float) -> Path:
    """The scene as a stacked GeoTIFF at the model's resolution (a SAFE folder or zip is stacked into the cache)."""
    from torchbearer.imagery.acquire import job_scenes, one_scene

    assert spec.scene is not None
    return one_scene(job_scenes(ctx, [int(resolution)], scenes=[spec.scene]), "scene")[0]


def job_patches(spec: ExplainSpec, ctx: JobContext, card: ModelCard) -> list[Patch]:
    """The validation patches of the job ``spec.patches.job``, rebuilt from its job file: a train job's for a
    segmentation model, a classify job's for a classifier (the split each validated on)."""
    from torchbearer.explain.model import ExplainError
    from torchbearer.inference.classify import CLASSIFIER_ARCH

    assert spec.patches is not None and spec.patches.job is not None
    ref = spec.patches.job
    try:
        job = ctx.job_record(ref)  # written into job.json by the daemon
    except LookupError:
        job = None
    kind = job["kind"] if job is not None else None
    if kind not in ("train", "classify"):
        found = f" (it is a {kind} job)" if kind else ""
        raise ExplainError(f"patches.job: {ref!r} is not a train or classify job in the store{found}")
    wanted = "classify" if card.arch == CLASSIFIER_ARCH else "train"
    if kind != wanted:  # a classifier's patches and a segmentation model's scenes differ in size and units
        model = f"the {card.backbone} classifier" if wanted == "classify" else f"the {card.arch} segmentation model"
        raise ExplainError(f"patches.job: {ref!r} is a {kind} job; {model} is explained on a {wanted} job's "
                           "validation patches, or on a folder (patches: {folder: …})")  # fmt: skip
    assert job is not None
    if kind == "classify":
        return classify_job_patches(spec, ctx, card, job["spec"])
    return train_job_patches(spec, ctx, card, job["spec"])


def classify_job_patches(spec: ExplainSpec, ctx: JobContext, card: ModelCard, given: dict[str, Any]) -> list[Patch]:
    """The validation patches of a classify job (its spec ``given``), split as the job split them."""
    from torchbearer.explain.model import ExplainError
    from torchbearer.explain.patches import classify_validation_patches
    from torchbearer.jobs.classify import ClassifySpec, split_patches
    from torchbearer.ml.patches import PatchDataError

    assert spec.patches is not None
    try:
        patch_set, split = split_patches(ClassifySpec.model_validate(given), ctx)
    except PatchDataError as exc:
        raise ExplainError(f"patches.job {spec.patches.job!r}: {exc}") from None
    return classify_validation_patches(patch_set, split["val"], card, spec.patches.count)


def train_job_patches(spec: ExplainSpec, ctx: JobContext, card: ModelCard, given: dict[str, Any]) -> list[Patch]:
    """The first validation patches of a train job (its spec ``given``), split as the job split them."""
    from torchbearer.explain.patches import job_validation_patches
    from torchbearer.jobs.train import TrainSpec, build_datamodule, scene_stacks
    from torchbearer.ml.scenes import load_scenes

    assert spec.patches is not None
    train = TrainSpec.model_validate(given)
    stacks, resolution = scene_stacks(train, ctx)
    masks = [ctx.resolve(m) for m in ([train.masks] if isinstance(train.masks, str) else train.masks)]
    scenes = load_scenes(stacks, masks, train.class_names, bands=train.bands, class_field=train.class_field,
                         resolution=resolution)  # fmt: skip
    datamodule = build_datamodule(train, ctx, scenes, cuda=False)
    assert datamodule.split is not None
    return job_validation_patches(scenes, datamodule.split.val, train.train.patch_size, spec.patches.count, card)


def run(spec: ExplainSpec, ctx: JobContext) -> None:
    """Load the model, check the class, layer and inputs, then make each explanation asked for."""
    import torch

    from torchbearer.allocator import share_one_arena
    from torchbearer.explain.model import ExplainError, class_index, find_layer, load_explained
    from torchbearer.explain.patches import check_bands, classifier_patches, folder_patches
    from torchbearer.imagery.cache import stack_info
    from torchbearer.inference.classify import CLASSIFIER_ARCH
    from torchbearer.jobs.predict import checkpoint_of

    share_one_arena()  # the worker runs this one job: keep its resident set flat over wide scenes
    device = ("cuda" if torch.cuda.is_available() else "cpu") if spec.device == "auto" else spec.device
    ctx.progress("preparing data", force=True)
    path, _ = checkpoint_of(spec.model, ctx, "model")
    model, card = load_explained(path, device)
    classifier = card.arch == CLASSIFIER_ARCH
    # Everything a user can get wrong is checked before the first long step.
    index = class_index(card.classes, spec.target_class, card.task)
    layer_name, layer = find_layer(model, spec.layer)
    if classifier and spec.scene:
        raise ExplainError(f"scene: whole-scene CAMs are made with segmentation models; {path.name} is a "
                           f"{card.backbone} classifier of {card.extra.get('patch_size', '?')}-pixel patches: "
                           "explain it on patches (patches: {folder: …})")  # fmt: skip
    stack = scene_stack(spec, ctx, card.resolution) if spec.scene else None
    if stack is not None:
        check_bands(stack_info(stack), card)
    patches: list[Patch] = []
    if spec.patches is not None and spec.patches.folder is not None:
        folder = ctx.resolve(spec.patches.folder)
        if classifier:
            patches = classifier_patches(folder, card, spec.patches.count)
        else:
            patches = folder_patches(folder, card)[: spec.patches.count]
    elif spec.patches is not None:
        patches = job_patches(spec, ctx, card)
    ctx.check_stop()

    out = ctx.run_dir / "explain"
    out.mkdir(exist_ok=True)
    made = Made()
    subject = Subject(model, card, layer, index, device, out, made)
    what = f"class {card.classes[index]!r} of {path.name} ({card.arch}), layer {layer_name}"
    log.info("explaining %s", what)
    if patches:
        patch_cams(spec, ctx, subject, patches)
    if stack is not None:
        scene_map(spec, ctx, subject, stack)
    sources = patches
    if not sources and stack is not None and (spec.attributions or spec.embeddings):
        from torchbearer.explain.patches import scene_window_patches

        sources = list(scene_window_patches(stack, card, spec.window))
    if spec.attributions is not None and sources:
        attributions(spec, ctx, subject, sources)
    if spec.embeddings is not None and sources:
        embeddings(spec, ctx, subject, sources)
    write_summary(ctx.run_dir / "explain.md", what, spec, made)
    ctx.output(ctx.run_dir / "explain.md", "explanation")


def _batch(patches: list[Patch], card: ModelCard, device: str) -> tuple[Any, Any]:
    """Standardised inputs (B × bands × H × W) and validity (B × H × W) of patches of one shape."""
    import numpy as np
    import torch

    from torchbearer.explain.patches import standardise

    x = torch.from_numpy(np.stack([standardise(p, card) for p in patches])).to(device)
    valid = torch.from_numpy(np.stack([p.valid for p in patches])).to(device)
    return x, valid


def patch_cams(spec: ExplainSpec, ctx: JobContext, subject: Subject, patches: list[Patch]) -> None:
    """A PNG per patch: RGB with each method's map, the prediction in the title."""
    import torch

    from torchbearer.explain.cams import CamMaker, save_overlay
    from torchbearer.explain.model import ClassScore, predicted
    from torchbearer.explain.patches import batches

    card, index = subject.card, subject.index
    folder = subject.out / "cams"
    folder.mkdir(exist_ok=True)
    maker = CamMaker(subject.model, subject.layer, list(spec.methods))
    binary = card.task == "binary"
    done = 0
    try:
        for group in batches(patches, spec.batch_size):
            ctx.check_stop()
            x, valid = _batch(group, card, subject.device)
            maps = maker(x, [ClassScore(index, binary, v) for v in valid])
            with torch.inference_mode():
                titles = predicted(subject.model(x), card.classes, card.task)
            for k, patch in enumerate(group):
                title = f"{patch.name}: predicted {titles[k]}; explaining {card.classes[index]}"
                png = save_overlay(folder / f"{patch.name}.png", x[k].cpu().numpy(), card.bands, maps[k],
                                   list(spec.methods), valid[k].cpu().numpy(), title)  # fmt: skip
                subject.made.add(ctx, png, f"CAM overlay of {patch.name} (predicted {titles[k]})")
            done += len(group)
            ctx.progress("explaining", done=done, total=len(patches), unit="patches", step_name="CAMs")
    finally:
        maker.close()


def scene_map(spec: ExplainSpec, ctx: JobContext, subject: Subject, stack: Path) -> None:
    """The whole scene's CAMs as a GeoTIFF on its grid."""
    from torchbearer.context import JobInterrupted
    from torchbearer.explain.scene import CamsInterrupted, scene_cams

    path = subject.out / f"cam_{subject.card.classes[subject.index]}_{stack.stem}.tif"

    def report(done: int, total: int, mpx_per_s: float) -> None:
        ctx.progress("explaining", done=done, total=total, unit="windows", mpx_per_s=mpx_per_s, step_name="scene")

    try:
        result = scene_cams(
            subject.model, subject.card, subject.layer, list(spec.methods), subject.index, stack, path,
            window=spec.window, overlap=spec.overlap, batch_size=spec.batch_size, device=subject.device,
            report=report, should_stop=lambda: ctx.should_stop,
        )  # fmt: skip
    except CamsInterrupted as exc:
        raise JobInterrupted(str(exc)) from exc
    subject.made.add(ctx, result.path, f"scene CAMs ({', '.join(spec.methods)}; a float32 band each, NaN = no "
                     f"data), {result.megapixels:.2f} Mpx in {result.seconds:.0f} s")  # fmt: skip


def attributions(spec: ExplainSpec, ctx: JobContext, subject: Subject, patches: list[Patch]) -> None:
    """Band importance CSV and bar chart."""
    import numpy as np
    import torch

    from torchbearer.explain.attributions import band_attributions, write_bar_chart, write_csv
    from torchbearer.explain.patches import batches

    options, card = spec.attributions, subject.card
    assert options is not None
    ctx.progress("explaining", force=True, step_name="band attributions")
    chosen = patches[: options.patches]
    groups = [_batch(group, card, subject.device) for group in batches(chosen, spec.batch_size)]
    zero = (-np.asarray(card.norm["mean"]) / np.asarray(card.norm["std"])).astype(np.float32)
    ranked = band_attributions(
        subject.model, groups, list(card.bands), subject.index, card.task == "binary", method=options.method,
        baseline=options.baseline, zero_reflectance=torch.from_numpy(zero), steps=options.steps,
    )  # fmt: skip
    title = f"{options.method} vs {options.baseline} baseline, class {card.classes[subject.index]}, " \
            f"{len(chosen)} patches"  # fmt: skip
    subject.made.add(ctx, write_csv(subject.out / "band_importance.csv", ranked), f"band importance ({title})")
    subject.made.add(ctx, write_bar_chart(subject.out / "band_importance.png", ranked, title),
                     f"bar chart of band importance; first {ranked[0].band}")  # fmt: skip


def embeddings(spec: ExplainSpec, ctx: JobContext, subject: Subject, patches: list[Patch]) -> None:
    """Vectors, clusters, PCA plot, example grid, footprints, TensorBoard projector."""
    import numpy as np

    from torchbearer.explain import embeddings as emb
    from torchbearer.explain.model import predicted
    from torchbearer.explain.patches import batches
    from torchbearer.ml.plots import rgb_image

    options, card, out = spec.embeddings, subject.card, subject.out
    assert options is not None
    ctx.progress("explaining", force=True, step_name="embeddings")
    vectors, predictions, images = [], [], []
    for group in batches(patches, spec.batch_size):
        ctx.check_stop()
        x, valid = _batch(group, card, subject.device)
        v, output = emb.embed(subject.model, subject.layer, x, valid)
        vectors.append(v)
        predictions += [t.split(" (")[0] for t in predicted(output, card.classes, card.task)]
        images += [emb.thumbnail(rgb_image(i, list(card.bands)), 64) for i in x.cpu().numpy()]
    matrix = np.concatenate(vectors)
    clusters = emb.cluster(matrix, options.k, options.k_range)
    pcs = emb.pca_2d(matrix)
    chosen = f"k = {clusters.k}" + (
        f" (best silhouette {clusters.silhouettes[clusters.k]:.3f} over k = {min(clusters.silhouettes)}–"
        f"{max(clusters.silhouettes)})" if clusters.silhouettes else " (given)")  # fmt: skip
    add = subject.made.add
    add(
        ctx,
        emb.write_parquet(out / "embeddings.parquet", patches, matrix, predictions, clusters.labels, pcs),
        f"{len(patches)} embeddings of {matrix.shape[1]} values with x, y, lon, lat, prediction, cluster",
    )
    add(
        ctx,
        emb.write_pca_plot(out / "embeddings_pca.png", pcs, clusters.labels, f"k-means, {chosen}"),
        f"PCA of the embeddings coloured by cluster; {chosen}",
    )
    add(ctx, emb.write_cluster_grid(out / "clusters.png", images, clusters.labels), "example patches per cluster")
    if all(p.georeferenced for p in patches):  # PNG / JPEG patches have no footprint to map
        add(
            ctx,
            emb.write_footprints(out / "clusters.gpkg", patches, predictions, clusters.labels),
            "footprints of the patches with their cluster (GeoPackage, layer patches)",
        )
    if options.tensorboard:
        board = emb.write_projector(out / "tensorboard", matrix, patches, predictions, clusters.labels, images)
        add(ctx, board, "TensorBoard projector (tensorboard --logdir this folder)")


def write_summary(path: Path, what: str, spec: ExplainSpec, made: Made) -> None:
    """``explain.md``: what was explained and a line per file made."""
    lines = [f"# Explanation: {spec.name}", "", f"Explains {what}; methods {', '.join(spec.methods)}.", ""]
    run_dir = path.parent
    for item, description in made.items:
        shown = item.relative_to(run_dir) if item.is_relative_to(run_dir) else item
        lines.append(f"- `{shown}`: {description}")
    path.write_text("\n".join(lines) + "\n")


register(JobKind("explain", ExplainSpec, run, "CAMs, band attributions and embedding patterns of a model"))
