"""CAMs, band attributions and layer choice on hand-made and real networks, with real 60 m patches."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from tests.explain.conftest import OneBandModel, RegionModel, real_card, windows
from torchbearer.explain.attributions import band_attributions
from torchbearer.explain.cams import CamMaker, save_overlay
from torchbearer.explain.model import ClassScore, ExplainError, class_index, find_layer
from torchbearer.explain.patches import standardise
from torchbearer.ml.models import build_model


def _batch(patches, card):
    x = torch.from_numpy(np.stack([standardise(p, card) for p in patches]))
    valid = torch.from_numpy(np.stack([p.valid for p in patches]))
    return x, valid


def test_cam_is_higher_inside_the_region_the_output_depends_on(stack60, tmp_path) -> None:
    card = real_card(stack60)
    patches = [p for p in windows(stack60, card, 64) if p.valid.all()][:3]
    x, valid = _batch(patches, card)
    region = (slice(16, 40), slice(24, 56))
    model = RegionModel(len(card.bands), region, 64).eval()
    _, layer = find_layer(model, "gate")
    maker = CamMaker(model, layer, ["gradcam", "gradcam++", "guided"])
    maps = maker(x, [ClassScore(1, True, v) for v in valid])
    maker.close()
    assert maps.shape == (3, 3, 64, 64) and (maps >= 0).all()
    inside = np.zeros((64, 64), bool)
    inside[region] = True
    for k, method in enumerate(["gradcam", "gradcam++", "guided"]):
        cam = maps[:, k]
        assert cam[:, inside].mean() > 5 * cam[:, ~inside].mean(), method
    png = save_overlay(tmp_path / "p.png", x[0].numpy(), card.bands, maps[0], ["gradcam", "gradcam++", "guided"],
                       valid[0].numpy(), "predicted cloud")  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_shap"])
def test_band_attribution_ranks_the_only_band_used_first(stack60, method: str) -> None:
    card = real_card(stack60)
    band = card.bands.index("B8A")  # the 60 m stack's near infrared (B08 is a 10 m band)
    patches = windows(stack60, card, 32)[:6]  # real patches, some with no data
    batches = [_batch(patches[:3], card), _batch(patches[3:], card)]
    ranked = band_attributions(OneBandModel(len(card.bands), band).eval(), batches, card.bands, 1, True,
                               method=method, steps=16)  # fmt: skip
    assert ranked[0].band == "B8A"
    assert ranked[0].share > 0.99, [(r.band, r.share) for r in ranked]


@pytest.mark.parametrize(
    ("arch", "backbone", "expected"),
    [("fcn", None, "backbone"), ("farseg", "resnet18", "backbone.layer4"), ("unet", "resnet18", "encoder.layer4")],
)
def test_automatic_layer_of_each_segmentation_architecture(stack60, arch, backbone, expected) -> None:
    card = real_card(stack60, arch)
    model = build_model(arch, backbone, len(card.bands), 1).eval()
    name, layer = find_layer(model, None)
    assert name == expected
    x, valid = _batch(windows(stack60, card, 64)[:1], card)
    maker = CamMaker(model, layer, ["gradcam"])
    cam = maker(x, [ClassScore(1, True, valid[0])])
    maker.close()
    assert cam.shape == (1, 1, 64, 64) and np.isfinite(cam).all() and cam.max() > 0


def test_a_timm_classifier_gets_its_last_stage_and_class_maps(stack60) -> None:
    card = real_card(stack60, classes=("water", "forest", "urban"))
    model = timm.create_model("resnet18", pretrained=False, num_classes=3, in_chans=len(card.bands)).eval()
    name, layer = find_layer(model, "auto")
    assert name == "layer4"
    x, _ = _batch(windows(stack60, card, 64)[:2], card)
    index = class_index(card.classes, "forest", card.task)
    maker = CamMaker(model, layer, ["gradcam", "gradcam++", "guided"])
    maps = maker(x, [ClassScore(index, False)] * 2)
    maker.close()
    assert maps.shape == (2, 3, 64, 64) and np.isfinite(maps).all()


def test_unknown_layer_and_class_are_refused_with_the_choices(stack60) -> None:
    model = build_model("unet", "resnet18", 11, 1)
    with pytest.raises(ExplainError, match=r"layer 'encoder.layr4' does not exist .*did you mean 'encoder.layer4'"):
        find_layer(model, "encoder.layr4")
    with pytest.raises(ExplainError, match=r"class 'clouds' is not one of the model's classes: clear, cloud"):
        class_index(["clear", "cloud"], "clouds", "binary")
    with pytest.raises(ExplainError, match=r"needs a class to explain: one of water, forest, urban"):
        class_index(["water", "forest", "urban"], None, "multiclass")
    assert class_index(["clear", "cloud"], None, "binary") == 1
