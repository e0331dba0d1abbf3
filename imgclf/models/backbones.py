"""Backbones: torchvision and timm networks that end at their pooled features, and their pixels.

A backbone is described by a plain mapping (``conf/model/backbone/NAME.yaml``, stored again in
every model file so that a model rebuilds from its file alone):

- ``name``: the torchvision builder (``torchvision.models.get_model_builder``);
- ``weights``: the ImageNet weights enum (``torchvision.models.get_weight``), whose metadata is the
  one source of the preprocessing (resize, crop, mean, std, interpolation) and of the published
  accuracy;
- ``feature_dim``: the width of the pooled features the head reads;
- ``classifier``: the ImageNet classifier modules, replaced by ``Identity`` so that the network
  ends at its pooled features;
- ``fine_tune_blocks``: the top blocks that staged fine-tuning unfreezes (the original tool's
  "layer 279 onwards" of Inception v3 is ``Mixed_7a`` to ``Mixed_7c``);
- ``freeze_norm``: whether BatchNorm layers keep their ImageNet statistics in every stage;
- ``cam_layer``: the module whose output Grad-CAM weighs (:mod:`imgclf.inference.explain`): the
  last feature map before pooling, or a vision transformer's tokens entering its last block;
- ``kwargs``: builder arguments; ``fixed_input_size``: the network is built for one input size
  (a vision transformer's position embeddings), pretrained ones are interpolated to it.

``library: timm`` marks a timm model (:mod:`imgclf.models.timm_backbones`: any of timm's zoo, and
EfficientNet-Lite0 with ImageNet weights that install from the package index); without it a
backbone is torchvision's. Every function here answers for both.

Nothing here imports Lightning: the review tool and the server use it too.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import get_model_builder, get_weight
from torchvision.models.vision_transformer import interpolate_embeddings

from imgclf.errors import ImgclfError
from imgclf.io import atomic_open
from imgclf.models import timm_backbones

log = logging.getLogger(__name__)

SMALLEST_IMAGE = 32  # below this the feature maps of every network here collapse


def weights_enum(backbone: Mapping[str, Any]) -> Any:
    try:
        return get_weight(str(backbone["weights"]))
    except (ValueError, KeyError, AttributeError):
        raise ImgclfError(
            f"model.backbone.weights={backbone.get('weights')!r} is not a torchvision weights name "
            "such as ResNet50_Weights.IMAGENET1K_V2"
        ) from None


def smallest_image(backbone: Mapping[str, Any]) -> int:
    if backbone.get("min_image_size"):
        return int(backbone["min_image_size"])
    if timm_backbones.is_timm(backbone):
        least = timm_backbones.pretrained_cfg(backbone).min_input_size
        return max(SMALLEST_IMAGE, int(least[-1]) if least else 0)
    return max(SMALLEST_IMAGE, int(weights_enum(backbone).meta.get("min_size", (0, 0))[0]))


def default_image_size(backbone: Mapping[str, Any]) -> int:
    """The crop the weights were evaluated at (299 for Inception v3, 224 for most)."""
    if timm_backbones.is_timm(backbone):
        return timm_backbones.default_image_size(backbone)
    return int(weights_enum(backbone).transforms().crop_size[0])


def check_image_size(backbone: Mapping[str, Any], image_size: int) -> None:
    name = backbone["name"]
    low = smallest_image(backbone)
    if image_size < low:
        raise ImgclfError(f"data.image_size={image_size} is too small for {name}; use at least {low}")
    multiple = int(backbone.get("image_size_multiple") or 1)
    if image_size % multiple:
        raise ImgclfError(
            f"data.image_size={image_size}: {name} needs a multiple of {multiple}, e.g. "
            f"{image_size // multiple * multiple or multiple}"
        )


def preprocessing(backbone: Mapping[str, Any], image_size: int | None = None) -> dict[str, Any]:
    """Resize, crop and normalisation from the weights' own metadata, scaled to ``image_size``.

    torchvision's weights transforms, or timm's ``pretrained_cfg``; ``image_size=None`` keeps the
    weights' own crop.
    """
    if timm_backbones.is_timm(backbone):
        return timm_backbones.preprocessing(backbone, image_size)
    reference = weights_enum(backbone).transforms()
    crop = int(image_size or reference.crop_size[0])
    ratio = reference.resize_size[0] / reference.crop_size[0]
    return {
        "resize": int(round(crop * ratio)),
        "crop": crop,
        "mean": [float(m) for m in reference.mean],
        "std": [float(s) for s in reference.std],
        "interpolation": reference.interpolation.value,
    }


def build_backbone(
    backbone: Mapping[str, Any], image_size: int, device: str | torch.device = "cpu"
) -> nn.Module:
    """The network of ``backbone`` up to its pooled features, randomly initialised on ``device``.

    On the ``meta`` device nothing is allocated or initialised: the caller loads a state dict
    with ``assign=True`` (a saved model, or ImageNet weights).
    """
    if timm_backbones.is_timm(backbone):
        return timm_backbones.build(backbone, image_size, device)
    try:
        builder = get_model_builder(str(backbone["name"]))
    except ValueError:
        raise ImgclfError(f"model.backbone.name={backbone['name']!r} is not a torchvision model") from None
    kwargs = dict(backbone.get("kwargs") or {})
    if backbone.get("fixed_input_size"):
        kwargs["image_size"] = int(image_size)
    with torch.device(device):
        network = builder(weights=None, **kwargs)
    for name in backbone.get("classifier") or []:
        parent, _, child = str(name).rpartition(".")
        setattr(network.get_submodule(parent), child, nn.Identity())
    return network


# torchvision's weight files carry the start of their sha256 in the name: resnet50-11ad3fa6.pth
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def resolve(backbone: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """The description with every ``auto`` value read from the network, as the model file keeps it."""
    if timm_backbones.is_timm(backbone):
        return timm_backbones.resolve(backbone, image_size)
    return dict(backbone)


def weights_file(backbone: Mapping[str, Any]) -> Path:
    """Where the weights file is, or would be cached: torchvision's
    ``$TORCH_HOME/hub/checkpoints/<file>``, the hub's cache or the package that ships it."""
    if timm_backbones.is_timm(backbone):
        return timm_backbones.weights_file(backbone) or Path(os.devnull, "not-cached")
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_enum(backbone).url)


