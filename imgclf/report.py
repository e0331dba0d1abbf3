"""The evaluation report beyond accuracy: which classes are confused, which images fail worst,
whether the probabilities can be trusted (calibration), and test-time augmentation.

Everything here works on the arrays ``evaluate`` already has (probabilities [N, K], targets
[N]); plots are matplotlib figures written straight to PNG files, without pyplot's global state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from imgclf.io import atomic_open

TTA_VIEWS = 10  # five crops (corners and centre), each also mirrored


def most_confused_pairs(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], top: int = 10
) -> list[dict[str, Any]]:
    """Off-diagonal cells of the confusion matrix, largest first."""
    counts = np.asarray(matrix)
    per_true = counts.sum(axis=1)
    pairs = [
        {
            "true": classes[i],
            "predicted": classes[j],
            "count": int(counts[i, j]),
            "fraction_of_true": float(counts[i, j] / per_true[i]),
        }
        for i in range(len(classes))
        for j in range(len(classes))
        if i != j and counts[i, j] > 0
    ]
    pairs.sort(key=lambda p: (-p["count"], -p["fraction_of_true"], p["true"], p["predicted"]))
    return pairs[:top]


def calibration(probabilities: np.ndarray, targets: np.ndarray, num_bins: int = 15) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins ``(lower, upper]``.

    ECE = sum over bins of (share of images in the bin) x |accuracy - mean confidence|.
    """
    confidences = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, num_bins - 1)
    bins, ece = [], 0.0
    for b in range(num_bins):
        members = which == b
        count = int(members.sum())
        confidence = float(confidences[members].mean()) if count else None
        accuracy = float(correct[members].mean()) if count else None
        if count:
            ece += count / len(targets) * abs(accuracy - confidence)
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": confidence,
                "accuracy": accuracy,
            }
        )
    return {"ece": float(ece), "num_bins": num_bins, "bins": bins}


def top_losses(probabilities: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` images with the highest cross-entropy, worst first."""
    true_probability = probabilities[np.arange(len(targets)), targets]
    losses = -np.log(np.clip(true_probability, 1e-12, 1.0))
    return np.argsort(-losses, kind="stable")[:k]


def top_loss_entries(
    probabilities: np.ndarray,
    targets: np.ndarray,
    paths: Sequence[os.PathLike],
    classes: Sequence[str],
    k: int,
) -> list[dict[str, Any]]:
    entries = []
    for i in top_losses(probabilities, targets, k):
        predicted = int(probabilities[i].argmax())
        p_true = float(probabilities[i, targets[i]])
        entries.append(
            {
                "path": str(paths[i]),
                "true": classes[targets[i]],
                "predicted": classes[predicted],
                "probability": float(probabilities[i, predicted]),
                "true_probability": p_true,
                "loss": float(-math.log(max(p_true, 1e-12))),
            }
        )
    return entries


def _save(figure, path: Path) -> Path:
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    return path


def _plain(text: str) -> str:
    """Class names are folder names: keep matplotlib from reading ``$`` as maths."""
    return text.replace("$", r"\$")


def plot_reliability(result: Mapping[str, Any], path: Path, title: str) -> Path:
    """Accuracy per confidence bin (bars) against the bin's mean confidence (red), and the diagonal."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    width = 1.0 / result["num_bins"]
    filled = [b for b in result["bins"] if b["count"]]
    axes.bar(
        [b["lower"] for b in filled],
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    axes.hlines(
        [b["confidence"] for b in filled],
        [b["lower"] for b in filled],
        [b["upper"] for b in filled],
        colors="tab:red",
        linewidth=2.5,
        label="mean confidence",
    )
    axes.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (top probability)",
        ylabel="accuracy",
        title=f"{_plain(title)}: ECE {result['ece']:.4f}",
    )
    axes.legend(loc="upper left")
    figure.tight_layout()
    return _save(figure, path)


def plot_contact_sheet(entries: Sequence[Mapping[str, Any]], path: Path, thumbnail: int = 160) -> Path:
    """The images of ``entries`` in a grid, each titled true label / predicted label (probability)."""
    from matplotlib.figure import Figure

    from imgclf.images import ImageDecodeError, load_image

    columns = min(4, max(1, len(entries)))
    rows = max(1, math.ceil(len(entries) / columns))
    figure = Figure(figsize=(columns * 2.6, rows * 3.0))
    for number, entry in enumerate(entries, start=1):
        axes = figure.add_subplot(rows, columns, number)
        axes.axis("off")
        try:
            image = load_image(entry["path"])
            image.thumbnail((thumbnail, thumbnail))
            axes.imshow(image)
        except ImageDecodeError:
            axes.text(0.5, 0.5, "cannot decode", ha="center", va="center")
        axes.set_title(
            f"true: {_plain(entry['true'])} (p={entry['true_probability']:.2f})\n"
            f"predicted: {_plain(entry['predicted'])} (p={entry['probability']:.2f})",
            fontsize=8,
            color="darkred" if entry["true"] != entry["predicted"] else "black",
        )
    if not entries:
        figure.text(0.5, 0.5, "no images", ha="center")
    figure.tight_layout()
    return _save(figure, path)


class TenCropViews:
    """PIL image -> [TTA_VIEWS, 3, crop, crop]: the five crops of the resized image and their mirrors.

    Same resize, crop size and normalisation as the model's eval transform (its centre crop is
    one of the views), so that only the position and mirroring differ.
    """

    def __init__(self, preprocessing: Mapping[str, Any]) -> None:
        interpolation = InterpolationMode(preprocessing.get("interpolation", "bilinear"))
        self.resize = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(int(preprocessing["resize"]), interpolation=interpolation, antialias=True),
            ]
        )
        self.crops = v2.TenCrop(int(preprocessing["crop"]))
        self.normalize = v2.Compose(
            [
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(preprocessing["mean"]), std=list(preprocessing["std"])),
            ]
        )

    def __call__(self, image) -> torch.Tensor:
        return torch.stack([self.normalize(view) for view in self.crops(self.resize(image))])


def write_per_class_csv(metrics: Mapping[str, Any], path: Path) -> Path:
    lines = ["class,precision,recall,f1,support"]
    lines += [
        f"{name},{m['precision']:.4f},{m['recall']:.4f},{m['f1']:.4f},{m['support']}"
        for name, m in metrics["per_class"].items()
    ]
    with atomic_open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path
