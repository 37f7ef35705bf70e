"""``torchbearer explain FILE``: explain jobs in the foreground, a segmentation model's and a classifier's; a bad
class fails the job, not the command."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.classify.conftest import PATCHES
from tests.cli.conftest import flat, tb_process
from tests.explain.conftest import classifier_checkpoint
from tests.inference.conftest import card_for, save_checkpoint


def test_explain_runs_explain_files_and_reports_a_bad_class(project, small60) -> None:
    root = project.project_dir
    save_checkpoint(root / "a.ckpt", card_for(small60, "fcn"))
    shutil.copy(small60, root / "s60.tif")
    (root / "probe.yaml").write_text("name: p\nkind: probe\n")
    refused = tb_process("explain", root / "probe.yaml")
    assert refused.returncode == 2 and "not of kind explain" in flat(refused.stderr)

    (root / "why.yaml").write_text("name: why\nkind: explain\nmodel: {checkpoint: a.ckpt}\nscene: s60.tif\n"
                                   "target_class: snow\n")  # fmt: skip
    result = tb_process("explain", root / "why.yaml")
    assert result.returncode == 1, result.stderr
    assert "class 'snow' is not one of the model's classes: background, cloud" in flat(result.stdout + result.stderr)


@pytest.mark.slow  # a worker process importing torch, timm and captum: 25–45 s here; the fast suite is near 15 min
def test_explain_a_classifier_in_the_foreground_records_what_it_made(project, store) -> None:
    # An untrained resnet18 (weights: null) for a copy of the real SCL patches, explained by `torchbearer explain`.
    root = project.project_dir
    shutil.copytree(PATCHES, root / "scl")
    classifier_checkpoint(root / "scl", "resnet18", root / "scl.ckpt")
    (root / "why.yaml").write_text(
        "name: why-scl\nkind: explain\nmodel: {checkpoint: scl.ckpt}\ntarget_class: cloud\n"
        "patches: {folder: scl, count: 3}\nmethods: [gradcam]\nattributions: {steps: 2, patches: 3}\n"
        "embeddings: {k: 2, tensorboard: true}\ndevice: cpu\n"
    )
    result = tb_process("explain", root / "why.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = store.jobs()
    assert f"why-scl (#{job.id}): succeeded" in flat(result.stdout)

    out = Path(job.run_dir) / "explain"
    made = {Path(o["path"]).relative_to(out.parent).as_posix(): o["kind"] for o in store.outputs(job.id)}
    cams = sorted(p for p in made if p.startswith("explain/cams/"))
    assert len(cams) == 3 and {Path(p).stem.split("_")[0] for p in cams} >= {"cloud", "water"}  # spread over them
    for name in ("band_importance.csv", "band_importance.png", "embeddings.parquet", "embeddings_pca.png",
                 "clusters.png", "clusters.gpkg", "tensorboard"):  # fmt: skip
        assert f"explain/{name}" in made, name
    assert set(made.values()) == {"explanation"} and "explain.md" in made
    assert all((out.parent / p).exists() for p in made)
    summary = (out.parent / "explain.md").read_text()
    assert "class 'cloud' of scl.ckpt (classifier), layer layer4; methods gradcam." in summary
    assert all(f"`{p}`" in summary for p in made if p != "explain.md")
    assert len(pq.read_table(out / "embeddings.parquet")) == 3
