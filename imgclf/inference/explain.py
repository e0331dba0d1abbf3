"""Grad-CAM: where in the image the evidence for a class is, as a heatmap and an overlay PNG.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a late feature map by the mean gradient
of the class's logit over that map, sums the weighted channels and keeps the positive part: the
regions whose features raise the class's score. Here it runs on the model exactly as
:class:`~imgclf.inference.predict.Predictor` loads it from ``model.ckpt`` (eval mode, frozen
weights), on any device, always in fp32 without autocast (the predictor's bf16 is for speed;
gradients of bf16 maps are coarse), with gradients enabled only inside :func:`grad_cam` and its
hook attached only for that call, so normal inference neither slows down nor changes.

Own code on torch hooks rather than the ``grad-cam`` package (pytorch-grad-cam): it is ~60 lines
here, while that package pulls ``opencv-python`` (the GUI build, which needs libGL in the slim
server image), ``ttach`` (unreleased since 2020), ``scikit-learn``, ``matplotlib`` and ``tqdm``,
runs the backward pass through the whole network with parameter gradients, and still needs a
hand-written ``reshape_transform`` for vision transformers. The hook here cuts the graph at the
target layer (its output becomes a leaf), so only the head's side of the network is
differentiated, and no parameter ever gets a ``.grad``.

The target layer is the backbone description's ``cam_layer`` (``conf/model/backbone/*.yaml``,
recorded in every model file), a module name inside the backbone:

- convolutional networks: the last feature map before global pooling (Inception v3's
  ``Mixed_7c``, ResNet-50's ``layer4``, the ``features`` trunk of EfficientNetV2, MobileNetV3 and
  ConvNeXt, EfficientNet-Lite0's ``bn2`` after its 1x1 head conv); its resolution is the image
  size / 32 (7x7 at 224 px), so heatmaps are coarse by nature;
- vision transformers: the tokens that enter the last block's attention (torchvision ViT's
  ``encoder_layer_11.ln_1``, timm's ``blocks.N.norm1``), the patch tokens reshaped to their grid.
  Not the last block's output: its patch tokens never reach a class-token head (only the class
  token does), so their gradient is zero; the attention of the last block is where the class
  token reads them;
- timm's zoo (``cam_layer: auto``): read from the network's own ``feature_info`` (its last feature
  map), or that block's ``norm1`` when the block is a transformer's
  (:func:`imgclf.models.timm_backbones.cam_layer_rule`).

A map is [N, C, h, w] (channels first) or tokens [N, T, D] whose last h*h are the patches on a
square grid (the class and register tokens before them). Other layouts (Swin's channels-last
maps) are errors that say to name another layer with ``model.backbone.cam_layer=``.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from imgclf.errors import ImgclfError
from imgclf.models.classifier import ImageClassifier

# how strongly the hottest pixel is tinted; pixels without evidence keep the photo as it is
OVERLAY_OPACITY = 0.6
COLORMAP = "jet"


def target_layer(model: ImageClassifier) -> tuple[str, nn.Module]:
    """The backbone's ``cam_layer``: its name and module."""
    name = model.backbone_config.get("cam_layer")
    if not name:
        raise ImgclfError(
            f"the model's {model.backbone_config['name']} description names no cam_layer (a model "
            "file written before Grad-CAM); train it again to explain its answers"
        )
    try:
        return str(name), model.backbone.get_submodule(str(name))
    except AttributeError:
        raise ImgclfError(
            f"model.backbone.cam_layer={name!r} is not a module of {model.backbone_config['name']}; "
            "name one of its feature maps (print(model.backbone) lists them)"
        ) from None


def _spatial(activation: torch.Tensor, layer: str) -> torch.Tensor:
    """The feature map as [N, C, h, w], whatever its layout."""
    if activation.dim() == 4:
        return activation
    if activation.dim() == 3:
        tokens = activation.shape[1]
        # the patches are the last side*side tokens: the class (and register) tokens come first,
        # fewer of them than a row of patches
        side = math.isqrt(tokens)
        if side < 1 or tokens - side * side > 2 * side:
            raise ImgclfError(f"cam_layer={layer!r}: {tokens} tokens are not a square grid of patches")
        patches = activation[:, tokens - side * side :]
        return patches.transpose(1, 2).unflatten(2, (side, side))
    raise ImgclfError(
        f"cam_layer={layer!r} gives a {activation.dim()}-D output {tuple(activation.shape)}, not a map "
        "[N, C, h, w] or tokens [N, T, D]; name another layer with model.backbone.cam_layer="
    )


