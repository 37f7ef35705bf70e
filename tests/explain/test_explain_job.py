"""The ``explain`` kind: its job-file model, a whole scene explained, bad inputs refused before any work."""

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

from tests.contract import ingest, job_context
from tests.inference.conftest import card_for, nodata_of, save_checkpoint
from torchbearer.context import JobContext
from torchbearer.explain.model import ExplainError
from torchbearer.jobs import get_kind
from torchbearer.spec import JobFileError, parse_job_text
from torchbearer.store import NewJob


def parse(text: str):
    (job,) = parse_job_text(text, "job.yaml")
    return job.spec


def test_spec_runs_after_the_jobs_it_takes_its_model_and_patches_from() -> None:
    spec = parse("name: why\nkind: explain\nmodel: {job: fcn}\npatches: {job: unet, count: 4}\n")
    assert set(spec.after) >= {"fcn", "unet"}
    assert spec.methods == ["gradcam", "gradcam++", "guided"] and spec.layer == "auto"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("model: {checkpoint: a.ckpt}", "give patches"),
        ("model: {checkpoint: a.ckpt}\nscene: s.tif\nwindow: 100", "multiple of 32"),
        ("model: {checkpoint: a.ckpt}\npatches: {folder: p, job: fcn}", "exactly one of folder"),
        ("model: {checkpoint: a.ckpt}\nscene: s.tif\nmethods: [gradcam, scorecam]", "methods"),
        ("model: {checkpoint: a.ckpt}\nscene: s.tif\nembeddings: {k_range: [5, 3]}", "k_range"),
    ],
)
def test_bad_explain_jobs_are_refused(body: str, message: str) -> None:
    with pytest.raises(JobFileError, match=message):
        parse(f"name: why\nkind: explain\n{body}\n")


def _context(project, store, name: str, spec: dict | None = None) -> JobContext:
    """The context of a new explain job; ``spec`` (as given) names the jobs its ``job.json`` carries."""
    (job_id,) = store.add_jobs([NewJob(name=name, kind="explain", spec_given={}, spec={})])
    run_dir = project.runs_dir / f"{job_id}-{name}"
    run_dir.mkdir(parents=True)
    return job_context(store, job_id, run_dir, project, spec=spec)


def _spec(**fields):
    return get_kind("explain").spec.model_validate({"name": "why", "model": {"checkpoint": "a.ckpt"}, **fields})


