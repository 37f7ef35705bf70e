"""The pre-flight check (``validate --deep``, and on every queued file): refuses what is certain to fail, warns
of the rest, every problem at once. Scenes are stacks of the real T29UNU crop in ``data/``; checkpoints are
untrained models with real model cards."""

from __future__ import annotations

import shutil
from pathlib import Path

import rasterio
from affine import Affine

from tests.cli.conftest import flat, tb
from tests.conftest import DaemonProcess, wait_for, write_job
from tests.daemon.conftest import job_named, stop_daemon
from tests.inference.conftest import card_for, save_checkpoint
from torchbearer.settings import Settings
from torchbearer.store import Store

REPO = Path(__file__).resolve().parents[2]


def _place(project: Settings, source: Path, name: str) -> str:
    """Copy ``source`` into the project's data folder; returns its project-relative path."""
    target = project.project_dir / "data" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return f"data/{name}"


def _shifted_mask(project: Settings, km: float) -> str:
    """The sample's cloud mask moved ``km`` east (still a valid GeoTIFF, somewhere else)."""
    target = project.project_dir / "masks" / "elsewhere.tif"
    target.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(REPO / "masks" / "t29unu_cloud.tif") as src:
        profile = {**src.profile, "transform": Affine.translation(km * 1000, 0) @ src.transform}
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(src.read())
    return "masks/elsewhere.tif"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "night.yaml"
    path.write_text(text)
    return path


def test_refuses_missing_scene_outside_mask_and_other_bands_all_at_once(
    project: Settings, stack60: Path, stack20: Path, tmp_path: Path
) -> None:
    scene = _place(project, stack60, "scene_60m.tif")
    save_checkpoint(project.project_dir / "m60.ckpt", card_for(stack60))
    save_checkpoint(project.project_dir / "m20.ckpt", card_for(stack20))
    mask = _shifted_mask(project, km=500)
    night = _write(tmp_path, f"""\
jobs:
  - {{name: fit, kind: train, scenes: [{scene}], resolution: 60, masks: {mask}, classes: [clear, cloud]}}
  - {{name: lost, kind: predict, scenes: [data/missing_60m.tif], models: [{{checkpoint: m60.ckpt}}],
     output: maps/a.tif}}
  - name: mixed
    kind: predict
    scenes: [{scene}]
    models: [{{checkpoint: m60.ckpt}}, {{checkpoint: m20.ckpt}}]
    output: maps/b.tif
""")  # fmt: skip
    result = tb("validate", "--deep", night)
    text = flat(result.stderr + result.stdout)
    assert result.returncode == 1
    assert "fit.masks: " in text and "elsewhere.tif does not overlap any of the job's scenes" in text
    assert "lost.scenes: " in text and "missing_60m.tif does not exist" in text
    assert "mixed.models[1]: bands" in text and "members must agree" in text
    assert "scene_60m.tif is 60 m, the member was trained at 20 m" in text
    # the same file, shallow: the schema is fine
    assert tb("validate", night).returncode == 0
    # a mask on the scene passes
    good = _write(tmp_path, f"name: fit\nkind: train\nscenes: [{scene}]\nresolution: 60\n"
                  "masks: masks/t29unu_cloud.geojson\nclasses: [clear, cloud]\n")  # fmt: skip
    shutil.copytree(REPO / "masks", project.project_dir / "masks", dirs_exist_ok=True)
    assert tb("validate", "--deep", good).returncode == 0, tb("validate", "--deep", good).stderr


def test_member_job_of_kind_predict_is_refused_when_queued(project: Settings, store: Store, stack60: Path) -> None:
    """Through the daemon: the file is refused at once (in rejected/, with the reason), not at 3 a.m."""
    scene = _place(project, stack60, "scene_60m.tif")
    save_checkpoint(project.project_dir / "m60.ckpt", card_for(stack60))
    daemon = DaemonProcess(project).start()
    try:
        write_job(project.queue_dir, "chain.yaml", f"""\
defaults: {{kind: predict, scenes: [{scene}]}}
jobs:
  - {{name: first, models: [{{checkpoint: m60.ckpt}}], output: maps/first.tif}}
  - {{name: second, after: [first], models: [{{job: first}}], output: maps/second.tif}}
""")  # fmt: skip
        error_file = project.queue_dir / "rejected" / "chain.yaml.error.txt"
        error = wait_for(lambda: error_file.exists() and error_file.read_text(), 30, what="the refusal")
    finally:
        stop_daemon(daemon)
    assert "second.models[0]: job 'first' is a predict job: it writes no checkpoint" in flat(error)
    assert store.find_job("first") is None  # nothing of the file was queued


