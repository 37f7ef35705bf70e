"""Errors found when the file is queued, all at once, and short: paths outside the project folder, cycles beside
missing fields, and values quoted in a message cut to a sane length."""

from __future__ import annotations

import pytest

import tests.kinds  # noqa: F401 - registers the probe kind, whatever ran before
from tests.conftest import write_job
from torchbearer.ingest import ingest_queue_file
from torchbearer.settings import Settings
from torchbearer.spec import JobFileError, PathRules, load_job_file

OUTSIDE = """\
jobs:
  - name: fit
    kind: train
    scenes: [/srv/elsewhere/*.tif]
    masks: ../masks/cloud.tif
    model: {weights: /opt/weights/last.ckpt}
  - name: map
    kind: predict
    models: [{checkpoint: /opt/weights/best.ckpt}]
    scenes: [data/scene.tif]
    output: /tmp/map.tif
"""


def test_outside_paths_are_refused_when_the_file_is_queued(project, store):
    result = ingest_queue_file(write_job(project.queue_dir, "outside.yaml", OUTSIDE), project.queue_dir, store,
                               paths=PathRules.of(project))  # fmt: skip
    assert not result.accepted and store.jobs() == []
    error = result.error or ""
    for where, value in [("jobs[0].scenes[0]", "/srv/elsewhere/*.tif"), ("jobs[0].masks", "../masks/cloud.tif"),
                         ("jobs[0].model.weights", "/opt/weights/last.ckpt"),
                         ("jobs[1].models[0].checkpoint", "/opt/weights/best.ckpt"),
                         ("jobs[1].output", "/tmp/map.tif")]:  # fmt: skip
        assert f"{where}: '{value}' is outside the project folder {project.project_dir}" in error, error
    assert "TORCHBEARER_ALLOW_OUTSIDE_PATHS=1" in error
    assert "data/scene.tif" not in error  # inside: fine
    assert (project.queue_dir / "rejected" / "outside.yaml.error.txt").read_text().strip() == error


def test_outside_paths_are_accepted_when_allowed(project, store, monkeypatch):
    monkeypatch.setenv("TORCHBEARER_ALLOW_OUTSIDE_PATHS", "1")
    rules = PathRules.of(Settings.load(project.project_dir))
    result = ingest_queue_file(write_job(project.queue_dir, "outside.yaml", OUTSIDE), project.queue_dir, store,
                               paths=rules)  # fmt: skip
    assert result.accepted, result.error
    assert [job.name for job in store.jobs()] == ["fit", "map"]


def test_a_symlink_out_of_the_project_is_outside(project, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (project.project_dir / "link").symlink_to(tmp_path / "elsewhere")
    path = project.project_dir / "job.yaml"
    path.write_text("name: a\nkind: train\nscenes: [link/scene.tif]\nmasks: masks/m.tif\n")
    with pytest.raises(JobFileError, match=r"scenes\[0\]: 'link/scene.tif' is outside the project folder"):
        load_job_file(path, paths=PathRules.of(project))


def test_a_missing_field_does_not_hide_cycles_self_waits_or_duplicate_names(tmp_path):
    path = tmp_path / "night.yaml"
    path.write_text(
        "defaults: {kind: probe}\njobs:\n"
        "  - {name: a, after: [b], steps: many}\n"  # a wrong value as well
        "  - {name: b, after: [a]}\n"
        "  - {name: c, kind: train, after: [c]}\n"  # train misses its data (scenes, imagery or dataset)
        "  - {name: b}\n"
    )
    with pytest.raises(JobFileError) as caught:
        load_job_file(path)
    message = str(caught.value)
    assert "jobs[0].steps: Input should be a valid integer" in message
    assert "jobs[2]: Value error, give either scenes (paths) or an imagery block" in message  # no input data
    assert f"{path}:5: jobs[2].after: job 'c' waits for itself" in message
    assert "job name 'b' is used more than once in this file" in message
    assert "after: dependency cycle: a → b → a" in message


def test_a_huge_value_is_quoted_short(project, store):
    name = "x" * 100_000
    path = write_job(project.queue_dir, "long.yaml", f"name: '{name}!'\nkind: probe\nafter: ['{name}']\n")
    result = ingest_queue_file(path, project.queue_dir, store, paths=PathRules.of(project))
    assert not result.accepted
    error_file = project.queue_dir / "rejected" / "long.yaml.error.txt"
    assert error_file.stat().st_size < 2_000, error_file.read_text()[:300]
    assert "name: String should match pattern" in error_file.read_text()
    assert "(100,003 characters)" in error_file.read_text()  # the quote says how long the value was


OUTSIDE_NEW_KINDS = """\
jobs:
  - name: prep
    kind: prepare
    scene: data/scene.tif
    steps:
      - rasterize: {labels: /srv/labels.gpkg, output: masks/m.tif}
      - chip: {output: ../chips, size: 64}
  - {name: why, kind: explain, model: {checkpoint: /opt/best.ckpt}, scene: data/scene.tif}
  - {name: draw, kind: plot, model: {checkpoint: runs/best.ckpt}, input: /data/chips, output: plots}
"""


def test_outside_paths_of_the_later_kinds_are_refused_when_queued(project, tmp_path):
    path = project.project_dir / "kinds.yaml"
    path.write_text(OUTSIDE_NEW_KINDS)
    with pytest.raises(JobFileError) as caught:
        load_job_file(path, paths=PathRules.of(project))
    message = str(caught.value)
    for where, value in [("jobs[0].steps[0].rasterize.labels", "/srv/labels.gpkg"),
                         ("jobs[0].steps[1].chip.output", "../chips"), ("jobs[1].model.checkpoint", "/opt/best.ckpt"),
                         ("jobs[2].input", "/data/chips")]:  # fmt: skip
        assert f"{where}: '{value}' is outside the project folder" in message, message
    assert "masks/m.tif" not in message and "plots'" not in message
