"""Class activation maps through pytorch-grad-cam: Grad-CAM, Grad-CAM++ and guided Grad-CAM.

One forward and one backward pass of a batch give both Grad-CAM and Grad-CAM++: the library records the target
layer's activations and gradients, and each method's ``get_cam_weights`` weighs the same pair. The maps stay in
the layer's own units (activation × weight, clipped at 0, resized bilinearly to the input) instead of the
library's per-image min-max scaling, so that the windows of a scene blend into one map on one scale; a patch is
scaled for display only when drawn. Guided Grad-CAM multiplies Grad-CAM by guided backpropagation (the input
gradient through ReLUs that pass only positive gradients, the library's ``GuidedBackpropReLUasModule``), summed
over bands as absolute values: a map of the pixels whose values push the class score up. Other activations
(FCN's leaky ReLUs, SiLU) pass the plain gradient.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUasModule
from pytorch_grad_cam.utils.find_layers import replace_all_layer_type_recursive
from torch import nn

from torchbearer.explain.model import ClassScore

#: The methods an explanation may ask for.
METHODS = ("gradcam", "gradcam++", "guided")
_WEIGHTS = {"gradcam": GradCAM.get_cam_weights, "gradcam++": GradCAMPlusPlus.get_cam_weights}


class LayerCAMs(BaseCAM):
    """Grad-CAM and Grad-CAM++ of one layer from one forward and backward pass, in the layer's own units.

    Calling it returns ``B × len(methods) × H × W`` (float32, ≥ 0). The network's parameters are frozen (only
    the gradient of the activations is needed, which saves the weight gradients' share of the backward pass).
    """

    def __init__(self, model: nn.Module, layer: nn.Module, methods: list[str]) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        super().__init__(model, [layer], compute_input_gradient=True)
        self.methods = methods

    def compute_cam_per_layer(self, input_tensor: torch.Tensor, targets: list, eigen_smooth: bool) -> np.ndarray:
        recorded = self.activations_and_grads
        if not recorded.gradients:
            raise RuntimeError("the target layer got no gradient: is the class score computed from it?")
        activations = recorded.activations[0].float().numpy()
        grads = recorded.gradients[0].float().numpy()
        if activations.ndim != 4:
            raise ValueError(f"the target layer gives a {activations.ndim}-D output; a CAM needs a B×C×H×W map")
        maps = []
        for method in self.methods:
            weights = _WEIGHTS[method](self, input_tensor, self.target_layers[0], targets, activations, grads)
            maps.append(np.maximum(np.einsum("bc,bchw->bhw", weights, activations), 0))
        cams = torch.from_numpy(np.stack(maps, axis=1).astype(np.float32))
        size = tuple(input_tensor.shape[-2:])
        return nn.functional.interpolate(cams, size=size, mode="bilinear", align_corners=False).numpy()

    def aggregate_multi_layers(self, cam_per_target_layer: np.ndarray) -> np.ndarray:
        return cam_per_target_layer  # one layer, maps kept in their units


def guided_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ReLUs backpropagate only positive gradients (guided backpropagation)."""
    guided = copy.deepcopy(model)
    replace_all_layer_type_recursive(guided, nn.ReLU, GuidedBackpropReLUasModule())
    for p in guided.parameters():
        p.requires_grad_(False)
    return guided


def guided_gradients(model: nn.Module, x: torch.Tensor, targets: list[ClassScore]) -> torch.Tensor:
    """Guided-backpropagation gradient of each example's class score w.r.t. its input (B × bands × H × W)."""
    x = x.detach().clone().requires_grad_(True)
    output = model(x)
    loss = torch.stack([t(o) for t, o in zip(targets, output, strict=True)]).sum()
    (grad,) = torch.autograd.grad(loss, x)
    return grad


class CamMaker:
    """The asked maps of a batch: ``maker(x, targets) -> B × len(methods) × H × W`` (float32, ≥ 0).

    Args:
        model: the network (eval mode; its parameters get frozen).
        layer: the target layer (a module of ``model``).
        methods: some of :data:`METHODS`, in the order of the output's maps.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, methods: list[str]) -> None:
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"methods {unknown or methods} unknown; choose from {', '.join(METHODS)}")
        self.methods = list(methods)
        # Guided Grad-CAM needs Grad-CAM: computed from the same pass whether asked for or not.
        wanted = {*methods, "gradcam"} if "guided" in methods else set(methods)
        self.cam_methods = [m for m in ("gradcam", "gradcam++") if m in wanted]
        # The guided copy is made before the library hooks the model: a copy would carry its hooks along and
        # keep every batch's activations in a recorder nobody clears.
        self.guided = guided_model(model) if "guided" in methods else None
        self.cams = LayerCAMs(model, layer, self.cam_methods)
        self.last_guided: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, targets: list[ClassScore]) -> np.ndarray:
        with torch.enable_grad():
            maps = dict(zip(self.cam_methods, np.moveaxis(self.cams(x, targets), 1, 0), strict=True))
            if self.guided is not None:
                grads = guided_gradients(self.guided, x.to(self.cams.device), targets)
                self.last_guided = grads.cpu()
                maps["guided"] = grads.abs().sum(dim=1).cpu().numpy() * maps["gradcam"]
        return np.stack([maps[m] for m in self.methods], axis=1).astype(np.float32)

    def close(self) -> None:
        """Remove the library's hooks from the model."""
        self.cams.activations_and_grads.release()


def save_overlay(
    path: Path, image: np.ndarray, bands: list[str], maps: np.ndarray, methods: list[str], valid: np.ndarray,
    title: str,
) -> Path:  # fmt: skip
    """A PNG of the patch's RGB composite with each map laid over it (one panel a method), ``title`` above.

    Args:
        image: the standardised patch (bands × H × W); bands: its band names (for the RGB composite).
        maps: len(methods) × H × W, each scaled to its own 0–1 for display; no-data pixels left uncoloured.
        valid: H × W, where the patch has data.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from torchbearer.ml.plots import rgb_image, save_figure

    rgb = rgb_image(image, bands)
    fig, axes = plt.subplots(1, len(methods) + 1, figsize=(3 * (len(methods) + 1), 3.4), squeeze=False)
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("RGB")
    for ax, method, cam in zip(axes[0, 1:], methods, maps, strict=True):
        top = float(cam[valid].max()) if valid.any() else 0.0
        shown = np.ma.masked_where(~valid, cam / top if top > 0 else cam)
        ax.imshow(rgb)
        ax.imshow(shown, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(method)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
