"""The ``prepare`` kind through the real daemon and worker: a job chaining steps on the SAFE crop, and bad inputs
that fail their job with a clear reason (the daemon carries on)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from rasterio.windows import Window

from tests.conftest import wait_state, write_job
from tests.prepare.conftest import CLOUD_GEOJSON, CLOUD_TIF, SAMPLE, write_polygons
from tests.prepare.test_flatten_mosaic_summarize import to_utm30, write_window
from torchbearer.spec import JobFileError, parse_job_text

CHAIN = f"""\
name: cloud-chips
kind: prepare
scene: data/{SAMPLE.name}
resolution: 60
steps:
  - rasterize:
      {{labels: masks/t29unu_cloud.geojson, attribute: class, values: {{cloud: 1}}, output: prepared/cloud.tif}}
  - chip: {{size: 64, overlap: 16, output: prepared/chips}}
  - split: {{val: 0.25, block: 128, seed: 1}}
  - summarize: {{output: prepared/summary}}
  - flatten: {{output: prepared/pixels.parquet}}
"""


@pytest.fixture
def inputs(project) -> Path:
    root = project.project_dir
    shutil.copytree(SAMPLE, root / "data" / SAMPLE.name)
    (root / "masks").mkdir()
    shutil.copy(CLOUD_GEOJSON, root / "masks")
    return root


def test_a_prepare_job_chains_rasterize_chip_split_summarize_flatten(project, store, daemon, inputs):
    write_job(project.queue_dir, "prepare.yaml", CHAIN)
    job = wait_state(store, 1, "succeeded", timeout=120)
    root = project.project_dir / "prepared"
    outputs = {row["kind"]: row["path"] for row in store.outputs(job.id)}
    assert outputs["mask"] == str(root / "cloud.tif") and outputs["chips"] == str(root / "chips")
    assert outputs["table"] == str(root / "pixels.parquet") and outputs["summary"].startswith(str(root / "summary"))
    manifest = json.loads((root / "chips" / "prepare.json").read_text())
    # each step fed the next: chips of the SAFE crop's stack, masks from the rasterized labels, then split
    assert manifest["mask"] == str(root / "cloud.tif") and manifest["scene"].endswith("_60m.tif")
    assert manifest["value_domain"] == "dn" and set(manifest["splits"]) == {"train", "val"}
    assert manifest["split"]["overlapping_pairs"] == 0
    with rasterio.open(root / "chips" / "val_frames" / "val_0.tif") as src:
        assert src.tags()["VALUE_DOMAIN"] == "dn" and src.count == 11
    assert "classes (val)" in (root / "summary" / "summary.md").read_text()
    with rasterio.open(root / "cloud.tif") as made, rasterio.open(CLOUD_TIF) as truth:
        labelled = truth.read(1) != 255
        assert ((made.read(1) == 1) == (truth.read(1) == 1))[labelled].mean() > 0.999  # the polygons' pixels
    with rasterio.open(manifest["scene"]) as scene:
        valid = (scene.read() != 0).all(0).sum()
    assert pq.ParquetFile(root / "pixels.parquet").metadata.num_rows == valid  # mask: no 255 but the no-data
    stages = {row["stage"] for row in store.query("SELECT stage FROM progress WHERE job_id = ?", [job.id])}
    assert {"rasterizing", "chipping", "splitting", "summarizing", "flattening"} <= stages
    log = " ".join((Path(job.run_dir) / "log.txt").read_text().split())
    assert "check: no chip overlaps a chip of another split" in log  # the split check is reported


def test_a_prepare_job_takes_its_scene_from_an_imagery_block(project, store, daemon, inputs):
    """The scene path (``imagery/acquire.py::job_scenes``): a local SAFE folder, stacked into the data cache."""
    write_job(project.queue_dir, "summary.yaml", f"""\
name: summary
kind: prepare
imagery: {{source: local, paths: [data/{SAMPLE.name}], resolution: 60}}
steps: [{{summarize: {{output: prepared/scene-summary}}}}]
""")  # fmt: skip
    job = wait_state(store, 1, "succeeded", timeout=120)
    text = (project.project_dir / "prepared" / "scene-summary" / "summary.md").read_text()
    assert text.startswith("# Summary of S2A_MSIL2A_20221005T115411") and "_60m.tif" in text and "| B09 |" in text
    assert any(p.name.endswith("_60m.tif") for p in (project.data_dir / "cache").iterdir())
    assert {row["kind"] for row in store.outputs(job.id)} == {"summary", "plot"}


BAD = f"""\
defaults: {{kind: prepare, scene: data/{SAMPLE.name}, resolution: 60}}
jobs:
  - name: no-attribute
    steps: [{{rasterize: {{labels: masks/t29unu_cloud.geojson, attribute: label, output: out/a.tif}}}}]
  - name: off-scene
    steps: [{{rasterize: {{labels: masks/far.geojson, output: out/b.tif}}}}]
  - name: too-big
    steps: [{{chip: {{size: 600, output: out/chips}}}}]
  - name: two-crs
    steps: [{{mosaic: {{inputs: [out/left.tif, out/utm30.tif], output: out/m.tif}}}}]
"""


def test_bad_inputs_fail_their_job_with_a_clear_reason(project, store, tolerant_daemon, inputs, scene):
    out = project.project_dir / "out"
    out.mkdir()
    write_polygons(inputs / "masks" / "far.geojson", [shapely.box(10.0, 45.0, 10.1, 45.1)], "EPSG:4326", id=[1])
    write_window(scene, out / "left.tif", Window(0, 0, 256, 320))
    to_utm30(write_window(scene, out / "right.tif", Window(256, 0, 256, 320)), out / "utm30.tif")
    write_job(project.queue_dir, "bad.yaml", BAD)
    reasons = {}
    for job_id in range(1, 5):
        job = wait_state(store, job_id, "failed", timeout=120)
        reasons[job.name] = " ".join((job.reason or "").split())
    assert "no attribute 'label'" in reasons["no-attribute"] and "['class']" in reasons["no-attribute"]
    assert "far.geojson" in reasons["off-scene"] and "do not overlap the grid" in reasons["off-scene"]
    assert "chip size 600 is larger than scene" in reasons["too-big"] and "512 × 320" in reasons["too-big"]
    assert "different CRS: left.tif is EPSG:32629 but utm30.tif is EPSG:32630" in reasons["two-crs"]
    assert tolerant_daemon.process.poll() is None


def test_a_chain_missing_its_input_is_refused_when_the_file_is_read():
    text = "name: p\nkind: prepare\nsteps:\n  - chip: {size: 64, output: chips}\n"
    with pytest.raises(JobFileError, match=r"steps\[0\].chip: no scene"):
        parse_job_text(text)
    with pytest.raises(JobFileError, match=r"a step is one of rasterize, chip, .*got chip, split"):
        parse_job_text("name: p\nkind: prepare\nscene: s.tif\nsteps:\n  - {chip: {size: 8, output: c}, split: {}}\n")


def test_the_example_prepare_job_validates():
    from tests.prepare.conftest import ROOT
    from torchbearer.spec import load_job_file

    [job] = load_job_file(ROOT / "configs" / "examples" / "prepare-cloud-chips.yaml")
    assert [step.name for step in job.spec.steps] == ["rasterize", "chip", "split", "summarize", "flatten"]
