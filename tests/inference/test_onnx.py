"""Members through ONNX Runtime: export with its card beside the checkpoint, parity with PyTorch, the cache and
its invalidation, the runtime choice of a predict job (logged), and ``torchbearer export``."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from tests.cli.conftest import flat, tb
from tests.inference.conftest import card_for, save_checkpoint
from tests.inference.test_predict_job import _context
from torchbearer.inference.ensemble import PredictOptions, predict_scene
from torchbearer.inference.members import EnsembleError, Member
from torchbearer.inference.onnx import (
    PARITY_TOLERANCE,
    OnnxModel,
    card_path,
    choose_runtimes,
    export_checkpoint,
    onnx_path,
    quantize_export,
)
from torchbearer.jobs import get_kind
from torchbearer.ml.checkpoint import CheckpointError
from torchbearer.ml.members import load_member


@pytest.mark.parametrize(
    ("arch", "backbone"), [("fcn", None), pytest.param("unet", "resnet18", marks=pytest.mark.slow)]
)
def test_export_matches_pytorch_and_is_cached_until_the_checkpoint_changes(
    tmp_path: Path, small60: Path, arch: str, backbone: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = card_for(small60, arch, backbone, classes=("clear", "cloud", "shadow"))
    ckpt = save_checkpoint(tmp_path / f"{arch}.ckpt", card)
    done = export_checkpoint(ckpt)
    assert done.onnx == onnx_path(ckpt) == tmp_path / f"{arch}.onnx" and done.onnx.is_file()
    assert not done.cached and 0 <= done.max_abs_diff <= PARITY_TOLERANCE
    meta = json.loads(card_path(done.onnx).read_text())
    written = meta["model_card"]
    assert written["bands"] == card.bands and written["resolution"] == card.resolution
    assert written["norm"] == card.norm and written["classes"] == ["clear", "cloud", "shadow"]
    assert meta["max_abs_diff"] == done.max_abs_diff

    # The whole prediction through ONNX Runtime writes (nearly) the map PyTorch writes.
    model, card = load_member(ckpt)
    options = PredictOptions(window=64, batch_size=2)
    by_torch = predict_scene([Member("m", model, card, source=str(ckpt))], [small60], tmp_path / "torch.tif", options)
    onnx_member = Member("m", OnnxModel(done.onnx), card, source=str(ckpt))
    contiguous, real_forward = [], OnnxModel.forward

    def forward(self: OnnxModel, x: torch.Tensor) -> torch.Tensor:
        contiguous.append(x.is_contiguous())
        return real_forward(self, x)

    monkeypatch.setattr(OnnxModel, "forward", forward)
    by_onnx = predict_scene([onnx_member], [small60], tmp_path / "onnx.tif", options)
    # Batches reach ONNX Runtime as the NCHW arrays it takes, not channels-last (permuted there and back again).
    assert contiguous and all(contiguous)
    with rasterio.open(by_torch.output) as a, rasterio.open(by_onnx.output) as b:
        difference = np.abs(a.read().astype(int) - b.read().astype(int))
    assert difference.max() <= 1, "at most one quantisation step apart"

    assert export_checkpoint(ckpt).cached, "the same checkpoint is not exported again"
    save_checkpoint(ckpt, card, seed=1)  # new weights: the export is stale
    again = export_checkpoint(ckpt)
    assert (
        not again.cached
        and json.loads(card_path(again.onnx).read_text())["checkpoint_sha256"] != meta["checkpoint_sha256"]
    )


def test_a_bad_checkpoint_is_refused_by_name(tmp_path: Path, small60: Path) -> None:
    good = save_checkpoint(tmp_path / "good.ckpt", card_for(small60))
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"broken\.ckpt: not a readable checkpoint"):
        export_checkpoint(broken)
    assert not onnx_path(broken).exists()
    model, card = load_member(good)
    member = Member("b", model, card, source=str(broken))
    with pytest.raises(CheckpointError, match=r"broken\.ckpt"):
        choose_runtimes([member], "onnx", "cpu", window=64)
    assert choose_runtimes([member], "auto", "cpu", window=64) == ["torch"], "auto falls back"


def test_predict_job_records_its_runtime_choice(project, store, small60, caplog) -> None:
    save_checkpoint(project.project_dir / "a.ckpt", card_for(small60))
    shutil.copy(small60, project.project_dir / "small_60m.tif")
    kind = get_kind("predict")
    base = {"name": "ens", "models": [{"checkpoint": "a.ckpt"}], "scenes": ["small_60m.tif"], "window": 64}
    caplog.set_level(logging.INFO, logger="torchbearer.inference.onnx")

    kind.run(kind.spec.model_validate({**base, "output": "out/torch.tif", "runtime": "torch"}), _context(
        project, store, "t"))  # fmt: skip
    assert not (project.project_dir / "a.onnx").exists(), "runtime: torch exports nothing"

    kind.run(kind.spec.model_validate({**base, "output": "out/auto.tif"}), _context(project, store, "a"))
    (choice,) = [r.getMessage() for r in caplog.records if "(auto:" in r.getMessage()]
    assert choice.startswith("model 'a': runtime ") and "ONNX Runtime" in choice and "PyTorch" in choice
    assert (project.project_dir / "a.onnx").is_file(), "auto exported the member beside its checkpoint"

    kind.run(kind.spec.model_validate({**base, "output": "out/onnx.tif", "runtime": "onnx"}), _context(
        project, store, "o"))  # fmt: skip
    assert any("runtime onnx (set;" in r.getMessage() for r in caplog.records)
    with (
        rasterio.open(project.project_dir / "out/torch.tif") as a,
        rasterio.open(project.project_dir / "out/onnx.tif") as b,
    ):
        assert np.abs(a.read().astype(int) - b.read().astype(int)).max() <= 1

    # 8 bits: quantized into the job's own run folder (a resumed attempt reuses it).
    context = _context(project, store, "q")
    kind.run(kind.spec.model_validate({**base, "output": "out/int8.tif", "runtime": "onnx-int8"}), context)
    assert [p.name for p in (context.run_dir / "int8").glob("*.onnx")] == ["0-a.onnx"]
    assert (project.project_dir / "out/int8.tif").is_file()

    with pytest.raises(ValueError, match="runtime"):
        kind.spec.model_validate({**base, "output": "o.tif", "runtime": "tensorrt"})


def test_export_command(tmp_path: Path, small60: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "m.ckpt", card_for(small60))
    result = tb("export", ckpt, "--output", tmp_path / "out" / "model.onnx")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "model.onnx").is_file() and "max |ONNX − PyTorch|" in flat(result.stdout)
    assert (
        json.loads((tmp_path / "out" / "model.onnx.json").read_text())["model_card"]["bands"] == card_for(small60).bands
    )

    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    result = tb("export", tmp_path / "junk.ckpt")
    assert result.returncode == 1 and "junk.ckpt: not a readable checkpoint" in flat(result.stderr)
    result = tb("export", tmp_path / "missing.ckpt")
    assert result.returncode == 1 and "missing.ckpt: checkpoint not found" in flat(result.stderr)


def test_int8_runtime_quantizes_once_on_the_first_windows_and_follows_float32(
    tmp_path: Path, small60: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = save_checkpoint(tmp_path / "fcn.ckpt", card_for(small60, classes=("clear", "cloud", "shadow")))
    model, card = load_member(ckpt)
    options = PredictOptions(window=64, batch_size=2, class_map=True)
    by_torch = predict_scene([Member("m", model, card, source=str(ckpt))], [small60], tmp_path / "torch.tif", options)

    caplog.set_level(logging.INFO, logger="torchbearer.inference.onnx")
    member = Member("m", *load_member(ckpt), source=str(ckpt))
    int8_dir = tmp_path / "run" / "int8"
    assert choose_runtimes([member], "onnx-int8", "cpu", window=64, int8_dir=int8_dir) == ["onnx-int8"]
    assert not int8_dir.exists(), "quantized on its first windows, not before"
    by_int8 = predict_scene([member], [small60], tmp_path / "int8.tif", replace(options, runtime="onnx-int8"))
    (quantized,) = int8_dir.glob("*.onnx")
    record = json.loads(card_path(quantized).read_text())
    assert record["calibration_windows"] == 2 and record["window"] == [64, 64]  # the first batch held two
    assert 0.95 <= record["label_agreement"] <= 1 and record["max_abs_diff"] > 0, "quantized, and close"
    (logged,) = [r.getMessage() for r in caplog.records if "quantized to 8 bits" in r.getMessage()]
    assert "agree with float32 on" in logged
    with rasterio.open(by_torch.output) as a, rasterio.open(by_int8.output) as b:
        assert b.dtypes == a.dtypes and b.shape == a.shape
    with rasterio.open(by_torch.class_map) as a, rasterio.open(by_int8.class_map) as b:
        same = a.read(1) == b.read(1)
    assert same.mean() >= 0.95, "the 8-bit map's labels are float32's almost everywhere"

    # A resumed prediction reuses the quantization (same calibration), whatever windows it starts on.
    mtime = quantized.stat().st_mtime_ns
    again = Member("m", *load_member(ckpt), source=str(ckpt))
    choose_runtimes([again], "onnx-int8", "cpu", window=64, int8_dir=int8_dir)
    again.model(torch.zeros(1, card.in_channels, 64, 64))
    assert quantized.stat().st_mtime_ns == mtime
    assert len([r for r in caplog.records if "quantized to 8 bits" in r.getMessage()]) == 1

    with pytest.raises(EnsembleError, match="runtime: onnx-int8 runs on the CPU"):
        choose_runtimes([Member("m", *load_member(ckpt), source=str(ckpt))], "onnx-int8", "cuda", window=64)


@pytest.mark.slow  # a U-Net export and quantization: about 15 s on 2 cores
def test_quantizing_a_unet_logs_none_of_the_quantizers_noise(
    tmp_path: Path, small60: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # U-Net's decoder has shape tensors (Gather, Slice) the quantizer leaves in float, warning about each on the
    # root logger with the whole tensor type: in a worker each would become one of the job's log markers.
    ckpt = save_checkpoint(tmp_path / "unet.ckpt", card_for(small60, "unet", "resnet18"))
    export = export_checkpoint(ckpt)
    windows = np.random.default_rng(0).normal(size=(2, len(card_for(small60).bands), 64, 64)).astype(np.float32)
    caplog.set_level(logging.DEBUG)
    record = quantize_export(export.onnx, windows, tmp_path / "q" / "unet.onnx")
    assert (tmp_path / "q" / "unet.onnx").is_file() and record["calibration_windows"] == 2
    assert not [r for r in caplog.records if "onnxruntime" in r.pathname], "the quantizer's noise is not logged"
