"""What an evaluation measures, from the probabilities [N, K] and targets [N] it already has.

Accuracy, per-class precision, recall and F1, their macro and weighted averages, the confusion
matrix and the expected calibration error come from torchmetrics; the reliability bins behind the
calibration plot, the most confused pairs and the worst images are read off the same arrays.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

PER_CLASS = (("precision", MulticlassPrecision), ("recall", MulticlassRecall), ("f1", MulticlassF1Score))
CONFIDENCE = 0.95


def wilson_interval(correct: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / total``: how sure an accuracy measured
    on ``total`` images is. Unlike the normal approximation it stays inside [0, 1] and is honest at
    0 or ``total`` correct, which small validation sets often give. (0, 1) for no images."""
    if total <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def interval(correct: int, total: int, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """:func:`wilson_interval` as metrics.json records it."""
    low, high = wilson_interval(correct, total, confidence)
    return {"low": low, "high": high, "confidence": confidence, "method": "wilson", "n": total}


def describe_interval(value: float, bounds: dict[str, Any], note: str = "") -> str:
    """``0.9533 (95% interval 0.8952-0.9799, 107 images)``, ``note`` after the images (``; ...``)."""
    return (
        f"{value:.4f} ({bounds['confidence']:.0%} interval {bounds['low']:.4f}-{bounds['high']:.4f}, "
        f"{bounds['n']} images{'; ' + note if note else ''})"
    )


def classification_metrics(
    probabilities: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], calibration_bins: int = 15
) -> dict[str, Any]:
    k = len(classes)
    predictions = probabilities.argmax(dim=1)

    def score(metric: type, average: str | None) -> torch.Tensor:
        return metric(k, average=average)(predictions, targets)

    per_class = {name: score(metric, None) for name, metric in PER_CLASS}
    support = torch.bincount(targets, minlength=k)
    averages = {
        average: {name: float(score(metric, average)) for name, metric in PER_CLASS}
        for average in ("macro", "weighted")
    }
    ece = MulticlassCalibrationError(k, n_bins=calibration_bins, norm="l1")(probabilities, targets)
    hits = torch.bincount(targets[predictions == targets], minlength=k)
    return {
        "accuracy": float(MulticlassAccuracy(k, average="micro")(predictions, targets)),
        "accuracy_interval": interval(int(hits.sum()), len(targets)),
        "num_images": len(targets),
        "classes": list(classes),
        "per_class": {
            name: {
                "precision": float(per_class["precision"][i]),
                "recall": float(per_class["recall"][i]),
                "f1": float(per_class["f1"][i]),
                "support": int(support[i]),
                "recall_interval": interval(int(hits[i]), int(support[i])),
            }
            for i, name in enumerate(classes)
        },
        "averages": averages,
        "confusion_matrix": MulticlassConfusionMatrix(k)(predictions, targets).tolist(),
        "calibration": {"ece": float(ece), **reliability_bins(probabilities, targets, calibration_bins)},
    }


def reliability_bins(probabilities: torch.Tensor, targets: torch.Tensor, num_bins: int) -> dict[str, Any]:
    """Accuracy and mean confidence per equal-width confidence bin ``(lower, upper]``."""
    confidences, predictions = probabilities.max(dim=1)
    correct = (predictions == targets).float()
    edges = torch.linspace(0.0, 1.0, num_bins + 1)
    which = (torch.bucketize(confidences, edges, right=False) - 1).clamp(0, num_bins - 1)
    bins = []
    for b in range(num_bins):
        members = which == b
        count = int(members.sum())
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidences[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return {"num_bins": num_bins, "bins": bins}


def most_confused_pairs(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], top: int = 10
) -> list[dict[str, Any]]:
    """Off-diagonal cells of the confusion matrix, largest first."""
    counts = torch.as_tensor(matrix)
    per_true = counts.sum(dim=1)
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


def top_loss_entries(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    paths: Sequence[os.PathLike],
    classes: Sequence[str],
    k: int,
) -> list[dict[str, Any]]:
    """The ``k`` images with the highest cross-entropy, worst first."""
    true_probability = probabilities[torch.arange(len(targets)), targets]
    losses = -torch.log(true_probability.clamp(1e-12, 1.0))
    entries = []
    for i in torch.argsort(-losses, stable=True)[:k].tolist():
        predicted = int(probabilities[i].argmax())
        p_true = float(true_probability[i])
        entries.append(
            {
                "path": str(paths[i]),
                "true": classes[int(targets[i])],
                "predicted": classes[predicted],
                "probability": float(probabilities[i, predicted]),
                "true_probability": p_true,
                "loss": float(-math.log(max(p_true, 1e-12))),
            }
        )
    return entries
