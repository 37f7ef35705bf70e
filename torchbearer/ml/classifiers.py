"""Image classifiers by name: timm backbones with a head for our classes and a stem for our bands.

Every model maps a ``B × in_channels × H × W`` batch of standardised patches to ``B × num_classes`` logits.
Starting weights come through timm's own pretrained-loading machinery (``load_pretrained``): ImageNet weights
from timm's hub, or a local file (a timm / torchvision state dict, or a torchbearer checkpoint) passed as the
``state_dict`` of the pretrained config, so timm adapts the first convolution to the band count
(``adapt_input_conv``) and drops a classifier made for another class count.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

from torch import nn

from torchbearer.ml.checkpoint import CheckpointError, read_checkpoint, state_dict_of
from torchbearer.ml.models import ModelError

log = logging.getLogger(__name__)

#: Backbones the docs name; any timm model with a classifier head works.
SUGGESTED_BACKBONES = ("resnet18", "resnet50", "mobilenetv2_100", "legacy_xception", "efficientnet_b0")


def check_backbone(name: str) -> None:
    """Raise :class:`ModelError` (with a "did you mean") unless timm knows ``name``."""
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ModelError(f"unknown backbone {name!r} (not a timm model){hint} e.g. {', '.join(SUGGESTED_BACKBONES)}")


def build_classifier(
    backbone: str, in_channels: int, num_classes: int, weights: str | Path | None = None, drop_rate: float = 0.0
) -> nn.Module:
    """A timm classifier.

    Args:
        backbone: a timm model name (``resnet18``, ``resnet50``, ``mobilenetv2_100``, ``legacy_xception``,
            ``efficientnet_b0`` …).
        in_channels: bands of the patches.
        num_classes: logits (one per class, for single- and multi-label tasks).
        weights: None (random), ``"imagenet"`` (timm's default pretrained weights, fetched once into the
            torch / Hugging Face cache) or a local weights file.
        drop_rate: dropout before the classifier.

    Raises:
        ModelError: unknown backbone, or ImageNet weights that cannot be fetched.
        CheckpointError: a weights file that cannot be read or does not fit the backbone.
    """
    import timm

    check_backbone(backbone)
    options = {"in_chans": in_channels, "num_classes": num_classes, "drop_rate": drop_rate}
    if weights is None:
        return timm.create_model(backbone, **options)
    if weights == "imagenet":
        try:
            return timm.create_model(backbone, pretrained=True, **options)
        except Exception as exc:  # urllib, requests and the Hugging Face hub raise their own types when offline
            raise ModelError(
                f"could not fetch ImageNet weights for {backbone} ({type(exc).__name__}: {exc}); this machine may "
                "be offline: use weights null, a local weights file, or pre-fill the torch / Hugging Face cache"
            ) from exc
    return _from_file(backbone, Path(weights), options)


def _from_file(backbone: str, path: Path, options: dict) -> nn.Module:
    """Load a local file through timm's pretrained machinery, which adapts the stem and the head."""
    import timm

    state = state_dict_of(read_checkpoint(path), path)  # a torchbearer .ckpt loses its "model." prefix
    cfg = timm.models.get_pretrained_cfg(backbone)
    cfg = cfg.to_dict() if cfg is not None else {}
    overlay: dict = {"state_dict": state}
    first_conv, classifier = cfg.get("first_conv"), cfg.get("classifier")
    if isinstance(first_conv, str) and f"{first_conv}.weight" in state:
        # timm adapts the stem from the file's own band count (3 for ImageNet weights, 11 for ours …)
        overlay["input_size"] = (state[f"{first_conv}.weight"].shape[1], *cfg.get("input_size", (3, 224, 224))[1:])
    if isinstance(classifier, str) and f"{classifier}.weight" in state:
        overlay["num_classes"] = state[f"{classifier}.weight"].shape[0]  # kept when it fits our classes
    try:
        return timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay=overlay, **options)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: weights do not fit backbone {backbone}: {exc}"[:2000]) from exc


def head_parameters(model: nn.Module) -> set[str]:
    """Names of the classifier head's parameters (trained in both phases)."""
    head = model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def backbone_blocks(model: nn.Module) -> list[list[str]]:
    """The backbone's parameter names in blocks, from the stem to the last block (timm's coarse layer groups,
    the head left out): ``unfreeze: K`` trains the last K of them."""
    from timm.models import group_parameters

    head = head_parameters(model)
    groups = group_parameters(model, model.group_matcher(coarse=True))
    blocks = [[n for n in names if n not in head] for names in groups.values()]
    return [b for b in blocks if b]