def test_missing_credentials_and_small_disk_are_warnings_kept_with_the_job(
    project: Settings, store: Store, tmp_path: Path
) -> None:
    (project.project_dir / ".env").write_text("TORCHBEARER_DISK_RESERVE_GB=1000000\n")
    job = ("name: scenes\nkind: download\nimagery: {aoi: [-8.2, 52.9, -8.0, 53.0], "
           "dates: 2022-10-01/2022-10-10, resolution: 20, max_scenes: 3}\n")  # fmt: skip
    night = _write(tmp_path, job)
    env = {"COPERNICUS_USER": "", "COPERNICUS_PASSWORD": ""}
    result = tb("validate", "--deep", night, env=env)
    text = flat(result.stderr)
    assert result.returncode == 0  # warnings: the account may be set, the disk cleared, before it runs
    assert "scenes: imagery.source: source copernicus needs COPERNICUS_USER and COPERNICUS_PASSWORD" in text
    assert "GiB will be written" in text and "TORCHBEARER_DISK_RESERVE_GB" in text
    assert tb("submit", night, env=env).returncode == 0
    job_id = job_named(store, "scenes").id
    shown = flat(tb("show", str(job_id), env=env).stdout)
    assert "warning: scenes: imagery.source: source copernicus needs COPERNICUS_USER" in shown
    assert "GiB will be written" in shown


def test_a_wkt_aoi_is_not_taken_for_a_missing_file(project: Settings, tmp_path: Path) -> None:
    night = _write(tmp_path, "name: scenes\nkind: download\nimagery: {source: earth-search, dates: 2022-10-01, "
                   "aoi: 'POLYGON ((-8.2 52.9, -8.0 52.9, -8.0 53.0, -8.2 52.9))'}\n")  # fmt: skip
    result = tb("validate", "--deep", night)
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    (tmp_path / "night.yaml").write_text(night.read_text().replace("'POLYGON ((-8.2 52.9, -8.0 52.9, -8.0 53.0, "
                                         "-8.2 52.9))'", "aoi/field.geojson"))  # fmt: skip
    assert "aoi/field.geojson does not exist" in flat(tb("validate", "--deep", night).stderr)


def test_a_prepare_chain_reading_what_its_own_steps_write_passes_and_a_missing_label_file_does_not(
    project: Settings,
) -> None:
    from torchbearer.preflight import check_jobs
    from torchbearer.spec import parse_job_text

    text = ("name: prep\nkind: prepare\nscene: data/scene.tif\nsteps:\n"
            "  - rasterize: {labels: masks/roofs.gpkg, output: prepared/roofs.tif}\n"
            "  - chip: {size: 64, mask: prepared/roofs.tif, output: prepared/chips}\n"
            "  - split: {chips: prepared/chips}\n")  # fmt: skip
    (project.project_dir / "data").mkdir(exist_ok=True)
    (project.project_dir / "data" / "scene.tif").write_bytes(b"")
    findings = [f.format() for f in check_jobs(parse_job_text(text), project)]
    assert findings == [f"prep: steps.rasterize.labels: {project.project_dir / 'masks' / 'roofs.gpkg'} does not exist"]


