"""Parts of patch classification, in process: the patch cache, BigEarthNet grids, weights, two-phase fine-tuning,
scene prediction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import rasterio
import timm
import torch

from tests.classify.conftest import BIGEARTHNET, PATCHES, SAMPLE_NAME
from torchbearer.ml.checkpoint import ModelCard, save_checkpoint
from torchbearer.ml.classification import (
    AugmentOptions,
    ClassificationTask,
    PatchDataModule,
    PhaseOptions,
    RandomSymmetry,
    TwoPhaseFinetuning,
)
from torchbearer.ml.classifiers import backbone_blocks, build_classifier, head_parameters
from torchbearer.ml.patches import load_patch_set

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is small and shared
    yield
    torch.set_num_threads(threads)


def test_patch_cache_is_one_array_reused_until_the_folder_changes(tmp_path: Path) -> None:
    root = tmp_path / "patches"
    shutil.copytree(PATCHES, root)
    cache = tmp_path / "cache"
    first = load_patch_set(root, cache)
    assert first.images.shape == (257, 11, 16, 16) and first.images.dtype == np.uint16
    assert isinstance(first.images, np.memmap) and list(cache.glob("*.npy")) == [first.cache]
    assert first.classes == ["cloud", "shadow", "vegetation", "water"] and first.bands[8] == "B09"
    with rasterio.open(root / first.paths[5]) as src:  # the array holds the file's pixels
        assert np.array_equal(first.images[5], src.read())
    stamp = first.cache.stat().st_mtime_ns
    assert load_patch_set(root, cache).cache.stat().st_mtime_ns == stamp  # reused, not rebuilt
    (root / first.paths[0]).unlink()
    changed = load_patch_set(root, cache)
    assert len(changed) == 256 and changed.cache.stat().st_mtime_ns != stamp
    picked = load_patch_set(root, cache, bands=["B04", "B03", "B02"])
    assert picked.bands == ["B04", "B03", "B02"] and np.array_equal(picked.images[0], changed.images[0][[3, 2, 1]])

    split = changed.split(0.2, 0.2, seed=0)
    assert sum(len(v) for v in split.values()) == 256 and not set(split["train"]) & set(split["test"])
    shares = [changed.class_counts(split[s]) / len(split[s]) for s in ("train", "test")]
    assert np.abs(shares[0] - shares[1]).max() < 0.05  # stratified


def _symmetries(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of a square image (C × H × W): 4 rotations, each also flipped left-right."""
    turns = [torch.rot90(x, k, (-2, -1)) for k in range(4)]
    return turns + [t.flip(-1) for t in turns]


def test_flips_and_rotations_give_every_symmetry_of_a_real_patch_exactly() -> None:
    """Batch-level flips and 90° rotations on 11-band patches: each sample is one of its own 8 symmetries
    (no resampling), drawn per sample, all 8 about equally often; rotations alone give only rotations."""
    images = torch.from_numpy(np.stack([_real_patch(i) for i in range(4)])).float()  # 4 × 11 × 16 × 16
    batch = images.repeat(200, 1, 1, 1)  # 800 samples
    torch.manual_seed(0)
    out = RandomSymmetry()(batch)
    counts = [0] * 8
    for sample, source in zip(out, batch, strict=True):
        (which,) = [k for k, s in enumerate(_symmetries(source)) if torch.equal(s, sample)]
        counts[which] += 1
    assert all(60 < n < 140 for n in counts), counts  # 100 expected each
    rotated = RandomSymmetry(flips=False)(batch)
    assert all(any(torch.equal(s, r) for s in _symmetries(b)[:4]) for r, b in zip(rotated, batch, strict=True))


def _real_patch(index: int) -> np.ndarray:
    with rasterio.open(sorted(PATCHES.rglob("*.tif"))[index]) as src:
        return src.read().astype(np.float32)


