"""``eval.py curve=true``: how accuracy grows with images per class, from the model's own features.

The saved model's frozen backbone turns every train and evaluated image into its pooled features
once (the plain view); a linear classifier on them, refitted on 25, 50, 75 and 100 % of each class's
train images (seeded, the same images at every fraction and the smaller fractions inside the
larger), is scored per class on the evaluated split. Refitting the model's own head would need its
training run; the linear fit takes seconds and answers the same question: which classes still gain
from more images, and roughly how many they would need (the slope of recall against images).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.folders import ImageDataset, SplitListing, labelled_for_model
from imgclf.errors import ImgclfError
from imgclf.inference.eval_report import save_figure
from imgclf.inference.metrics import interval
from imgclf.inference.predict import PredictorBase, backbone_forward, run_network
from imgclf.models.classifier import ImageClassifier

log = logging.getLogger(__name__)

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def features(
    network: ImageClassifier,
    predictor: PredictorBase,
    samples: list[tuple[Path, int]],
    batch_size: int,
    num_workers: int,
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The network's pooled backbone features of ``samples`` through the predictor's pixels, in the
    predictor's precision (an ONNX predictor has no backbone of its own: ``network`` is the
    model.ckpt behind it, run in fp32)."""
    precision = predictor.precision if predictor.runtime == "torch" else "32-true"
    forward = backbone_forward(network.backbone, precision, next(network.parameters()).device)
    dataset = ImageDataset(samples, predictor.transform, on_error="mark")
    outputs, targets, _ = run_network(forward, dataset, batch_size, num_workers, what)
    return outputs.float().numpy(), targets.numpy()


def nested_subsets(targets: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Indices of ``fraction`` of each class (at least one image), each subset inside the next."""
    rng = np.random.default_rng(seed)
    order = {c: rng.permutation(np.flatnonzero(targets == c)) for c in np.unique(targets)}
    return [
        np.sort(np.concatenate([idx[: max(1, round(fraction * len(idx)))] for idx in order.values()]))
        for fraction in fractions
    ]


def learning_curve(
    network: ImageClassifier,
    predictor: PredictorBase,
    train: SplitListing,
    evaluated: SplitListing,
    batch_size: int,
    num_workers: int,
    seed: int = 0,
    fractions: Sequence[float] = FRACTIONS,
) -> dict[str, Any]:
    """Per-class recall and accuracy (with intervals) against images per class, fraction by fraction."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    classes = predictor.classes
    train_samples = labelled_for_model(train, classes, predictor.source)
    evaluated_samples = labelled_for_model(evaluated, classes, predictor.source)
    train_x, train_y = features(network, predictor, train_samples, batch_size, num_workers, "curve: train")
    test_x, test_y = features(network, predictor, evaluated_samples, batch_size, num_workers, "curve")
    if len(np.unique(train_y)) < 2 or not len(test_y):
        raise ImgclfError("curve=true needs train images of at least two classes and images to evaluate")
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):  # small fits: threads cost more than they give
        for fraction, subset in zip(fractions, nested_subsets(train_y, fractions, seed)):
            fit = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
            fit.fit(train_x[subset], train_y[subset])
            predicted = fit.predict(test_x)
            counts = np.bincount(train_y[subset], minlength=len(classes))
            per_class = {}
            for index, name in enumerate(classes):
                members = test_y == index
                if members.any():
                    hits = int((predicted[members] == index).sum())
                    per_class[name] = {
                        "images": int(counts[index]),
                        "recall": hits / int(members.sum()),
                        "recall_interval": interval(hits, int(members.sum())),
                    }
            right = int((predicted == test_y).sum())
            rows.append(
                {
                    "fraction": fraction,
                    "train_images": int(len(subset)),
                    "accuracy": right / len(test_y),
                    "accuracy_interval": interval(right, len(test_y)),
                    "per_class": per_class,
                }
            )
    log.info("learning curve: accuracy %s", ", ".join(f"{r['accuracy']:.3f}" for r in rows))
    return {"method": "linear fit on the model's backbone features, plain view", "rows": rows}


def plot_learning_curve(curve: dict[str, Any], path: Path, title: str) -> Path:
    """Recall per class against its train images, one line per class, the accuracy dashed."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    rows = curve["rows"]
    for name in rows[-1]["per_class"]:
        points = [
            (r["per_class"][name]["images"], r["per_class"][name]["recall"])
            for r in rows
            if name in r["per_class"]
        ]
        axes.plot(*zip(*points), marker="o", label=name.replace("$", r"\$"))
    mean_images = [r["train_images"] / max(1, len(r["per_class"])) for r in rows]
    axes.plot(mean_images, [r["accuracy"] for r in rows], "k--", label="accuracy (mean images per class)")
    axes.set(xlabel="train images of the class", ylabel="recall", ylim=(0, 1.02), title=title)
    axes.legend(fontsize="small", loc="lower right")
    return save_figure(figure, path)
