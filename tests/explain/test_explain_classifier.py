"""``explain`` on ``classify`` checkpoints: timm classifiers (``weights: null``) with the real per-band statistics of
the real T29UNU SCL patches and BigEarthNet patches, explained on those patches. A classifier that ``classify``
trained is explained through the daemon in ``test_explain_daemon.py``."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import rasterio
import shapely
import timm
import torch

from tests.classify.conftest import BIGEARTHNET, PATCHES
from tests.contract import ingest, job_context
from tests.explain.conftest import classifier_checkpoint
from torchbearer.context import JobContext
from torchbearer.explain.embeddings import embed
from torchbearer.explain.model import ExplainError, automatic_layer, find_layer, load_explained, predicted
from torchbearer.explain.patches import classifier_patches
from torchbearer.jobs import get_kind
from torchbearer.ml.checkpoint import ModelCard, save_checkpoint
from torchbearer.ml.patches import load_patch_set
from torchbearer.store import NewJob


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on the small shared test machine, more spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _context(project, store, name: str, spec: dict | None = None) -> JobContext:
    """The context of a new explain job; ``spec`` (as given) names the jobs its ``job.json`` carries."""
    (job_id,) = store.add_jobs([NewJob(name=name, kind="explain", spec_given={}, spec={})])
    run_dir = project.runs_dir / f"{job_id}-{name}"
    run_dir.mkdir(parents=True)
    return job_context(store, job_id, run_dir, project, spec=spec)


@pytest.fixture
def scl_classifier(project) -> Path:
    """A resnet18 for a copy of ``data/patches/t29unu-scl`` (4 classes, 16 × 16 at 60 m, 11 bands)."""
    shutil.copytree(PATCHES, project.project_dir / "scl")
    return classifier_checkpoint(project.project_dir / "scl", "resnet18", project.project_dir / "scl.ckpt")


def _explain(project, store, name: str, **fields) -> JobContext:
    spec = get_kind("explain").spec.model_validate({"name": name, **fields})
    ctx = _context(project, store, name, {"name": name, **fields})
    get_kind("explain").run(spec, ctx)
    ingest(store, ctx)
    return ctx


@pytest.mark.parametrize(
    ("backbone", "layer"),
    [("resnet18", "layer4"), ("mobilenetv2_100", "bn2"), ("efficientnet_b0", "bn2"), ("legacy_xception", "act4")],
)
def test_the_automatic_layer_of_a_timm_classifier_gives_its_penultimate_vector(backbone: str, layer: str) -> None:
    model = timm.create_model(backbone, in_chans=11, num_classes=4).eval()
    assert automatic_layer(model) == layer
    x = torch.randn(2, 11, 32, 32)
    _, module = find_layer(model, "auto")
    vectors, _ = embed(model, module, x, torch.ones(2, 32, 32, dtype=torch.bool))
    with torch.inference_mode():
        penultimate = model.forward_head(model.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(vectors, penultimate.numpy(), rtol=1e-4, atol=1e-5)


def test_a_classify_checkpoint_explained_on_its_patches(project, store, scl_classifier) -> None:
    ctx = _explain(
        project, store, "why-scl", model={"checkpoint": str(scl_classifier)}, target_class="cloud",
        patches={"folder": "scl", "count": 6}, methods=["gradcam", "gradcam++"],
        attributions={"steps": 4, "patches": 6},
        embeddings={"k": 3, "tensorboard": True},
    )  # fmt: skip
    out = ctx.run_dir / "explain"
    pngs = sorted(p.stem for p in (out / "cams").glob("*.png"))
    assert len(pngs) == 6 and {p.split("_")[0] for p in pngs} == {"cloud", "shadow", "vegetation", "water"}
    summary = (ctx.run_dir / "explain.md").read_text()
    assert "class 'cloud' of scl.ckpt (classifier), layer layer4" in summary
    assert "CAM overlay of water_" in summary and "(predicted " in summary

    with open(out / "band_importance.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11 and "B09" in {r["band"] for r in rows}
    assert abs(sum(float(r["share"]) for r in rows) - 1) < 1e-3

    table = pq.read_table(out / "embeddings.parquet").to_pandas()
    assert len(table) == 6 and sorted(set(table["cluster"])) == [0, 1, 2]
    assert len(table["embedding"][0]) == 512  # resnet18's pre-logits
    assert table["lon"].between(-10, -6).all() and table["lat"].between(52, 55).all()  # T29UNU, Ireland
    _, _, geometry, fields = pyogrio.raw.read(out / "clusters.gpkg")
    footprints = shapely.from_wkb(geometry)
    first = table["name"][0]
    folder, stem = first.split("_", 1)
    with rasterio.open(PATCHES / folder / f"{stem}.tif") as src:
        assert footprints[0].equals(shapely.box(*src.bounds))
    assert sorted(set(fields[2].tolist())) == [0, 1, 2]
    assert list((out / "tensorboard").glob("**/projector_config.pbtxt"))
    kinds = {Path(o["path"]).name: o["kind"] for o in store.outputs(ctx.job_id)}
    assert {kinds[n] for n in ("embeddings.parquet", "clusters.gpkg", "band_importance.png", "explain.md")} == {
        "explanation"
    }

    # What a classifier cannot do, and names that do not exist, fail before any work with what to change.
    with pytest.raises(ExplainError, match=r"class 'snow' is not one of the model's classes: cloud, shadow, veg"):
        _explain(project, store, "a", model={"checkpoint": str(scl_classifier)}, target_class="snow",
                 patches={"folder": "scl"})  # fmt: skip
    with pytest.raises(ExplainError, match=r"layer 'layer5' does not exist in this ResNet; did you mean 'layer4'"):
        _explain(project, store, "b", model={"checkpoint": str(scl_classifier)}, target_class="cloud",
                 layer="layer5", patches={"folder": "scl"})  # fmt: skip
    with pytest.raises(ExplainError, match=r"whole-scene CAMs are made with segmentation models"):
        _explain(project, store, "c", model={"checkpoint": str(scl_classifier)}, target_class="cloud",
                 scene="scl/water/x.tif")  # fmt: skip


def test_a_classifier_is_explained_on_its_classify_jobs_validation_patches(project, store, scl_classifier) -> None:
    # The classify job as queued: its job file fixes its split (seeded, stratified), so it need not have run.
    # A small val_fraction and another seed than the default: every one of its validation patches is drawn.
    data = {"root": "scl", "val_fraction": 0.05, "test_fraction": 0.2}
    classify = get_kind("classify").spec.model_validate({"name": "scl", "data": data, "train": {"seed": 3}})
    store.add_jobs([NewJob(name="scl", kind="classify", spec_given={}, spec=classify.model_dump(mode="json"))])
    ctx = _explain(
        project, store, "why-val", model={"checkpoint": str(scl_classifier)}, target_class="water",
        patches={"job": "scl", "count": 100}, methods=["gradcam"], attributions=None, embeddings=None,
    )  # fmt: skip
    assert ctx.job["refs"]["scl"]["kind"] == "classify"

    patch_set = load_patch_set(project.project_dir / "scl", project.project_dir / "other-cache")
    split = patch_set.split(0.05, 0.2, 3)

    def names(indexes) -> set[str]:
        return {str(Path(patch_set.paths[i]).with_suffix("")).replace("/", "_") for i in indexes}

    pngs = {p.stem for p in (ctx.run_dir / "explain" / "cams").glob("*.png")}
    assert pngs == names(split["val"]) and 8 <= len(pngs) < 30
    assert not pngs & (names(split["train"]) | names(split["test"]))
    assert {n.split("_")[0] for n in pngs} == {"cloud", "shadow", "vegetation", "water"}  # stratified
    summary = (ctx.run_dir / "explain.md").read_text()
    assert summary.count("CAM overlay of ") == len(pngs)

    # A job that has no validation patches for this model is named, with what it is and what to give.
    store.add_jobs([NewJob(name="prep", kind="prepare", spec_given={}, spec={})])
    with pytest.raises(ExplainError, match=r"patches.job: 'prep' is not a train or classify job .*a prepare job"):
        _explain(project, store, "a", model={"checkpoint": str(scl_classifier)}, target_class="water",
                 patches={"job": "prep"})  # fmt: skip
    with pytest.raises(ExplainError, match=r"patches.job: 'nothing' is not a train or classify job in the store"):
        _explain(project, store, "b", model={"checkpoint": str(scl_classifier)}, target_class="water",
                 patches={"job": "nothing"})  # fmt: skip
    store.add_jobs([NewJob(name="fcn", kind="train", spec_given={}, spec={})])
    with pytest.raises(ExplainError, match=r"'fcn' is a train job; the resnet18 classifier is explained on a "
                       r"classify job's validation patches, or on a folder"):  # fmt: skip
        _explain(project, store, "c", model={"checkpoint": str(scl_classifier)}, target_class="water",
                 patches={"job": "fcn"})  # fmt: skip
    # The classify job's own model only once it has finished (the daemon runs explain after it).
    with pytest.raises(LookupError, match=r"job scl \(#\d+\) is queued, not succeeded"):
        _explain(project, store, "d", model={"job": "scl"}, target_class="water", patches={"job": "scl"})


def test_a_multi_label_bigearthnet_classifier_explained_per_chosen_class(project, store) -> None:
    shutil.copytree(BIGEARTHNET, project.project_dir / "ben")
    checkpoint = classifier_checkpoint(project.project_dir / "ben", "mobilenetv2_100", project.project_dir / "b.ckpt",
                                       "bigearthnet")  # fmt: skip
    _, card = load_explained(checkpoint, "cpu")
    assert card.task == "multilabel" and len(card.bands) == 12
    chosen = "Pastures" if "Pastures" in card.classes else card.classes[0]
    ctx = _explain(
        project, store, "why-ben", model={"checkpoint": str(checkpoint)}, target_class=chosen,
        patches={"folder": "ben", "count": 3}, methods=["guided"], attributions={"steps": 2},
        embeddings={"k": 2, "tensorboard": False},
    )  # fmt: skip
    out = ctx.run_dir / "explain"
    assert len(list((out / "cams").glob("S2*_*.png"))) == 3
    summary = (ctx.run_dir / "explain.md").read_text()
    assert f"class {chosen!r} of b.ckpt (classifier), layer bn2" in summary
    table = pq.read_table(out / "embeddings.parquet").to_pandas()
    assert len(table) == 3 and len(table["embedding"][0]) == 1280  # mobilenetv2's pre-logits
    # A BigEarthNet patch is 1.2 km across at 10 m: its footprint is its 10 m band's bounds.
    _, _, geometry, _ = pyogrio.raw.read(out / "clusters.gpkg")
    name = table["name"][0]
    with rasterio.open(BIGEARTHNET / name / f"{name}_B02.tif") as src:
        assert shapely.from_wkb(geometry)[0].equals(shapely.box(*src.bounds))
    patches = classifier_patches(project.project_dir / "ben", card)
    assert [p.dn.shape for p in patches] == [(12, 120, 120)] * 6 and all(p.valid.all() for p in patches)

    # A BigEarthNet classify job's validation patches: patch folders, named by folder, on their 10 m grid.
    data = {"root": "ben", "layout": "bigearthnet", "val_fraction": 0.34, "test_fraction": 0.0}
    classify = get_kind("classify").spec.model_validate({"name": "ben", "data": data})
    store.add_jobs([NewJob(name="ben", kind="classify", spec_given={}, spec=classify.model_dump(mode="json"))])
    ctx = _explain(project, store, "why-ben-val", model={"checkpoint": str(checkpoint)}, target_class=chosen,
                   patches={"job": "ben"}, methods=["gradcam"], attributions=None, embeddings=None)  # fmt: skip
    patch_set = load_patch_set(project.project_dir / "ben", project.project_dir / "other-cache")
    val = {patch_set.paths[i] for i in patch_set.split(0.34, 0.0, 0)["val"]}
    assert {p.stem for p in (ctx.run_dir / "explain" / "cams").glob("*.png")} == val and 1 <= len(val) < 6


def test_checkpoints_explain_cannot_use_are_named(project, tmp_path) -> None:
    model = timm.create_model("resnet18", in_chans=3, num_classes=2)
    norm = {"mean": [0.0] * 3, "std": [1.0] * 3}
    card = ModelCard(arch="svm", backbone=None, in_channels=3, num_classes=2, classes=["a", "b"], task="multiclass",
                     bands=["B02", "B03", "B04"], resolution=10.0, norm=norm)  # fmt: skip
    path = save_checkpoint(model, card, tmp_path / "odd.ckpt")
    with pytest.raises(ExplainError, match=r"odd.ckpt is a checkpoint of an unknown kind \(arch 'svm'\).*classifier"):
        load_explained(path, "cpu")
    (tmp_path / "forest.joblib").write_bytes(b"")
    with pytest.raises(ExplainError, match=r"forest.joblib is a random forest"):
        load_explained(tmp_path / "forest.joblib", "cpu")


def test_a_multi_label_prediction_names_every_class_above_one_half() -> None:
    logits = torch.tensor([[3.0, -3.0, 2.0], [-3.0, -3.0, -1.0]])
    assert predicted(logits, ["a", "b", "c"], "multilabel") == ["a;c (88%+)", "none (c 27%)"]
    assert predicted(logits, ["a", "b", "c"], "multiclass")[0] == "a (73%)"


def test_patches_without_a_grid_get_no_coordinates(tmp_path: Path) -> None:
    # An RGB PNG cut from a real SCL patch: read as bands red, green, blue, with no CRS to place it by.
    from PIL import Image

    from torchbearer.explain.embeddings import lon_lat

    with rasterio.open(PATCHES / "water" / sorted(p.name for p in (PATCHES / "water").iterdir())[0]) as src:
        rgb = np.stack([src.read(src.descriptions.index(b) + 1) for b in ("B04", "B03", "B02")], axis=-1)
    (tmp_path / "water").mkdir()
    Image.fromarray((rgb / rgb.max() * 255).astype(np.uint8)).save(tmp_path / "water" / "a.png")
    card = ModelCard(arch="classifier", backbone="resnet18", in_channels=3, num_classes=1, classes=["water"],
                     task="multiclass", bands=["red", "green", "blue"], resolution=0.0,
                     norm={"mean": [0.0] * 3, "std": [1.0] * 3}, extra={"patch_size": 16})  # fmt: skip
    (patch,) = classifier_patches(tmp_path, card)
    assert patch.name == "water_a" and patch.dn.shape == (3, 16, 16) and not patch.georeferenced
    assert all(np.isnan(v).all() for v in lon_lat([patch]))
