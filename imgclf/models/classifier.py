"""The classifier: a torchvision or timm backbone ending at its pooled features, then an MLP head.

The model owns its description (as timm's ``pretrained_cfg``): ``backbone`` (the mapping of
:mod:`imgclf.models.backbones`), ``image_size``, ``preprocessing`` and the head's shape, which the data
module, the feature store, the model file, the predictor and the review all read from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from imgclf.errors import ImgclfError
from imgclf.models.backbones import (
    build_backbone,
    check_image_size,
    default_image_size,
    preprocessing,
    pretrained_backbone,
    resolve,
)

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}
HEAD_DEFAULTS = {"hidden_size": 1024, "num_layers": 1, "dropout": 0.0, "activation": "relu"}


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
                f"model.head.activation={activation!r} is unknown; "
                f"use one of {', '.join(sorted(ACTIVATIONS))}"
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


class ImageClassifier(nn.Module):
    """Images [N, 3, H, W] -> backbone -> pooled features [N, D] -> head -> logits [N, K].

    ``forward`` also takes pooled features (2-D) directly: the feature store's batches.
    """

    def __init__(
        self,
        backbone: Mapping[str, Any],
        num_classes: int,
        head: Mapping[str, Any] | None = None,
        image_size: int | None = None,
        network: nn.Module | None = None,
    ) -> None:
        """``image_size=None``: the backbone weights' own."""
        super().__init__()
        self.image_size = int(image_size or default_image_size(backbone))
        check_image_size(backbone, self.image_size)
        backbone = resolve(backbone, self.image_size)
        self.backbone_config = backbone
        self.head_config = {**HEAD_DEFAULTS, **dict(head or {})}
        self.num_classes = int(num_classes)
        self.preprocessing = preprocessing(backbone, self.image_size)
        self.backbone = network if network is not None else build_backbone(backbone, self.image_size)
        self.head = MLPHead(int(backbone["feature_dim"]), self.num_classes, **self.head_config)

    @classmethod
    def pretrained(
        cls,
        backbone: Mapping[str, Any],
        num_classes: int,
        head: Mapping[str, Any] | None = None,
        image_size: int | None = None,
        weights_path: str | os.PathLike | None = None,
        allow_download: bool = True,
    ) -> ImageClassifier:
        """With ImageNet weights: from ``weights_path``, or the torch cache (downloaded when allowed)."""
        size = int(image_size or default_image_size(backbone))
        check_image_size(backbone, size)
        network = pretrained_backbone(backbone, size, weights_path, allow_download)
        return cls(backbone, num_classes, head, size, network=network)

    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.backbone_frozen():
            with torch.no_grad():
                return self.backbone(images)
        return self.backbone(images)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = inputs if inputs.dim() == 2 else self.features(inputs)
        return self.head(features)

    def architecture(self) -> dict[str, Any]:
        """Everything needed to rebuild this network, as plain values."""
        return {
            "backbone": dict(self.backbone_config),
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "head": dict(self.head_config),
        }

    @classmethod
    def from_architecture(cls, architecture: Mapping[str, Any]) -> ImageClassifier:
        """An empty network (on the ``meta`` device) of this shape, for ``load_state_dict(assign=True)``."""
        backbone = architecture["backbone"]
        size = int(architecture["image_size"])
        with torch.device("meta"):
            return cls(
                backbone,
                architecture["num_classes"],
                architecture["head"],
                size,
                network=build_backbone(backbone, size, device="meta"),
            )