def test_a_member_trained_on_another_value_domain_is_refused(project: Settings, stack60: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    scene = _place(project, stack60, "scene_60m.tif")
    save_checkpoint(project.project_dir / "dn.ckpt", card_for(stack60))
    save_checkpoint(
        project.project_dir / "refl.ckpt", replace(card_for(stack60), extra={"value_domain": "reflectance"})
    )
    night = _write(tmp_path, f"name: map\nkind: predict\nscenes: [{scene}]\noutput: maps/m.tif\n"
                   "models: [{checkpoint: dn.ckpt}, {checkpoint: refl.ckpt}]\n")  # fmt: skip
    text = flat((result := tb("validate", "--deep", night)).stderr)
    assert result.returncode == 1
    assert "map.models[1]: value_domain reflectance differ from models[0]'s dn" in text
    assert "map.models[1]: model models[1] was trained on reflectance input, but" in text and "holds dn values" in text


def test_a_member_needing_bands_a_safe_scene_lacks_is_refused(project: Settings, stack60: Path) -> None:
    from dataclasses import replace

    from tests.inference.conftest import CROP
    from torchbearer.preflight import check_jobs
    from torchbearer.spec import parse_job_text

    save_checkpoint(project.project_dir / "ok.ckpt", card_for(stack60))
    bands = [*card_for(stack60).bands[:-1], "B08"]  # B08 is a 10 m band: no 60 m stack holds it
    save_checkpoint(project.project_dir / "b08.ckpt", replace(card_for(stack60), bands=bands))
    text = f"name: map\nkind: predict\nscenes: ['{CROP}']\noutput: maps/m.tif\nmodels: [{{checkpoint: ok.ckpt}}]\n"
    assert check_jobs(parse_job_text(text), project) == []
    findings = [f.format() for f in check_jobs(parse_job_text(text.replace("ok.ckpt", "b08.ckpt")), project)]
    assert findings == [f"map: models[0]: scene {CROP.name} has no B08 at 60 m (it has B01, B02, B03, B04, B05, B06, "
                        "B07, B8A, B09, B11, B12), which the member needs"]  # fmt: skip


def test_an_explain_or_plot_model_job_must_write_a_checkpoint(project: Settings) -> None:
    from torchbearer.preflight import check_jobs
    from torchbearer.spec import parse_job_text

    text = ("jobs:\n  - {name: prep, kind: prepare, scene: data/s.tif, steps: [{summarize: {output: out/s}}]}\n"
            "  - {name: why, kind: explain, model: {job: prep}, patches: {job: prep}}\n"
            "  - {name: draw, kind: plot, model: {job: prep}, input: data/s.tif}\n")  # fmt: skip
    messages = [f.format() for f in check_jobs(parse_job_text(text), project) if "writes no checkpoint" in f.message]
    assert messages == [f"{name}: model: job 'prep' is a prepare job: it writes no checkpoint (a member needs a "
                        "classify/sweep/train job)" for name in ("why", "draw")]  # fmt: skip


def test_an_explain_jobs_patches_come_from_a_train_or_classify_job_of_its_models_kind(project: Settings) -> None:
    from torchbearer.preflight import check_jobs
    from torchbearer.spec import parse_job_text

    text = ("jobs:\n  - {name: prep, kind: prepare, scene: data/s.tif, steps: [{summarize: {output: out/s}}]}\n"
            "  - {name: seg, kind: train, scenes: [data/s.tif], masks: m.tif, classes: [a, b]}\n"
            "  - {name: cls, kind: classify, data: {root: patches}}\n"
            "  - {name: ok, kind: explain, model: {job: cls}, patches: {job: cls}}\n"
            "  - {name: prepared, kind: explain, model: {job: cls}, patches: {job: prep}}\n"
            "  - {name: mixed, kind: explain, model: {job: cls}, patches: {job: seg}}\n"
            "  - {name: nowhere, kind: explain, model: {job: cls}, patches: {job: gone}}\n")  # fmt: skip
    messages = [f.format() for f in check_jobs(parse_job_text(text), project) if f.field == "patches.job"]
    assert messages == [
        "prepared: patches.job: job 'prep' is a prepare job: its validation patches come from a train or classify job",
        "mixed: patches.job: job 'seg' is a train job, but the model comes from the classify job 'cls': give that "
        "job's patches, or patches: {folder: …}",
        "nowhere: patches.job: no job named 'gone' (in this file or queued)",
    ]
