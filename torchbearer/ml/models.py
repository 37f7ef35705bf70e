"""Segmentation models by name: TorchGeo's FCN and FarSeg, segmentation-models-pytorch's U-Net.

Every model maps a ``B × in_channels × H × W`` batch of normalised reflectance to ``B × out_channels × H × W``
logits (``H`` and ``W`` multiples of 32 pixels for ``farseg`` and ``unet``, any size for ``fcn``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from torchbearer.ml.checkpoint import CheckpointError, read_checkpoint, state_dict_of
from torchbearer.ml.names import ARCHITECTURES, FARSEG_BACKBONES

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model cannot be built as asked (unknown architecture or backbone, weights not available)."""


def default_backbone(arch: str) -> str | None:
    """The backbone ``arch`` uses when none is given."""
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def build_model(
    arch: str,
    backbone: str | None,
    in_channels: int,
    num_classes: int,
    weights: str | Path | None = None,
) -> nn.Module:
    """Build a segmentation model.

    Args:
        arch: ``fcn``, ``farseg`` or ``unet``.
        backbone: ResNet for ``farseg`` (default resnet50), any smp encoder for ``unet`` (default resnet34);
            must be None for ``fcn``.
        in_channels: input bands (10 at 20 m, 11 at 60 m).
        num_classes: output logit channels (1 for a binary task, the class count for a multiclass one).
        weights: None (random), ``"imagenet"`` (downloads the backbone's ImageNet weights; the first
            convolution is adapted to ``in_channels``) or the path of a checkpoint to start from (tensors
            whose shape differs, e.g. a head for another class count, keep their fresh values).

    Raises:
        ModelError: unknown architecture or backbone, or ImageNet weights that cannot be had.
        CheckpointError: ``weights`` names a checkpoint that cannot be read or fits nothing of the model.
    """
    backbone = backbone or default_backbone(arch)
    imagenet = weights == "imagenet"
    if arch == "fcn":
        if backbone is not None:
            raise ModelError(f"fcn has no backbone to choose (got {backbone!r}); leave backbone out")
        if imagenet:
            raise ModelError("fcn has no ImageNet weights: use weights null or a checkpoint path")
        from torchgeo.models import FCN

        model: nn.Module = FCN(in_channels=in_channels, classes=num_classes, num_filters=64)
    elif arch == "farseg":
        model = _farseg(backbone, in_channels, num_classes, imagenet)
    elif arch == "unet":
        model = _unet(backbone, in_channels, num_classes, imagenet)
    else:
        default_backbone(arch)  # raises with the list of architectures
        raise AssertionError("unreachable")
    if weights is not None and not imagenet:
        load_weights(model, Path(weights))
    return model


def _download_failed(arch: str, backbone: str, exc: Exception) -> ModelError:
    return ModelError(
        f"could not fetch ImageNet weights for {arch}/{backbone} ({type(exc).__name__}: {exc}); "
        "this machine may be offline: use weights null, a local checkpoint path, or pre-fill the torch/"
        "Hugging Face cache"
    )


def _farseg(backbone: str, in_channels: int, num_classes: int, imagenet: bool) -> nn.Module:
    if backbone not in FARSEG_BACKBONES:
        raise ModelError(f"farseg backbone {backbone!r} is not one of {', '.join(FARSEG_BACKBONES)}")
    from torchgeo.models import FarSeg

    try:
        model = FarSeg(backbone=backbone, classes=num_classes, backbone_pretrained=imagenet)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a broken download a RuntimeError
        raise _download_failed("farseg", backbone, exc) from exc
    # FarSeg's ResNet stem takes RGB: give it one convolution for our bands.
    model.backbone.conv1 = adapt_first_conv(model.backbone.conv1, in_channels)
    return model


def _unet(backbone: str, in_channels: int, num_classes: int, imagenet: bool) -> nn.Module:
    import segmentation_models_pytorch as smp

    try:
        return smp.Unet(
            encoder_name=backbone,
            encoder_weights="imagenet" if imagenet else None,
            in_channels=in_channels,
            classes=num_classes,
        )
    except KeyError as exc:
        raise ModelError(f"unet encoder {backbone!r} is unknown to segmentation-models-pytorch") from exc
    except ValueError as exc:
        raise ModelError(f"unet encoder {backbone!r}: {exc}") from exc
    except Exception as exc:  # the Hugging Face hub raises its own errors when offline
        if not imagenet:
            raise
        raise _download_failed("unet", backbone, exc) from exc


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` that takes ``in_channels`` inputs.

    Pretrained RGB kernels are cycled over the new channels and scaled by 3 / ``in_channels``, so the
    response to an input of the same magnitude stays the same (what timm does for multispectral input).
    """
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        index = torch.arange(in_channels) % conv.in_channels
        new.weight.copy_(conv.weight[:, index] * (conv.in_channels / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def load_weights(model: nn.Module, path: Path) -> None:
    """Load the tensors of a checkpoint (torchbearer ``.ckpt`` or a plain state dict) that fit ``model``."""
    state = state_dict_of(read_checkpoint(path), path)
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise CheckpointError(f"{path}: none of its {len(state)} tensors fits this model (another arch?)")
    skipped = sorted(set(own) - set(fitting))
    if skipped:
        log.info("%s: %d tensors kept fresh (shape or name differs), e.g. %s", path, len(skipped), skipped[:3])
    model.load_state_dict(fitting, strict=False)
