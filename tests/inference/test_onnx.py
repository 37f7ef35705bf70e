"""Members through ONNX Runtime: export with its card beside the checkpoint, parity with PyTorch, the cache and
its invalidation, the runtime choice of a predict job (logged), and ``torchbearer export``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from tests.cli.conftest import flat, tb
from tests.inference.conftest import card_for, save_checkpoint
from tests.inference.test_predict_job import _context
from torchbearer.inference.ensemble import PredictOptions, predict_scene
from torchbearer.inference.members import Member
from torchbearer.inference.onnx import (
    PARITY_TOLERANCE,
    OnnxModel,
    card_path,
    choose_runtimes,
    export_checkpoint,
    onnx_path,
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
