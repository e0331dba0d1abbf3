"""Suspected wrong labels: images whose label a cross-validated model strongly disagrees with.

Features are computed once per image -- the frozen Inception v3 backbone's pooled features
(``backbone``; meaningful with ImageNet weights), a small RGB copy of the pixels (``pixels``), or
both -- and a logistic regression is fitted k times, each time predicting only the fold it did
not see. An image is thus never judged by a model that trained on it, nor on a duplicate of it:
duplicate groups stay inside one fold.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.review.findings import Flag
from imgclf.review.scan import ScannedImage

log = logging.getLogger(__name__)

FEATURES = ("backbone", "pixels", "both")


def pixel_features(images: list[ScannedImage]) -> np.ndarray:
    return np.stack([im.pixels for im in images]).astype(np.float32) / 255.0


def backbone_features(root: Path, images: list[ScannedImage], model_cfg: Mapping[str, Any]) -> np.ndarray:
    """The frozen backbone's pooled features (``model.backbone``): the feature store's
    preprocessing and batched pass, in inference precision (``model.precision=auto``: bf16 with
    channels-last only where the CPU infers faster so, i.e. with AMX; fp32 elsewhere)."""
    from imgclf.data.folders import ImageDataset
    from imgclf.data.transforms import eval_transform
    from imgclf.hardware import resolve_precision
    from imgclf.inference.predict import backbone_forward, run_network
    from imgclf.models.classifier import ImageClassifier

    backbone = model_cfg["backbone"]
    if model_cfg["pretrained"]:
        model = ImageClassifier.pretrained(
            backbone,
            2,
            image_size=model_cfg.get("image_size"),
            weights_path=model_cfg.get("weights_path"),
            allow_download=model_cfg.get("allow_download", True),
        )
    else:
        log.warning(
            "model.pretrained=false: backbone features of a random network say little "
            "about labels; use ImageNet weights or labels.features=pixels"
        )
        model = ImageClassifier(backbone, 2, image_size=model_cfg.get("image_size"))
    dataset = ImageDataset([(root / im.path, 0) for im in images], eval_transform(model.preprocessing))
    precision = resolve_precision(model_cfg.get("precision", "auto"), "cpu", "inference")
    forward = backbone_forward(model.backbone, precision, torch.device("cpu"))
    features, _, kept = run_network(
        forward, dataset, int(model_cfg["batch_size"]), int(model_cfg["num_workers"]), "backbone features"
    )
    if len(kept) != len(images):
        raise ValueError("an image the scan decoded failed to decode for its features")
    return features.float().numpy()


def image_features(
    root: Path, images: list[ScannedImage], kind: str, model_cfg: Mapping[str, Any]
) -> np.ndarray:
    parts = []
    if kind in ("backbone", "both"):
        parts.append(backbone_features(root, images, model_cfg))
    if kind in ("pixels", "both"):
        parts.append(pixel_features(images))
    return np.concatenate(parts, axis=1)


def out_of_fold_probabilities(
    features: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray,
    num_classes: int,
    folds: int,
    C: float,
    seed: int,
) -> np.ndarray:
    """[N, num_classes] probabilities, each row from a model fitted without that image's group."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    probabilities = np.zeros((len(targets), num_classes), dtype=np.float64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    # These matrices are small: multi-threaded BLAS only spins, and on a busy machine that made
    # the fits a hundred times slower than one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        for fit_rows, held_rows in splitter.split(features, targets, groups):
            # tol 1e-3: flags need probabilities to two decimals; the default 1e-4 tripled the
            # iterations and made them grow with the number of images.
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-3, max_iter=2000))
            model.fit(features[fit_rows], targets[fit_rows])
            probabilities[np.ix_(held_rows, model.classes_)] = model.predict_proba(features[held_rows])
    return probabilities


def label_flags(
    images: list[ScannedImage],
    classes: list[str],
    probabilities: np.ndarray,
    max_given: float,
    min_other: float,
) -> list[Flag]:
    """Images whose own class is unlikely while another class is likely, most confident first."""
    flags = []
    for image, row in zip(images, probabilities):
        given = classes.index(image.label)
        others = row.copy()
        others[given] = -1.0
        best = int(others.argmax())
        if row[given] <= max_given and row[best] >= min_other:
            flags.append(
                Flag(
                    image.key,
                    "suspect_label",
                    f"labelled {image.label} (p={row[given]:.2f}); looks like "
                    f"{classes[best]} (p={row[best]:.2f})",
                    other=classes[best],
                    score=float(row[best] - row[given]),
                )
            )
    return sorted(flags, key=lambda f: -f.score)


def judgeable(images: list[ScannedImage]) -> tuple[list[ScannedImage], list[str]]:
    """Usable images of the classes with at least two of them; and the classes left out."""
    counts = Counter(im.label for im in images if im.usable)
    kept = {label for label, n in counts.items() if n >= 2}
    return [im for im in images if im.usable and im.label in kept], sorted(set(counts) - kept)


def suspect_labels(
    root: Path,
    images: list[ScannedImage],
    group_of: dict[str, int],
    settings: Mapping[str, Any],
    model_cfg: Mapping[str, Any],
    seed: int,
) -> tuple[list[Flag], list[str]]:
    """Flags for suspected wrong labels, and notes on what could not be checked."""
    candidates, left_out = judgeable(images)
    notes = [f"label check skipped for {label}: fewer than 2 usable images" for label in left_out]
    classes = sorted({im.label for im in candidates})
    if len(classes) < 2:
        return [], notes + ["label check skipped: it needs two classes with 2 or more images"]
    targets = np.array([classes.index(im.label) for im in candidates])
    groups = np.array([group_of.get(im.key, -i - 1) for i, im in enumerate(candidates)])
    folds = min(int(settings["folds"]), min(Counter(targets).values()), len(set(groups)))
    features = image_features(root, candidates, settings["features"], model_cfg)
    probabilities = out_of_fold_probabilities(
        features, targets, groups, len(classes), folds, float(settings["C"]), seed
    )
    return label_flags(
        candidates, classes, probabilities, settings["max_given_prob"], settings["min_other_prob"]
    ), notes