def grad_cam(
    model: ImageClassifier, images: torch.Tensor, classes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps [N, H, W] in [0, 1] at the images' size, and the classes [N] they explain.

    ``images``: normalised [N, 3, H, W] as the predictor's transform makes them; ``classes``:
    one class index per image, by default the top-scoring one.
    """
    name, layer = target_layer(model)
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        # A fresh leaf: the backward pass stops here, below it nothing is differentiated.
        leaf = output.detach().float().requires_grad_()
        captured.append(leaf)
        return leaf

    handle = layer.register_forward_hook(keep)
    try:
        # inference_mode(False): a caller's inference mode would make every tensor unusable for
        # autograd; autocast off: fp32 whatever precision the predictor runs in
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            batch = images.to(device, torch.float32).clone()
            # backbone and head directly: ImageClassifier.features runs a frozen backbone without
            # gradients
            logits = model.head(model.backbone(batch))
            chosen = logits.argmax(1) if classes is None else classes.to(device)
            score = logits.gather(1, chosen[:, None]).sum()
            (gradient,) = torch.autograd.grad(score, captured[-1])
            activation, gradient = _spatial(captured[-1].detach(), name), _spatial(gradient, name)
    finally:
        handle.remove()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)
    peak = cam.amax(dim=(2, 3), keepdim=True)
    # no positive evidence anywhere: an empty heatmap (a 1x1 map, at a tiny image size, is uniform)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    return cam[:, 0].cpu(), chosen.cpu()


def crop_box(size: tuple[int, int], preprocessing: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """Where the model's input (the short side resized, then the centre crop) lies in an image of
    ``size`` (width, height): (left, top, right, bottom) in its pixels."""
    width, height = size
    scale = float(preprocessing["resize"]) / min(width, height)
    side = float(preprocessing["crop"]) / scale
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def overlay(image: Image.Image, heatmap: torch.Tensor, preprocessing: Mapping[str, Any]) -> Image.Image:
    """``image`` (RGB, any size) with ``heatmap`` (the model input's [crop, crop]) painted over the
    region the model saw, at the image's own size; the rest of the image is left as it is."""
    from matplotlib import colormaps  # imported on first use: the server rarely needs it

    left, top, right, bottom = crop_box(image.size, preprocessing)
    box = (round(left), round(top))
    region = (max(1, round(right - left)), max(1, round(bottom - top)))
    heat = Image.fromarray(heatmap.numpy().astype(np.float32), mode="F").resize(
        region, Image.Resampling.BILINEAR
    )
    canvas = Image.new("F", image.size, 0.0)
    canvas.paste(heat, box)
    strength = np.clip(np.asarray(canvas), 0.0, 1.0)[..., None]
    colours = colormaps[COLORMAP](strength[..., 0])[..., :3] * 255.0
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    alpha = OVERLAY_OPACITY * strength
    blended = photo * (1 - alpha) + colours * alpha
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8), mode="RGB")


def explain(
    model: ImageClassifier,
    transform: Callable[[Image.Image], torch.Tensor],
    preprocessing: Mapping[str, Any],
    images: Sequence[Image.Image],
    classes: Sequence[int] | None = None,
    batch_size: int = 8,
) -> list[tuple[int, Image.Image]]:
    """(the class explained, the overlay at the image's size) for each RGB image, in batches.

    ``transform`` and ``preprocessing`` are the predictor's; ``classes``: by default the top one.
    """
    explained = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        wanted = None if classes is None else torch.as_tensor(list(classes[start : start + batch_size]))
        heatmaps, chosen = grad_cam(model, torch.stack([transform(image) for image in chunk]), wanted)
        explained += [
            (int(c), overlay(image, heat, preprocessing)) for image, heat, c in zip(chunk, heatmaps, chosen)
        ]
    return explained


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
