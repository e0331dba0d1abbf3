"""Inception v3 backbone + MLP head, and where its ImageNet weights come from."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import Inception_V3_Weights, inception_v3

from imgclf.errors import ImgclfError

WEIGHTS = Inception_V3_Weights.IMAGENET1K_V1
FEATURE_DIM = 2048
MIN_IMAGE_SIZE = 75  # Inception v3's smallest input
# The blocks stage 2 unfreezes: the last reduction block and the two top mixed blocks.
TOP_BLOCKS = ("Mixed_7a", "Mixed_7b", "Mixed_7c")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


def preprocessing_for(image_size: int) -> dict[str, Any]:
    """Resize, crop and normalisation from the weights' own transforms, scaled to ``image_size``."""
    if int(image_size) < MIN_IMAGE_SIZE:
        raise ImgclfError(
            f"data.image_size={image_size} is too small for Inception v3; use at least {MIN_IMAGE_SIZE}"
        )
    reference = WEIGHTS.transforms()
    crop = int(image_size)
    ratio = reference.resize_size[0] / reference.crop_size[0]
    return {
        "resize": int(round(crop * ratio)),
        "crop": crop,
        "mean": [float(m) for m in reference.mean],
        "std": [float(s) for s in reference.std],
        "interpolation": reference.interpolation.value,
    }


class MLPHead(nn.Module):
    """``num_layers`` x (Linear -> activation -> Dropout), then Linear to the classes."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_size: int = 1024,
        num_layers: int = 1,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ImgclfError(
                f"model.head.activation={activation!r} is unknown; use one of "
                f"{', '.join(sorted(ACTIVATIONS))}"
            )
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(int(num_layers)):
            layers += [nn.Linear(width, int(hidden_size)), ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = int(hidden_size)
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def build_backbone(init_weights: bool = True) -> nn.Module:
    """Inception v3 returning its 2048 pooled features.

    ``transform_input=True`` always: the ImageNet weights expect it, and a network trained from
    scratch has one architecture whichever way it started, so every checkpoint loads the same way.
    """
    backbone = inception_v3(weights=None, aux_logits=False, transform_input=True, init_weights=init_weights)
    backbone.dropout = nn.Identity()  # the head has its own dropout
    backbone.fc = nn.Identity()
    return backbone


class InceptionClassifier(nn.Module):
    def __init__(
        self, num_classes: int, head: dict[str, Any] | None = None, init_weights: bool = True
    ) -> None:
        super().__init__()
        self.head_config = {"hidden_size": 1024, "num_layers": 1, "dropout": 0.0, "activation": "relu"}
        self.head_config.update(head or {})
        self.backbone = build_backbone(init_weights)
        self.head = MLPHead(FEATURE_DIM, num_classes, **self.head_config)

    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.backbone_frozen():
            with torch.no_grad():
                return self.backbone(images)
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _imagenet_state_dict(state: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImgclfError(
            f"{source} is not a state dict of tensors; save one with torch.save(model.state_dict(), path)"
        )
    # The ImageNet classifier and the auxiliary branch are not part of our backbone.
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load an ImageNet Inception v3 state dict (torchvision's layout) from a local file."""
    path = Path(path)
    if not path.is_file():
        raise ImgclfError(f"model.weights_path={path}: no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise ImgclfError(f"model.weights_path={path}: cannot be read as a state dict ({exc})") from None
    state = _imagenet_state_dict(raw, str(path))
    result = backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ImgclfError(
            f"{path} does not match torchvision's Inception v3: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def cached_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(WEIGHTS.url)


def missing_weights_message(reason: str) -> str:
    return (
        f"ImageNet weights for Inception v3 are not available ({reason}). Either put torchvision's "
        f"file {os.path.basename(WEIGHTS.url)} in {cached_weights_path().parent} (set TORCH_HOME "
        "to use another cache), pass model.weights_path=/path/to/state_dict.pth, or train from "
        "scratch with model.pretrained=false."
    )


def fetch_imagenet_weights(allow_download: bool = True, timeout_s: float = 20.0) -> Path:
    """Path of the ImageNet weights file, downloading it into the torch cache if allowed."""
    cached = cached_weights_path()
    if cached.is_file():
        return cached
    if not allow_download:
        raise ImgclfError(missing_weights_message(f"{cached} does not exist and downloads are off"))
    cached.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        torch.hub.download_url_to_file(WEIGHTS.url, str(cached), progress=True)
    except Exception as exc:  # no network, proxy, disk: all mean the same to the user
        raise ImgclfError(missing_weights_message(f"download failed: {exc}")) from None
    finally:
        socket.setdefaulttimeout(previous)
    return cached


def imagenet_weights_available() -> bool:
    return cached_weights_path().is_file()


def build_classifier(
    num_classes: int,
    head: dict[str, Any] | None = None,
    pretrained: bool = True,
    weights_path: str | None = None,
    allow_download: bool = True,
) -> InceptionClassifier:
    # Random initialisation is wasted on weights about to be overwritten (and takes seconds).
    model = InceptionClassifier(num_classes, head, init_weights=not pretrained)
    if pretrained:
        source = weights_path or fetch_imagenet_weights(allow_download)
        load_backbone_weights(model.backbone, source)
    return model