def missing_weights_message(backbone: Mapping[str, Any], reason: str) -> str:
    if timm_backbones.is_timm(backbone):
        return timm_backbones.missing_weights_message(backbone, reason)
    target = weights_file(backbone)
    return (
        f"ImageNet weights for {backbone['name']} are not available ({reason}). Either put "
        f"torchvision's file {target.name} in {target.parent} (set TORCH_HOME to use another "
        "cache), pass model.weights_path=/path/to/state_dict.pth, use the ImageNet weights "
        "installed with imgclf (model/backbone=efficientnet_lite0), or train from scratch with "
        "model.pretrained=false."
    )


def download(url: str, target: Path, timeout_s: float = 20.0) -> Path:
    """Stream ``url`` into ``target`` atomically, checking the hash its file name announces."""
    import hashlib

    import httpx

    digest = hashlib.sha256()
    with atomic_open(target, "wb") as handle:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                handle.write(chunk)
        expected = _HASH_IN_NAME.search(os.path.basename(url))
        if expected and not digest.hexdigest().startswith(expected.group(1)):
            raise OSError(f"the download's sha256 does not start with {expected.group(1)}")
    return target


def fetch_weights(backbone: Mapping[str, Any], allow_download: bool = True) -> Path:
    """The weights file in the torch cache, downloaded there first when allowed."""
    if timm_backbones.is_timm(backbone):
        return timm_backbones.fetch_weights(backbone, allow_download)
    cached = weights_file(backbone)
    if cached.is_file():
        return cached
    if not allow_download:
        raise ImgclfError(missing_weights_message(backbone, f"{cached} does not exist and downloads are off"))
    log.info("Downloading %s ImageNet weights to %s", backbone["name"], cached)
    try:
        return download(weights_enum(backbone).url, cached)
    except Exception as exc:  # no network, proxy, disk, hash: all mean the same to the user
        raise ImgclfError(missing_weights_message(backbone, f"download failed: {exc}")) from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ImgclfError(f"model.weights_path={path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise ImgclfError(f"model.weights_path={path}: cannot be read as a state dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImgclfError(
            f"{path} is not a state dict of tensors; save one with torch.save(model.state_dict(), path)"
        )
    return state


def load_pretrained(network: nn.Module, backbone: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Load an ImageNet state dict in torchvision's layout into ``network`` (built on ``meta``).

    Entries for modules this network does not have (the ImageNet classifier, Inception's
    auxiliary branch) are ignored; anything else that does not fit is an error.
    """
    state = read_state_dict(path)
    ours = network.state_dict(keep_vars=True)
    if backbone.get("fixed_input_size") and "encoder.pos_embedding" in state:
        wanted = ours["encoder.pos_embedding"].shape
        if state["encoder.pos_embedding"].shape != wanted:
            state = interpolate_embeddings(network.image_size, network.patch_size, state)
    replaced = tuple(f"{name}." for name in backbone.get("classifier") or [])
    present = {key.split(".")[0] for key in ours}
    unexpected = [
        k for k in state if k not in ours and k.split(".")[0] in present and not k.startswith(replaced)
    ]
    missing = [k for k in ours if k not in state]
    if missing or unexpected:
        raise ImgclfError(
            f"{path} does not match torchvision's {backbone['name']}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    network.load_state_dict({k: v for k, v in state.items() if k in ours}, assign=True)


def pretrained_backbone(
    backbone: Mapping[str, Any],
    image_size: int,
    weights_path: str | os.PathLike | None = None,
    allow_download: bool = True,
) -> nn.Module:
    """The backbone with ImageNet weights: from ``weights_path``, or the torch cache."""
    source = weights_path or fetch_weights(backbone, allow_download)
    if timm_backbones.is_timm(backbone):
        return timm_backbones.pretrained(backbone, image_size, source)
    network = build_backbone(backbone, image_size, device="meta")
    load_pretrained(network, backbone, source)
    return network
