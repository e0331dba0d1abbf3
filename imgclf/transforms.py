"""Pixel pipelines built from the preprocessing stored with the model.

Training, evaluation, the CLI and the server all call these two functions with the same
``preprocessing`` dict (resize, crop, mean, std, interpolation), so they see the same pixels.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

# The original tool's Keras ImageDataGenerator settings.
DEFAULT_AUGMENTATION = {
    "rotation": 180.0,
    "translate": 0.1,
    "shear": 10.0,
    "zoom": (0.9, 1.5),
    "hflip": True,
    "vflip": True,
}


def _resize_and_crop(preprocessing: Mapping[str, Any]) -> list[v2.Transform]:
    interpolation = InterpolationMode(preprocessing.get("interpolation", "bilinear"))
    return [
        v2.ToImage(),
        v2.Resize(int(preprocessing["resize"]), interpolation=interpolation, antialias=True),
        v2.CenterCrop(int(preprocessing["crop"])),
    ]


def _normalize(preprocessing: Mapping[str, Any]) -> list[v2.Transform]:
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(preprocessing["mean"]), std=list(preprocessing["std"])),
    ]


def eval_transform(preprocessing: Mapping[str, Any]) -> v2.Compose:
    """PIL RGB image -> normalised float tensor [3, crop, crop]."""
    return v2.Compose(_resize_and_crop(preprocessing) + _normalize(preprocessing))


def augmentation(settings: Mapping[str, Any] | None = None) -> list[v2.Transform]:
    """The original's augmentation: rotation, shifts, shear, zoom, flips."""
    cfg = {**DEFAULT_AUGMENTATION, **(settings or {})}
    zoom_low, zoom_high = cfg["zoom"]
    # Keras zooms *in* for factors below 1, torchvision scales *up* above 1: invert the range.
    steps: list[v2.Transform] = [
        v2.RandomAffine(
            degrees=float(cfg["rotation"]),
            translate=(float(cfg["translate"]), float(cfg["translate"])),
            shear=float(cfg["shear"]),
            scale=(1.0 / float(zoom_high), 1.0 / float(zoom_low)),
        )
    ]
    if cfg["hflip"]:
        steps.append(v2.RandomHorizontalFlip())
    if cfg["vflip"]:
        steps.append(v2.RandomVerticalFlip())
    return steps


def train_transform(
    preprocessing: Mapping[str, Any], augment: bool = True, settings: Mapping[str, Any] | None = None
) -> v2.Compose:
    middle = augmentation(settings) if augment else []
    return v2.Compose(_resize_and_crop(preprocessing) + middle + _normalize(preprocessing))
