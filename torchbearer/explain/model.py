"""A trained network seen by the explanation libraries: which layer to look at, which class score to explain.

Segmentation networks output ``B × channels × H × W`` logits, classifiers ``B × channels``; the score of a class
is its logit (a binary model's one logit, negated for the background class), averaged over the pixels that
have data for a segmentation network. The target layer is chosen per architecture (the deepest feature map
before the head) or given by name.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torchbearer.ml.checkpoint import ModelCard


class ExplainError(ValueError):
    """An explanation cannot be made as asked (unknown class or layer, inputs that do not fit); says why."""


#: Layers tried, in order, when none is named: FarSeg's and smp U-Net's ResNet stages, then FCN's conv stack.
LAYER_CANDIDATES = ("backbone.layer4", "encoder.layer4", "backbone", "decoder")


def automatic_layer(model: nn.Module) -> str:
    """The name of the layer whose activations a CAM uses for ``model``.

    A timm classifier: the top-level module just before its global pooling, whose output is
    ``forward_features``' (``layer4`` of a ResNet, ``bn2`` of a MobileNetV2 or EfficientNet: the head
    convolution after the last block, ``act4`` of Xception): the last map with positions, and the one whose
    mean over the pixels is the penultimate vector. Other timm models name their deepest feature stage in
    ``feature_info``. TorchGeo's FarSeg and smp's U-Net with a ResNet encoder have ``layer4`` (stride
    32, the most semantic map); TorchGeo's FCN has no stages: the output of its convolution stack
    (``backbone``) feeds the 1 × 1 head; an smp U-Net with another encoder uses its decoder's output.
    """
    children = [name for name, _ in model.named_children()]
    if "global_pool" in children and children.index("global_pool") > 0 and hasattr(model, "forward_head"):
        return children[children.index("global_pool") - 1]
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and isinstance(info[-1], dict) and "module" in info[-1]:
        return str(info[-1]["module"])
    names = dict(model.named_modules())
    for candidate in LAYER_CANDIDATES:
        if candidate in names:
            return candidate
    raise ExplainError(f"no automatic target layer for a {type(model).__name__}; name one with layer: (e.g. "
                       f"{', '.join(conv_layers(model)[-3:]) or 'a convolution'})")  # fmt: skip


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the model's convolutions, in definition order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def find_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """``(name, module)`` of the layer called ``name``, or of the automatic one when ``name`` is None/``auto``."""
    if name in (None, "auto"):
        name = automatic_layer(model)
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else (
            f"its top-level layers are {', '.join(n for n, _ in model.named_children())}")  # fmt: skip
        raise ExplainError(f"layer {name!r} does not exist in this {type(model).__name__}; {hint}")
    return name, modules[name]


def load_explained(path: Path, device: str) -> tuple[nn.Module, ModelCard]:
    """The network of a checkpoint any training kind made (``train``'s segmentation models, ``classify``'s
    timm classifiers) on ``device`` in eval mode, with its card; a clear error for anything else."""
    from torchbearer.inference.classify import CLASSIFIER_ARCH, load_classifier
    from torchbearer.ml.checkpoint import FOREST_SUFFIX
    from torchbearer.ml.members import load_member, read_card
    from torchbearer.ml.names import ARCHITECTURES

    if Path(path).suffix == FOREST_SUFFIX:
        raise ExplainError(f"{path} is a random forest (pixels in, no layers or gradients): explain takes the "
                           "networks of train (segmentation) and classify (classifier) checkpoints")  # fmt: skip
    card = read_card(path)
    if card.arch == CLASSIFIER_ARCH:
        return load_classifier(path, device).model, card
    if card.arch not in ARCHITECTURES:
        known = f"segmentation models ({', '.join(ARCHITECTURES)}) and {CLASSIFIER_ARCH} checkpoints"
        raise ExplainError(f"{path} is a checkpoint of an unknown kind (arch {card.arch!r}): explain takes {known}")
    return load_member(path, device)


def class_index(classes: list[str], name: str | None, task: str) -> int:
    """Index of the class ``name`` in ``classes``; None means a binary model's target class."""
    if name is None:
        if task == "binary":
            return len(classes) - 1
        raise ExplainError(f"a {len(classes)}-class model needs a class to explain: one of {', '.join(classes)}")
    if name not in classes:
        raise ExplainError(f"class {name!r} is not one of the model's classes: {', '.join(classes)}")
    return classes.index(name)


@dataclass
class ClassScore:
    """A pytorch-grad-cam target (a callable on one example's output): the score of class ``index``.

    Args:
        index: the class (0 … classes - 1).
        binary: the model has one logit (class 1's); class 0's score is its negation.
        valid: pixels (H × W, bool) the score is averaged over for a segmentation output; None: all.
    """

    index: int
    binary: bool
    valid: torch.Tensor | None = None

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logit = output[0] if self.binary else output[self.index]
        if self.binary and self.index == 0:
            logit = -logit
        if logit.ndim == 0:  # a classifier
            return logit
        if self.valid is None or not self.valid.any():
            return logit.mean()
        return logit[self.valid.to(logit.device)].mean()


def scores(model: nn.Module, x: torch.Tensor, targets: list[ClassScore]) -> torch.Tensor:
    """One score per example (B) of ``model`` on ``x``: what Captum's attributions differentiate."""
    output = model(x)
    return torch.stack([t(o) for t, o in zip(targets, output, strict=True)])


def predicted(output: torch.Tensor, classes: list[str], task: str) -> list[str]:
    """A title per example: the predicted class (share of pixels for segmentation, probability otherwise); for a
    multi-label classifier every class at ≥ 50 % (``;``-joined), or ``none`` with the likeliest one's."""
    binary = task == "binary"
    probs = torch.sigmoid(output.float()) if binary or task == "multilabel" else torch.softmax(output.float(), dim=1)
    if binary:
        probs = torch.cat([1 - probs, probs], dim=1)
    titles = []
    for p in probs:
        if task == "multilabel":
            chosen = [k for k in range(len(classes)) if p[k] >= 0.5]
            top = int(p.argmax())
            titles.append(f"{';'.join(classes[k] for k in chosen)} ({p[chosen].min():.0%}+)" if chosen
                          else f"none ({classes[top]} {p[top]:.0%})")  # fmt: skip
        elif p.ndim == 1:
            k = int(p.argmax())
            titles.append(f"{classes[k]} ({p[k]:.0%})")
        else:
            share = torch.bincount(p.argmax(0).flatten(), minlength=len(classes)).float() / p[0].numel()
            k = int(share.argmax())
            titles.append(f"{classes[k]} ({share[k]:.0%} of pixels)")
    return titles