def test_a_scene_explained_on_its_grid_with_three_clusters_inside_it(project, store, part60) -> None:
    save_checkpoint(project.project_dir / "a.ckpt", card_for(part60, "fcn"))
    scene = Path(shutil.copy(part60, project.project_dir / "part_60m.tif"))
    spec = _spec(scene="part_60m.tif", methods=["gradcam", "gradcam++"], window=64, batch_size=2,
                 attributions={"steps": 4, "patches": 2}, embeddings={"k": 3, "tensorboard": True})  # fmt: skip
    ctx = _context(project, store, "why")
    get_kind("explain").run(spec, ctx)
    out = ctx.run_dir / "explain"

    cam = out / "cam_cloud_part_60m.tif"
    with rasterio.open(cam) as ds, rasterio.open(scene) as src:
        assert (ds.crs, ds.transform, ds.width, ds.height) == (src.crs, src.transform, src.width, src.height)
        assert ds.count == 2 and ds.dtypes[0] == "float32" and ds.descriptions == ("gradcam", "gradcam++")
        values = ds.read(masked=True)
    nodata = nodata_of(scene)
    assert nodata.any() and (~nodata).any(), "the crop has its no-data wedge"
    assert (values.mask == nodata[None]).all(), "no data exactly where the scene has none"
    assert np.isfinite(values.compressed()).all() and values.min() >= 0 and values[0].max() > 0

    table = pq.read_table(out / "embeddings.parquet").to_pandas()
    assert sorted(set(table["cluster"])) == [0, 1, 2]
    assert {"x", "y", "lon", "lat", "prediction", "embedding"} <= set(table.columns)
    assert table["lon"].between(-10, -6).all() and table["lat"].between(52, 55).all()  # T29UNU, Ireland
    _, _, geometry, fields = pyogrio.raw.read(out / "clusters.gpkg")
    with rasterio.open(scene) as src:
        extent = shapely.box(*src.bounds).buffer(1e-6)
    footprints = shapely.from_wkb(geometry)
    assert len(footprints) == len(table) and sorted(set(fields[2].tolist())) == [0, 1, 2]
    assert all(extent.contains(f) for f in footprints)

    with open(out / "band_importance.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["band"] for r in rows) == sorted(card_for(part60).bands)
    assert abs(sum(float(r["share"]) for r in rows) - 1) < 1e-3
    assert list((out / "tensorboard").glob("**/projector_config.pbtxt"))
    ingest(store, ctx)
    kinds = {Path(o["path"]).name: o["kind"] for o in store.outputs(ctx.job_id)}
    for name in ("cam_cloud_part_60m.tif", "embeddings.parquet", "clusters.gpkg", "clusters.png",
                 "embeddings_pca.png", "band_importance.png", "explain.md"):  # fmt: skip
        assert kinds.get(name) == "explanation", name
        if name != "explain.md":
            assert name in (ctx.run_dir / "explain.md").read_text()


def test_bad_inputs_fail_with_what_to_change(project, store, small60, stack20) -> None:
    kind = get_kind("explain")
    save_checkpoint(project.project_dir / "a.ckpt", card_for(small60, "unet", "resnet18"))
    shutil.copy(small60, project.project_dir / "s60.tif")
    shutil.copy(stack20, project.project_dir / "s20.tif")
    with pytest.raises(ExplainError, match=r"class 'snow' is not one of the model's classes: background, cloud"):
        kind.run(_spec(scene="s60.tif", target_class="snow"), _context(project, store, "a"))
    with pytest.raises(ExplainError, match=r"layer 'encoder.layer5' does not exist .*did you mean 'encoder.layer4'"):
        kind.run(_spec(scene="s60.tif", layer="encoder.layer5"), _context(project, store, "b"))
    with pytest.raises(ExplainError, match=r"s20.tif is at 20 m; the model was trained at 60 m"):
        kind.run(_spec(scene="s20.tif"), _context(project, store, "c"))
    card = card_for(small60, "fcn")
    bands = ["B08" if b == "B8A" else b for b in card.bands]
    save_checkpoint(project.project_dir / "b.ckpt", card.__class__(**{**card.to_dict(), "bands": bands}))
    spec = _spec(scene="s60.tif", model={"checkpoint": "b.ckpt"})
    with pytest.raises(ExplainError, match=r"lacks bands B08 .*the model needs B01 .* B08"):
        kind.run(spec, _context(project, store, "d"))
    # A classify job's patches (another size, their own units) are a classifier's, not a segmentation model's.
    store.add_jobs([NewJob(name="scl", kind="classify", spec_given={}, spec={})])
    spec = _spec(patches={"job": "scl"})
    with pytest.raises(ExplainError, match=r"'scl' is a classify job; the unet segmentation model is explained on a "
                       r"train job's validation patches, or on a folder"):  # fmt: skip
        kind.run(spec, _context(project, store, "e", spec.model_dump(mode="json")))


def test_a_folder_of_patches_gets_overlays_titled_with_the_prediction(project, store, small60) -> None:
    from rasterio.windows import Window

    from tests.inference.conftest import crop_stack

    save_checkpoint(project.project_dir / "a.ckpt", card_for(small60, "unet", "resnet18"))
    folder = project.project_dir / "patches"
    folder.mkdir()
    for name, window in (("north", Window(0, 0, 64, 64)), ("east", Window(80, 32, 64, 64))):  # real 60 m crops
        crop_stack(small60, folder / f"{name}.tif", window)
    spec = _spec(patches={"folder": "patches"}, methods=["gradcam", "guided"], attributions=None,
                 embeddings={"k": 2, "tensorboard": False})  # fmt: skip
    ctx = _context(project, store, "why")
    get_kind("explain").run(spec, ctx)
    pngs = sorted((ctx.run_dir / "explain" / "cams").glob("*.png"))
    assert [p.name for p in pngs] == ["east.png", "north.png"]
    summary = (ctx.run_dir / "explain.md").read_text()
    assert "`explain/cams/north.png`: CAM overlay of north (predicted " in summary
    assert "layer encoder.layer4" in summary
    table = pq.read_table(ctx.run_dir / "explain" / "embeddings.parquet")
    assert table.column("name").to_pylist() == ["east", "north"] and table.column("embedding").type.value_type
