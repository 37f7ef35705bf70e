"""Models by name: shapes, the FarSeg stem for 11 bands, weights from a local checkpoint, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchbearer.ml.checkpoint import CheckpointError
from torchbearer.ml.models import ModelError, adapt_first_conv, build_model


@pytest.mark.parametrize(("arch", "backbone"), [("fcn", None), ("farseg", "resnet18"), ("unet", "resnet18")])
def test_models_map_bands_to_logits(arch: str, backbone: str | None) -> None:
    model = build_model(arch, backbone, in_channels=11, num_classes=3)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 11, 64, 64))
    assert out.shape == (2, 3, 64, 64)


def test_farseg_stem_takes_all_bands() -> None:
    model = build_model("farseg", "resnet18", in_channels=10, num_classes=1)
    assert model.backbone.conv1.in_channels == 10


def test_adapted_stem_keeps_the_response_to_a_flat_input() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    wide = adapt_first_conv(conv, 6)  # each RGB kernel used twice, at half weight
    assert torch.allclose(conv(torch.ones(1, 3, 8, 8)), wide(torch.ones(1, 6, 8, 8)), atol=1e-5)


def test_weights_from_a_local_checkpoint(tmp_path: Path) -> None:
    source = build_model("unet", "resnet18", 11, 1)
    path = tmp_path / "start.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, path)
    # Another class count: the encoder comes from the checkpoint, the head stays fresh.
    model = build_model("unet", "resnet18", 11, 4, weights=path)
    first = "encoder.conv1.weight"
    assert torch.equal(model.state_dict()[first], source.state_dict()[first])
    assert model.segmentation_head[0].out_channels == 4


def test_bad_model_requests_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown architecture 'deeplab'"):
        build_model("deeplab", None, 11, 1)
    with pytest.raises(ModelError, match="farseg backbone 'vgg16'"):
        build_model("farseg", "vgg16", 11, 1)
    with pytest.raises(ModelError, match="fcn has no ImageNet weights"):
        build_model("fcn", None, 11, 1, weights="imagenet")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        build_model("fcn", None, 11, 1, weights=tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        build_model("fcn", None, 11, 1, weights=tmp_path / "junk.ckpt")
    other = tmp_path / "fcn.ckpt"
    torch.save(build_model("fcn", None, 11, 1).state_dict(), other)
    with pytest.raises(CheckpointError, match="none of its"):
        build_model("unet", "resnet18", 11, 1, weights=other)
