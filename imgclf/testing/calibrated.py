"""Classifiers with random weights that answer like trained ones, for tests and benchmarks.

Training a network is slow on a CPU and ImageNet weights cannot be had offline. A random network
is no substitute as it is: untrained batch norm (mean 0, variance 1) lets activations grow to
~1e10 and gives every image the same one-hot answer, so that any two runtimes "agree". Here one
pass in training mode over real images sets the batch-norm statistics, and the last layer becomes
a nearest-class-mean classifier of the images' features: the network then tells the
classes apart on images like those it was fitted on, with probabilities that are not all 0 and 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from imgclf.data.images import load_image
from imgclf.data.transforms import eval_transform
from imgclf.models.checkpoint import export_model
from imgclf.models.classifier import ImageClassifier


def folder_images(root: Path, splits: Sequence[str]) -> tuple[list[Image.Image], list[int], list[str]]:
    """The images of ``root/{split}/{class}/`` and their class indices, classes sorted."""
    classes = sorted(d.name for d in (root / splits[0]).iterdir() if d.is_dir())
    images, labels = [], []
    for split in splits:
        for index, name in enumerate(classes):
            for path in sorted((root / split / name).iterdir()):
                images.append(load_image(path))
                labels.append(index)
    return images, labels, classes


@torch.no_grad()
def calibrated_classifier(
    backbone: Mapping[str, Any],
    image_size: int,
    images: Sequence[Image.Image],
    labels: Sequence[int],
    num_classes: int,
    margin: float = 6.0,
    hidden_size: int = 128,
    norm_images: int = 24,
    seed: int = 0,
) -> ImageClassifier:
    """A random ``backbone`` with batch norm measured on ``norm_images`` of ``images`` and a head
    fitted to ``labels``.

    The last layer is a nearest-class-mean classifier on the head's hidden features, scaled so that
    the median image's best class leads the next by ``margin`` logits: it generalises as far as the
    random features allow, rather than memorising tiny differences that no runtime reproduces.
    """
    torch.manual_seed(seed)
    model = ImageClassifier(backbone, num_classes, {"hidden_size": hidden_size}, image_size)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration pass
    transform = eval_transform(model.preprocessing)
    batch = torch.stack([transform(image) for image in images])
    model.train()(batch[torch.randperm(len(batch))[:norm_images]])
    model.eval()
    last = model.head.layers[-1]
    hidden: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _m, inputs, _o: hidden.append(inputs[0]))
    for start in range(0, len(batch), 32):
        model(batch[start : start + 32])
    hook.remove()
    features = torch.cat(hidden)
    targets = torch.tensor(list(labels))
    # Nearest class mean: logit_k = -|f - c_k|^2 / 2 up to a term shared by all classes.
    centroids = torch.stack([features[targets == k].mean(0) for k in range(num_classes)])
    logits = features @ centroids.T - centroids.pow(2).sum(1) / 2
    top2 = logits.topk(2, dim=1).values
    scale = margin / (top2[:, 0] - top2[:, 1]).median()
    last.weight.copy_(scale * centroids)
    last.bias.copy_(-scale * centroids.pow(2).sum(1) / 2)
    return model


def save_classifier(model: ImageClassifier, classes: list[str], path: Path) -> Path:
    """``model`` as a model.ckpt, recorded as a training run would record it."""
    hparams = {
        "backbone": model.backbone_config["name"],
        "image_size": model.image_size,
        "head": dict(model.head_config),
        "note": "random weights, batch norm and last layer calibrated on images (imgclf.testing.calibrated)",
    }
    return export_model(model, classes, path, hparams=hparams, metrics={})
