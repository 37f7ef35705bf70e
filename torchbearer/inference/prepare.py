"""Preparing a member for inference: layout (channels-last) and batch norms folded into convolutions (``torch.fx``
graph fusing)."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse as fuse_conv_bn

log = logging.getLogger(__name__)


def prepare_model(model: nn.Module, device: torch.device, optimize: bool) -> nn.Module:
    """A member ready for inference on ``device``, in eval mode.

    On a GPU: channels-last layout (the forward runs under float16 autocast). On a CPU with ``optimize``:
    channels-last layout (oneDNN's fast convolution kernels) and batch norms folded into the convolutions
    (``torch.fx``); together 1.3–2× the eager forward of FCN, FarSeg and U-Net on the CPUs here, for well under
    a second of preparation (TorchScript freezing gains about as much but costs seconds per model and warm-up
    calls). A model ``torch.fx`` cannot trace stays eager, channels-last. A classical member (``is_classical``:
    a random forest on pixels, ``ml/forest.py``) runs as it is.
    """
    if getattr(model, "is_classical", False):
        return model.eval()
    if getattr(model, "prepared", False):  # an ONNX Runtime session (inference/onnx.py): nothing to convert
        return model
    model = model.to(device).eval()
    if device.type == "cuda" or optimize:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda" or not optimize:
        return model
    try:
        return fuse_conv_bn(model)
    except Exception as exc:  # noqa: BLE001 - fx tracing fails in many ways on dynamic models; eager still works
        log.warning("could not fold batch norms of %s (%s): it runs unfolded", type(model).__name__, exc)
        return model


def channels_last(device: torch.device, optimize: bool) -> bool:
    """Whether inputs go in channels-last layout (the layout :func:`prepare_model` gave the members)."""
    return device.type == "cuda" or optimize


def input_layout(model: nn.Module, device: torch.device, optimize: bool) -> torch.memory_format:
    """The memory format a member's input batches go in: channels-last where :func:`prepare_model` gave the
    model that layout; contiguous for an ONNX Runtime session (``prepared``), which takes NCHW arrays: a
    channels-last batch would be permuted there and back again (about 45 ms of CPU per batch of eight 256²
    windows of 11 bands, a second over the full scene's three members)."""
    if getattr(model, "prepared", False):
        return torch.contiguous_format
    return torch.channels_last if channels_last(device, optimize) else torch.contiguous_format
