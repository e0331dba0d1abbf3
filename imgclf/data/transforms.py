"""Every pixel pipeline, built from the ``preprocessing`` the model carries (torchvision v2).

Training, the feature store, evaluation, test-time augmentation, the CLI, the server and the review
call these functions with the same ``preprocessing`` dict (resize, crop, mean, std,
interpolation), so they see the same pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from imgclf.errors import ImgclfError

TTA_VIEWS = 10  # five crops (corners and centre), each also mirrored


def _resize(preprocessing: Mapping[str, Any]) -> list[v2.Transform]:
    interpolation = InterpolationMode(preprocessing.get("interpolation", "bilinear"))
    return [
        v2.ToImage(),
        v2.Resize(int(preprocessing["resize"]), interpolation=interpolation, antialias=True),
    ]


def _normalize(preprocessing: Mapping[str, Any]) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(preprocessing["mean"]), std=list(preprocessing["std"])),
        ]
    )


def eval_transform(preprocessing: Mapping[str, Any]) -> v2.Compose:
    """PIL RGB image -> normalised float tensor [3, crop, crop]."""
    return v2.Compose(
        _resize(preprocessing) + [v2.CenterCrop(int(preprocessing["crop"])), _normalize(preprocessing)]
    )


def augmentation(
    rotation: float, translate: float, shear: float, zoom: Sequence[float], hflip: bool, vflip: bool
) -> list[v2.Transform]:
    """The original tool's Keras augmentation: rotation, shifts, shear, zoom, flips."""
    zoom_low, zoom_high = zoom
    # Keras zooms *in* for factors below 1, torchvision scales *up* above 1: invert the range.
    steps: list[v2.Transform] = [
        v2.RandomAffine(
            degrees=float(rotation),
            translate=(float(translate), float(translate)),
            shear=float(shear),
            scale=(1.0 / float(zoom_high), 1.0 / float(zoom_low)),
        )
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    return steps


PRESETS = ("original", "trivial", "randaugment")


def augment_preset(augment: bool | str) -> str | None:
    """``data.augment`` as a preset name: true is the original tool's geometric set, false (or
    ``none``) no augmentation."""
    if augment is True:
        return "original"
    if augment is False or augment in (None, "none"):
        return None
    if augment not in PRESETS:
        raise ImgclfError(f"data.augment={augment!r}: use {', '.join(PRESETS)}, true (original) or false")
    return str(augment)


def preset_steps(augment: Mapping[str, Any]) -> list[v2.Transform]:
    """The steps of an augmentation (``{"preset": name, ...}``; without a preset, the original's
    parameters): the original's rotations, shifts, shear, zoom and flips, or torchvision's
    TrivialAugment / RandAugment (colour and geometry, one or two operations per image) with the
    horizontal flip photos of objects take."""
    settings = dict(augment)
    preset = settings.pop("preset", "original")
    if preset == "original":
        return augmentation(**settings)
    policy = v2.TrivialAugmentWide() if preset == "trivial" else v2.RandAugment()
    return [policy, v2.RandomHorizontalFlip()]


def train_transform(preprocessing: Mapping[str, Any], augment: Mapping[str, Any] | None) -> v2.Compose:
    """``eval_transform`` with the augmentation (``None``: none) between crop and normalisation."""
    middle = preset_steps(augment) if augment is not None else []
    return v2.Compose(
        _resize(preprocessing)
        + [v2.CenterCrop(int(preprocessing["crop"]))]
        + middle
        + [_normalize(preprocessing)]
    )


class TenCropViews:
    """PIL image -> [TTA_VIEWS, 3, crop, crop]: the five crops of the resized image and their mirrors.

    Same resize, crop size and normalisation as :func:`eval_transform` (its centre crop is one of
    the views), so that only the position and mirroring differ.
    """

    def __init__(self, preprocessing: Mapping[str, Any]) -> None:
        self.resize = v2.Compose(_resize(preprocessing))
        self.crops = v2.TenCrop(int(preprocessing["crop"]))
        self.normalize = _normalize(preprocessing)

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.stack([self.normalize(view) for view in self.crops(self.resize(image))])
