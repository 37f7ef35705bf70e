"""Training at scale on synthetic repetitions of the real sample (data/make_repetitions.py): scenes read through
memory-mapped raw copies, many scenes sampled by labelled area, scenes without labels skipped, the split on a
CRS grid across dates, class_weights: auto, rare-class oversampling."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from tests.conftest import wait_state, write_job
from tests.daemon.conftest import job_named
from tests.ml.conftest import MASKS, REPO, SAMPLE
from torchbearer.imagery.cache import build_stack
from torchbearer.ml.datamodules import SegmentationDataModule
from torchbearer.ml.labels import IGNORE
from torchbearer.ml.mapped import PageBudget, mapped_paths
from torchbearer.ml.members import load_member
from torchbearer.ml.scenes import TRAIN, SplitOptions, inverse_frequencies, load_scenes

CLASSES = ["clear", "cloud"]
MASK = MASKS / "t29unu_cloud.tif"

_spec = importlib.util.spec_from_file_location("make_repetitions", REPO / "data" / "make_repetitions.py")
repetitions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repetitions)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_stack(SAMPLE, 60, tmp_path_factory.mktemp("cache"))


def _rss_file_kb() -> int:
    """Resident pages of this process mapped from files (kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def _copy(stack: Path, out: Path, row: int = 0, col: int = 0) -> Path:
    """The stack from pixel (row, col) on, at its true place (same ground, another grid origin)."""
    with rasterio.open(stack) as src:
        window = Window(col, row, src.width - col, src.height - row)
        profile = {**src.profile, "width": window.width, "height": window.height,
                   "transform": window_transform(window, src.transform)}  # fmt: skip
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.update_tags(**src.tags())
            dst.descriptions = src.descriptions
    return out


def test_scenes_are_memory_mapped_built_once_and_rebuilt_with_the_stack(stack: Path, tmp_path: Path) -> None:
    user = _copy(stack, tmp_path / "scene.tif")
    (scene,) = load_scenes([user], [MASK], CLASSES, cache_dir=tmp_path / "mapped", work_dir=tmp_path / "work")
    assert isinstance(scene.dn, np.memmap) and isinstance(scene.target, np.memmap)
    with rasterio.open(user) as src:
        assert np.array_equal(scene.dn, src.read())
    dn_file, nodata_file = mapped_paths(user, tmp_path / "mapped")
    assert dn_file.is_file() and nodata_file.is_file()
    built = dn_file.stat().st_mtime_ns
    load_scenes([user], [MASK], CLASSES, cache_dir=tmp_path / "mapped")
    assert dn_file.stat().st_mtime_ns == built  # built once
    # The stack is replaced (darker by one DN): a new raw copy, the old one removed.
    with rasterio.open(user, "r+") as dst:
        dst.write(np.maximum(dst.read(), 2) - 1)
    os.utime(user, ns=(built + 10**9, built + 10**9))
    (again,) = load_scenes([user], [MASK], CLASSES, cache_dir=tmp_path / "mapped")
    assert not dn_file.exists() and mapped_paths(user, tmp_path / "mapped")[0].is_file()
    assert int(again.dn[0, 10, 10]) == int(scene.dn[0, 10, 10]) - 1


def test_raw_copies_of_stacks_gone_or_changed_are_removed(stack: Path, tmp_path: Path) -> None:
    """Opening a scene prunes the folder: copies of a deleted stack, of a stack changed since (never opened
    again) and a dead build's ``.part``; a copy whose stack is unchanged stays."""
    cache = tmp_path / "mapped"
    kept, changed, deleted = (_copy(stack, tmp_path / f"{name}.tif") for name in ("kept", "changed", "deleted"))
    load_scenes([kept, changed, deleted], [MASK], CLASSES, cache_dir=cache)
    files = {p: mapped_paths(p, cache) for p in (kept, changed, deleted)}
    assert all(f.is_file() for pair in files.values() for f in pair)
    assert len(list(cache.glob("*.source.json"))) == 3
    dead = cache / "x.dn.npy.4242.part"
    dead.write_bytes(b"half")
    os.utime(dead, (0, 0))  # a build that died long ago
    fresh = cache / "y.dn.npy.4243.part"
    fresh.write_bytes(b"half")  # one under way
    deleted.unlink()
    with rasterio.open(changed, "r+") as dst:
        dst.write(np.maximum(dst.read(), 2) - 1)
    load_scenes([kept], [MASK], CLASSES, cache_dir=cache)  # only the unchanged stack is opened
    assert all(f.is_file() for f in files[kept])
    assert not any(f.exists() for f in (*files[changed], *files[deleted], dead))
    assert fresh.exists() and len(list(cache.glob("*.source.json"))) == 1
    assert not list(cache.glob("changed.*")) and not list(cache.glob("deleted.*"))


def test_resident_memory_does_not_grow_with_the_scenes_read(stack: Path, tmp_path: Path) -> None:
    pairs = repetitions.repeat_scene(stack, MASK, tmp_path / "reps", 8)
    scenes = load_scenes([s for s, _ in pairs], [m for _, m in pairs], CLASSES, cache_dir=tmp_path / "mapped",
                         work_dir=tmp_path / "work")  # fmt: skip
    scene_kb = scenes[0].dn.nbytes // 1024  # 3.6 MB of DN a scene
    before = _rss_file_kb()
    total = sum(int(s.dn.sum(dtype=np.uint64)) for s in scenes)  # every page of every scene read
    assert total > 0 and _rss_file_kb() - before > 6 * scene_kb  # mapped pages count while held
    for scene in scenes:
        scene.release()
    assert _rss_file_kb() - before < scene_kb
    # Pages are released in bulk once those mapped since the last release could pass the budget (a scene's
    # worth here, the scenes being small): what stays resident is bounded by it, not by the scenes read.
    dm = SegmentationDataModule(scenes, patch_size=32, batch_size=16, split=SplitOptions(64), samples_per_epoch=800,
                                mapped_budget=scene_kb * 1024)  # fmt: skip
    dm.setup()
    before = _rss_file_kb()
    batches = sum(1 for _ in dm.train_dataloader())  # 800 patches over 8 scenes
    assert batches == 50 and _rss_file_kb() - before < 2 * scene_kb


def test_a_scene_under_the_page_budget_is_not_released_between_batches(stack: Path, tmp_path: Path) -> None:
    """Releasing after every batch faulted a small scene's pages in again each time (the issue 16 slowdown)."""
    (scene,) = load_scenes([stack], [MASK], CLASSES, cache_dir=tmp_path / "mapped")
    window, whole = scene.window_bytes(32)
    assert window < whole  # a 32 px window maps its rows' span, not the scene
    released: list[int] = []
    budget = PageBudget(released.append, budget=whole + 1)
    for _ in range(100):
        budget.read(0, window, whole)
    assert released == []  # the whole scene fits: never released
    budget = PageBudget(released.append, budget=window)  # two scenes' windows pass it: both released
    budget.read(0, window, whole)
    assert released == []
    budget.read(1, window, whole)
    assert sorted(released) == [0, 1] and budget.mapped == {}


@pytest.mark.slow  # about 2.5 minutes on the shared 2-core machine
def test_many_scenes_through_the_daemon(sample_project, store, daemon) -> None:
    """8 repetitions of different labelled areas sampled in proportion to it; a 9th, outside every mask,
    reported and skipped."""
    project = sample_project.project_dir
    stack = build_stack(project / "data" / SAMPLE.name, 60, project / "stacks")
    repetitions.repeat_scene(stack, MASK, project / "reps", 8, crop_step=24)
    ((far, _),) = repetitions.repeat_scene(stack, MASK, project / "far", 1, first=100)
    (project / "reps" / "scenes" / "rep_100.tif").write_bytes(far.read_bytes())  # its mask is left out
    job = ("name: many\nkind: train\nscenes: [reps/scenes/*.tif]\nresolution: 60\nmasks: reps/masks\n"
           "classes: [clear, cloud]\ntrain: {epochs: 1, batch_size: 16, patch_size: 32, samples_per_epoch: 320, "
           "plots: 0, early_stopping: null, split: {block_size: 64}}\n")  # fmt: skip
    write_job(sample_project.queue_dir, "many.yaml", job)
    job = wait_state(store, job_named(store, "many").id, {"succeeded", "failed"}, timeout=400)
    log = (Path(job.run_dir) / "log.txt").read_text()
    assert job.state == "succeeded", (job.reason, log[-3000:])
    assert "skipped: no mask overlaps scene rep_100.tif" in log
    line = next(x for x in log.splitlines() if "sampling per scene: " in x)
    drawn = json.loads(line.split("sampling per scene: ", 1)[1])
    assert sorted(drawn) == [f"rep_{i}.tif" for i in range(8)]
    total_drawn = sum(n for n, _ in drawn.values())
    total_area = sum(a for _, a in drawn.values())
    areas = [a for _, a in drawn.values()]
    assert total_drawn == 320 and len(set(areas)) == 8  # areas differ: copies cropped by 24 rows each
    for name, (n, area) in drawn.items():
        assert n > 0 and abs(n / total_drawn - area / total_area) < 0.05, (name, n, area)
    fields = [json.loads(r["fields"] or "{}") for r in store.query(
        "SELECT fields FROM progress WHERE job_id = ?", [job.id])]  # fmt: skip
    assert any("rep_100.tif" in f.get("skipped", "") for f in fields)
    # The report: on the validation split (no test split asked), saying so; the threshold in the card.
    report = json.loads((Path(job.run_dir) / "report.json").read_text())
    assert report["split"] == "validation" and "No test split" in report["note"] and "rep_100" in report["note"]
    assert set(report["scenes"]) <= set(drawn) and len(report["scenes"]) >= 6
    _, card = load_member(Path(job.run_dir) / "checkpoints" / "best.ckpt")
    assert card.extra["threshold"] == report["threshold"]["f1_optimal"]
    assert {"report.json", "report.md", "confusion.csv", "confusion.png"} <= {
        Path(o["path"]).name for o in store.outputs(job.id) if o["kind"] == "report"}  # fmt: skip


def test_predict_class_map_uses_the_recorded_threshold() -> None:
    from types import SimpleNamespace

    from torchbearer.inference.combine import class_map
    from torchbearer.inference.members import model_threshold

    members = [SimpleNamespace(card=SimpleNamespace(extra={"threshold": 0.3}))]
    assert model_threshold(members) == pytest.approx(0.3)
    assert model_threshold([SimpleNamespace(card=SimpleNamespace(extra={}))]) == 0.5
    probs = np.array([[[0.2, 0.35, 0.6]]], np.float32)
    assert class_map(probs, "binary", model_threshold(members)).tolist() == [[0, 1, 1]]
    assert class_map(probs, "binary").tolist() == [[0, 0, 1]]


def test_same_ground_at_two_dates_is_in_one_split(stack: Path, tmp_path: Path) -> None:
    # A second "date": the same ground on a grid starting 13 rows and 7 columns further in (pixel blocks of
    # its own would fall elsewhere); a third, the same grid again under another name.
    later = _copy(stack, tmp_path / "later.tif", 13, 7)
    again = _copy(stack, tmp_path / "again.tif")
    scenes = load_scenes([stack, later, again], [MASK], CLASSES, cache_dir=tmp_path / "mapped")
    for seed in range(3):
        dm = SegmentationDataModule(scenes, patch_size=32, split=SplitOptions(64, test_fraction=0.2), seed=seed)
        dm.setup()
        first, second, third = dm.split.parts
        assert np.array_equal(first[13:, 7:], second)
        assert np.array_equal(first, third)
        assert {1, 2, 3} <= set(np.unique(first).tolist())
        # No patch of one part covers a pixel another scene has in another part at the same ground.
        val = np.zeros_like(first, bool)
        for scene, r, c in dm.split.val:
            dr, dc = (13, 7) if scene == 1 else (0, 0)
            val[dr + r : dr + r + 32, dc + c : dc + c + 32] = True
        for scene, r, c in dm.split.train:
            dr, dc = (13, 7) if scene == 1 else (0, 0)
            assert not val[dr + r : dr + r + 32, dc + c : dc + c + 32].any()


def _small_mask(stack: Path, path: Path, rare_rows: slice, rare_cols: slice, size: int = 320) -> np.ndarray:
    """A mask on the stack's grid: the real cloud mask's labels, class 1 kept only inside the given rows and
    columns (a rare class), the rest class 0; IGNORE outside the first ``size`` rows/columns."""
    with rasterio.open(MASK) as src:
        profile, data = src.profile, src.read(1)
    out = np.where(data == IGNORE, IGNORE, 0).astype(np.uint8)
    inside = np.zeros_like(out, bool)
    inside[rare_rows, rare_cols] = True
    out[inside & (data == 1)] = 1
    out[size:, :] = IGNORE
    out[:, size:] = IGNORE
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(out, 1)
    return out


def test_class_weights_auto_are_inverse_frequencies(stack: Path, tmp_path: Path) -> None:
    from torchbearer.jobs.train import TrainSpec, class_weights

    assert inverse_frequencies([30, 10]) == [40 / 60, 40 / 20]
    mask = _small_mask(stack, tmp_path / "small.tif", slice(0, 128), slice(128, 160), size=192)
    scenes = load_scenes([stack], [tmp_path / "small.tif"], CLASSES)
    dm = SegmentationDataModule(scenes, patch_size=32, split=SplitOptions(64, val_fraction=0.3), num_classes=2)
    dm.setup()
    train = (dm.split.parts[0] == TRAIN) & (np.asarray(scenes[0].target) != IGNORE)
    n0, n1 = int((mask[train] == 0).sum()), int((mask[train] == 1).sum())
    assert n0 > 0 and n1 > 0 and dm.split.class_counts == [n0, n1]
    spec = TrainSpec.model_validate({"kind": "train", "name": "w", "scenes": ["x.tif"], "masks": "m.tif",
                                     "classes": CLASSES, "class_weights": "auto"})  # fmt: skip
    weights = class_weights(spec, dm)
    assert weights == pytest.approx([(n0 + n1) / (2 * n0), (n0 + n1) / (2 * n1)])
    with pytest.raises(ValueError, match="class_weights work with the ce and bce"):
        TrainSpec.model_validate({"kind": "train", "name": "w", "scenes": ["x.tif"], "masks": "m.tif",
                                  "class_weights": "auto", "loss": "dice"})  # fmt: skip


def test_oversampling_raises_the_rare_class_share(stack: Path, tmp_path: Path) -> None:
    _small_mask(stack, tmp_path / "rare.tif", slice(40, 72), slice(140, 200))
    scenes = load_scenes([stack], [tmp_path / "rare.tif"], CLASSES)
    measured = {}
    for share in (0.0, 0.6):
        dm = SegmentationDataModule(scenes, patch_size=32, batch_size=20, split=SplitOptions(64),
                                    samples_per_epoch=400, num_classes=2, rare_share=share, augment=False)  # fmt: skip
        dm.setup()
        assert dm.rare == [1]  # the rarest class of the training pixels
        masks = np.concatenate([b["mask"].numpy() for b in dm.train_dataloader()])
        holds = (masks == 1).any(axis=(1, 2))
        labelled = masks != IGNORE
        measured[share] = (holds.mean(), (masks == 1).sum() / labelled.sum())
    (patches_before, pixels_before), (patches_after, pixels_after) = measured[0.0], measured[0.6]
    assert patches_before < 0.4 and patches_after >= 0.6  # the asked share of patches, measured on batches
    assert pixels_after > 1.5 * pixels_before  # and the rare pixels rise with them


def test_report_scores_a_tiny_case_by_hand(tmp_path: Path) -> None:
    from torchbearer.ml.report import Evaluation, best_threshold, build_report, write_report

    target = np.array([[[0, 0, 1, 1], [1, IGNORE, 0, 1]]], np.uint8)
    predicted = np.array([[[0, 1, 1, 0], [1, 1, 0, 1]]], np.uint8)
    prob = np.array([[[0.1, 0.6, 0.9, 0.4], [0.7, 0.9, 0.2, 0.8]]], np.float32)
    result = Evaluation(2)
    result.add(predicted, target, np.array([0]), prob)
    report = build_report(result, CLASSES, ["a.tif"], "validation", binary=True, note="no test split")
    # By hand: 7 labelled pixels; truth 0: {0→0, 0→1, 0→0}; truth 1: {1→1, 1→0, 1→1, 1→1}.
    assert report["confusion"]["matrix"] == [[2, 1], [1, 3]] and report["pixels"] == 7
    assert report["classes"]["cloud"]["iou"] == pytest.approx(3 / (3 + 1 + 1))
    assert report["classes"]["clear"]["iou"] == pytest.approx(2 / (2 + 1 + 1))
    assert report["classes"]["cloud"]["precision"] == pytest.approx(3 / 4)
    assert report["classes"]["cloud"]["recall"] == pytest.approx(3 / 4)
    assert report["overall_accuracy"] == pytest.approx(5 / 7)
    assert report["scenes"] == {"a.tif": pytest.approx(3 / 5)}
    # Target probabilities 0.9, 0.4, 0.7, 0.8; background 0.1, 0.6, 0.2. Above 0.2 up to 0.4 every target
    # pixel is in and one background (0.6): F1 8/9; 0.5 gives 6/7 (0.4 out, 0.6 in); 0.61–0.7 gives 6/7.
    threshold, f1 = best_threshold(result.positive, result.negative)
    assert f1 == pytest.approx(8 / 9) and 0.2 < threshold <= 0.4
    paths = write_report(tmp_path, report)
    assert [p.name for p in paths] == ["report.json", "report.md", "confusion.csv", "confusion.png"]
    assert (tmp_path / "confusion.csv").read_text().splitlines()[1:] == ["clear,2,1", "cloud,1,3"]
    assert "no test split" in (tmp_path / "report.md").read_text()


def test_report_confusion_matrix_sums_to_the_evaluated_pixels(stack: Path) -> None:
    from torchbearer.ml.checkpoint import ModelCard
    from torchbearer.ml.report import evaluate
    from torchbearer.ml.tasks import SegmentationTask

    scenes = load_scenes([stack], [MASK], CLASSES)
    dm = SegmentationDataModule(scenes, patch_size=32, batch_size=16, split=SplitOptions(64, test_fraction=0.2))
    dm.setup()
    card = ModelCard("fcn", None, 11, 2, CLASSES, "binary", dm.bands, 60.0, {"mean": dm.mean, "std": dm.std})
    result = evaluate(SegmentationTask(card.to_dict()), dm.test_dataloader())
    target = np.asarray(scenes[0].target)
    valid = sum(int((target[r : r + 32, c : c + 32] != IGNORE).sum()) for _, r, c in dm.split.test)
    assert valid > 0 and result.matrix.sum() == valid == sum(m.sum() for m in result.per_scene.values())


def test_show_summarises_the_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from torchbearer.cli import _show_report
    from torchbearer.ml.report import Evaluation, build_report, write_report

    result = Evaluation(2)
    result.add(np.array([[[0, 1], [1, 1]]]), np.array([[[0, 1], [0, 1]]], np.uint8), np.array([0]),
               np.array([[[0.1, 0.9], [0.6, 0.8]]]))  # fmt: skip
    paths = write_report(tmp_path, build_report(result, CLASSES, ["a.tif"], "test", binary=True))
    _show_report([{"kind": "report", "path": str(p)} for p in paths])
    out = " ".join(capsys.readouterr().out.split())
    assert "report (test split, 4 px): overall accuracy 0.750, IoU clear=0.500 cloud=0.667" in out
    assert "F1-optimal threshold 0.61" in out
    from torchbearer.tui.widgets.job_parts import report_summary  # the dashboard's outputs list shows it too

    assert report_summary([{"path": str(paths[0])}]).startswith("report (test split, 4 px)")


def test_patches_are_drawn_in_proportion_to_labelled_area(stack: Path, tmp_path: Path) -> None:
    pairs = repetitions.repeat_scene(stack, MASK, tmp_path / "reps", 8, crop_step=32)
    for _, mask in pairs[:4]:  # half the rows unlabelled, in stripes: about as many patches, half the area
        with rasterio.open(mask, "r+") as dst:
            labels = dst.read(1)
            labels[np.arange(labels.shape[0]) % 32 >= 16] = IGNORE
            dst.write(labels, 1)
    scenes = load_scenes([s for s, _ in pairs], [m for _, m in pairs], CLASSES, cache_dir=tmp_path / "mapped")
    dm = SegmentationDataModule(scenes, patch_size=32, batch_size=16, split=SplitOptions(64), samples_per_epoch=4000)
    dm.setup()
    areas = []  # labelled training pixels of each scene, counted here
    for index, scene in enumerate(scenes):
        areas.append(int(((dm.split.parts[index] == TRAIN) & (np.asarray(scene.target) != IGNORE)).sum()))
    assert areas == dm.split.train_area and len(set(areas)) == 8
    drawn = np.bincount([scene for scene, *_ in dm.train_sampler()], minlength=8)
    origins = np.bincount([scene for scene, *_ in dm.split.train], minlength=8)
    assert not np.allclose(origins / origins.sum(), np.array(areas) / sum(areas), atol=0.02)  # not by patches
    np.testing.assert_allclose(drawn / drawn.sum(), np.array(areas) / sum(areas), atol=0.02)