def test_bigearthnet_bands_at_10_20_60_m_share_one_grid_with_a_multi_label_target(tmp_path: Path) -> None:
    patch_set = load_patch_set(BIGEARTHNET, tmp_path / "cache", layout="bigearthnet")
    assert patch_set.multilabel and patch_set.images.shape == (6, 12, 120, 120)
    name = "S2A_MSIL2A_20170613T101031_87_48"
    i = patch_set.paths.index(name)
    with rasterio.open(BIGEARTHNET / name / f"{name}_B02.tif") as src:  # 10 m: taken as it is
        assert np.array_equal(patch_set.images[i, patch_set.bands.index("B02")], src.read(1))
    for band, size in (("B05", 60), ("B01", 20)):  # 20 m and 60 m: resampled onto the 10 m grid
        with rasterio.open(BIGEARTHNET / name / f"{name}_{band}.tif") as src:
            native = src.read(1).astype(float)
        assert native.shape == (size, size)
        resampled = patch_set.images[i, patch_set.bands.index(band)].astype(float)
        block = resampled.reshape(size, 120 // size, size, 120 // size).mean(axis=(1, 3))
        assert abs(resampled.mean() - native.mean()) < 0.02 * native.mean()
        assert np.corrcoef(block.ravel(), native.ravel())[0, 1] > 0.9
    labels = json.loads((BIGEARTHNET / name / f"{name}_labels_metadata.json").read_text())["labels"]
    assert {patch_set.classes[k] for k in np.flatnonzero(patch_set.labels[i])} == set(labels)


def test_a_3_band_weights_file_loads_into_an_11_band_model(tmp_path: Path) -> None:
    rgb = timm.create_model("resnet18", num_classes=1000)
    torch.save(rgb.state_dict(), tmp_path / "resnet18_rgb.pth")
    model = build_classifier("resnet18", 11, 4, tmp_path / "resnet18_rgb.pth")
    assert model.conv1.weight.shape == (64, 11, 7, 7) and model.fc.weight.shape == (4, 512)
    expected = timm.models.adapt_input_conv(11, rgb.conv1.weight.detach())  # timm's adaptation, 3 → 11
    assert torch.allclose(model.conv1.weight, expected)
    assert torch.equal(model.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)

    # A torchbearer checkpoint of an 11-band model for 4 classes: everything loads, the head too.
    card = ModelCard("classifier", "resnet18", 11, 4, list("abcd"), "multiclass", [f"b{i}" for i in range(11)], 60.0,
                     {"mean": [0.0] * 11, "std": [1.0] * 11})  # fmt: skip
    save_checkpoint(model, card, tmp_path / "ours.ckpt")
    again = build_classifier("resnet18", 11, 4, tmp_path / "ours.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(), strict=True))


def _backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    head = head_parameters(model)
    return {k: v.clone() for k, v in model.state_dict().items() if k not in head}


class _Snapshots(L.Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.states.append({k: v.clone() for k, v in pl_module.model.state_dict().items()})


def _fit_two_phases(tmp_path: Path, phases: PhaseOptions) -> tuple[torch.nn.Module, list[dict]]:
    patch_set = load_patch_set(PATCHES, tmp_path / "cache")
    split = patch_set.split(0.2, 0.2, seed=0)
    mean, std = patch_set.band_stats(split["train"])
    card = ModelCard("classifier", "resnet18", 11, 4, patch_set.classes, "multiclass", patch_set.bands, 60.0,
                     {"mean": mean, "std": std}, extra={"patch_size": 16})  # fmt: skip
    task = ClassificationTask(
        card.to_dict(),
        lr=0.01,
        phases=phases.__dict__,
        max_epochs=2,
        augment=AugmentOptions(brightness=0.1, contrast=0.1, resized_crop=(0.5, 1.0)).__dict__,
    )
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    snapshots = _Snapshots()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", limit_train_batches=2, limit_val_batches=1, logger=False,
                        callbacks=[TwoPhaseFinetuning(phases, 0.01, sets_lr=False), snapshots],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(task, datamodule=PatchDataModule(patch_set, split, batch_size=16))
    return task.model, [before, *snapshots.states]


def test_phase_1_trains_only_the_head_and_phase_2_the_backbone(tmp_path: Path) -> None:
    model, (before, phase1, phase2) = _fit_two_phases(tmp_path, PhaseOptions(head_epochs=1, head_lr=0.01))
    head = head_parameters(model)
    backbone = [k for k in before if k not in head and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(before[k], phase1[k]) for k in backbone)  # weights and batch-norm statistics
    assert all(not torch.equal(before[k], phase1[k]) for k in head)
    changed = [k for k in backbone if not torch.equal(phase1[k], phase2[k])]
    assert "conv1.weight" in changed and "layer4.1.conv2.weight" in changed and "bn1.weight" in changed


def test_phase_2_can_train_only_the_last_block_with_frozen_batch_norm(tmp_path: Path) -> None:
    phases = PhaseOptions(head_epochs=1, head_lr=0.01, unfreeze=1, batchnorm="frozen")
    model, (_, phase1, phase2) = _fit_two_phases(tmp_path, phases)
    last_block = set(backbone_blocks(model)[-1])
    assert last_block and all(name.startswith("layer4.") for name in last_block)
    changed = {k for k in phase1 if not torch.equal(phase1[k], phase2[k])} - head_parameters(model)
    batch_norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert changed and all(k.startswith("layer4.") for k in changed), sorted(changed)
    assert not {k.rsplit(".", 1)[0] for k in changed} & batch_norms  # weights and statistics unchanged


def test_scene_prediction_is_georeferenced_at_patch_resolution(tmp_path: Path) -> None:
    from torchbearer.imagery.cache import build_stack, stack_info
    from torchbearer.inference.classify import load_classifier, predict_scene_patches

    stack = build_stack(REPO / "data" / SAMPLE_NAME, 60, tmp_path / "cache")
    info = stack_info(stack)
    card = ModelCard("classifier", "resnet18", 11, 4, ["cloud", "shadow", "vegetation", "water"], "multiclass",
                     list(info.bands), 60.0, {"mean": [3000.0] * 11, "std": [1000.0] * 11},
                     extra={"patch_size": 16})  # fmt: skip
    path = save_checkpoint(build_classifier("resnet18", 11, 4), card, tmp_path / "classifier.ckpt")
    output = predict_scene_patches([load_classifier(path)], stack, tmp_path / "classes.tif", stride=8)
    with rasterio.open(output) as out:
        assert out.crs == info.crs and out.count == 5 and (out.height, out.width) == (39, 63)
        assert out.descriptions == ("cloud", "shadow", "vegetation", "water", "class")
        assert out.transform.a == info.transform.a * 8 and out.transform.e == info.transform.e * 8
        # pixel (0, 0) is centred on the first patch's centre: 8 scene pixels from the scene's corner
        assert out.xy(0, 0) == pytest.approx(info.transform @ (8, 8))
        data = out.read()
    valid = ~np.isnan(data[-1])
    assert 0.5 < valid.mean() < 1  # the no-data wedge in the east is left out
    assert np.allclose(data[:4, valid].sum(axis=0), 1, atol=1e-4)
    assert np.array_equal(data[-1, valid], data[:4, valid].argmax(axis=0))


def test_multi_label_training_logs_micro_and_macro_f1_and_map(tmp_path: Path) -> None:
    from torchbearer.ml.classify_report import predict_batches, write_report

    patch_set = load_patch_set(BIGEARTHNET, tmp_path / "cache", layout="bigearthnet", bands=["B02", "B03", "B04"])
    split = {"train": np.arange(6), "val": np.arange(6), "test": np.arange(6)}
    mean, std = patch_set.band_stats(split["train"])
    card = ModelCard("classifier", "resnet18", 3, len(patch_set.classes), patch_set.classes, "multilabel",
                     patch_set.bands, 10.0, {"mean": mean, "std": std}, extra={"patch_size": 120})  # fmt: skip
    task = ClassificationTask(card.to_dict(), lr=0.01, label_smoothing=0.1, max_epochs=1)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    datamodule = PatchDataModule(patch_set, split, batch_size=3)
    trainer.fit(task, datamodule=datamodule)
    logged = set(trainer.callback_metrics)
    assert {"val/f1_micro", "val/f1_macro", "val/map", "val/accuracy", "val/f1/Water bodies"} <= logged
    probabilities, labels = predict_batches(task, datamodule.test_dataloader())
    assert probabilities.shape == labels.shape == (6, len(patch_set.classes))
    paths = write_report(tmp_path, probabilities, labels, patch_set.classes, True, split="test")
    report = json.loads(paths["report"].read_text())
    assert report["task"] == "multilabel" and {"f1_micro", "map"} <= set(report)
    assert paths["curves"].name == "pr.png" and paths["confusion"].is_file()


def test_imagenet_weights_that_cannot_be_fetched_fail_clearly(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    from torchbearer.ml.models import ModelError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError, match=r"could not fetch ImageNet weights for resnet18.*offline"):
        build_classifier("resnet18", 11, 4, "imagenet")
