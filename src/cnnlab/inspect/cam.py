"""Grad-CAM (Selvaraju et al., 2017): where in the image a convolution layer found the evidence
for a class.

    A = the layer's output (N, K, h, w)             alpha_k = mean over (h, w) of dScore/dA_k
    cam = ReLU(sum_k alpha_k * A_k)  (N, h, w)      upsampled to the input, scaled to [0, 1]

A small implementation rather than the `grad-cam` package at run time: that package brings
OpenCV and scikit-learn (over 100 MB) for these few lines. The tests check this one against
`pytorch_grad_cam.GradCAM` on the same models and images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import UsageError


@dataclass
class Cam:
    """Grad-CAM maps of a batch for one class per image."""

    layer: str
    maps: torch.Tensor  # (N, H, W) in [0, 1] at the input's size
    raw: torch.Tensor  # (N, h, w) ReLU(sum_k alpha_k A_k) at the layer's size, unscaled
    classes: torch.Tensor  # (N,) the class each map explains
    probabilities: torch.Tensor  # (N, classes) the model's softmax for each image

    @property
    def empty(self) -> torch.Tensor:
        """(N,) True where a map holds no positive evidence: every weighted sum is <= 0, the ReLU leaves
        nothing, and the map is all 0 (a blank picture, not a faint one)."""
        return self.raw.flatten(1).amax(1) <= 0


def grad_cam(model: nn.Module, x: torch.Tensor, layer: str | None = None,
             target: int | torch.Tensor | None = None) -> Cam:
    """Grad-CAM of `model` for a normalized batch x (N, C, H, W).

    layer: the module whose output is explained. None takes the last module to give feature maps
    larger than 1x1: the last convolution's output after its pooling and ReLU, where Grad-CAM is
    meant to look (`layer4` in a ResNet, the last ReLU in seed-cnn). A module called more than
    once (LargeNet's `pool`) is explained at its last call.
    target: the class to explain, one for all images or one per image; None explains the
    predicted class of each image. The model is used in eval mode and restored after.
    """
    modules = dict(model.named_modules())
    if layer is not None and (layer == "" or layer not in modules):
        raise UsageError(f"the model has no layer {layer!r}; `cnnlab summary` lists the layer names")
    saved: list[tuple[str, torch.Tensor]] = []  # (name, output) in the order the modules finish

    def keep(name: str):
        def hook(_module: nn.Module, _args: tuple, output: object) -> object:
            # A later in-place op (ReLU(inplace=True)) must not overwrite what is kept: the model goes on
            # with a copy. Of a tuple output, the first element, as the summary shows it.
            if isinstance(output, torch.Tensor):
                saved.append((name, output))
                return output.clone()
            if type(output) is tuple and output and isinstance(output[0], torch.Tensor):
                saved.append((name, output[0]))
                return (output[0].clone(), *output[1:])
            return None
        return hook

    watched = [layer] if layer is not None else [name for name in modules if name]
    handles = [modules[name].register_forward_hook(keep(name)) for name in watched]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # The input asks for gradients so that a frozen layer's output still has them.
            logits = model(x.detach().requires_grad_(True)).float()  # (N, classes)
            if target is None:
                classes = logits.argmax(1)
            else:
                classes = torch.as_tensor(target, device=logits.device).expand(len(x)).long()
            score = logits.gather(1, classes[:, None]).sum()  # each image's score adds only to its own gradient
            layer, activation = _explained(saved, layer)  # (N, K, h, w)
            (gradient,) = torch.autograd.grad(score, activation)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # (N, K, 1, 1): alpha_k
    raw = F.relu((weights * activation).sum(1)).detach()  # (N, h, w)
    up = F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]  # (N, H, W)
    low = up.amin(dim=(1, 2), keepdim=True)
    span = up.amax(dim=(1, 2), keepdim=True) - low
    maps = torch.where(span > 0, (up - low) / span.clamp_min(1e-12), torch.zeros_like(up))
    return Cam(layer, maps.cpu(), raw.cpu(), classes.detach().cpu(), logits.detach().softmax(1).cpu())


def _explained(saved: list[tuple[str, torch.Tensor]], layer: str | None) -> tuple[str, torch.Tensor]:
    """The (name, output) to explain: the named layer's last call, or the last feature maps beyond 1x1."""
    if layer is None:
        spatial = [(name, a) for name, a in saved if a.dim() == 4 and a.shape[2] * a.shape[3] > 1]
        if not spatial:
            raise UsageError("Grad-CAM needs feature maps (N, channels, height, width) larger than 1x1, and no "
                             "layer of this model gives them")
        return spatial[-1]
    if not saved:
        raise UsageError(f"layer {layer!r} gives no tensor in the model's forward pass (it is not called, or its "
                         "output is not a tensor), so Grad-CAM cannot look at it")
    activation = saved[-1][1]
    if activation.dim() != 4:
        raise UsageError(
            f"Grad-CAM needs a layer with feature maps (N, channels, height, width); {layer!r} gives "
            f"{tuple(activation.shape)}: choose a convolution layer"
        )
    return layer, activation
