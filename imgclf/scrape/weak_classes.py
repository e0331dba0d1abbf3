"""Which classes a top-up serves, and how many images each gets, from an evaluation's metrics.json.

The weakest classes are the ones with the lowest recall (or F1) on val. How many images each gets
is either a fixed number (``sizing=fixed``: ``extra_images``) or what the evaluation's learning
curve (``scripts/eval.py split=val curve=true``) says the class needs (``sizing=curve``): the
images at which its recall would reach the other classes' (or ``target_recall``), between
``extra_images`` and ``max_images``. A class whose curve is flat gets the fewest: more images of
the kind its searches find are not what it lacks, and the report says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import ImgclfError
from imgclf.scrape.searchterms import check_class_name

SIZINGS = ("fixed", "curve")
# Below this gain per doubling of a class's images its curve is read as flat: more images of the
# kind it has would not help it (its labels, or what its searches find, are the problem).
FLAT = 0.01
MAX_DOUBLINGS = 10  # a projection further out than 1024 times the images is no projection


def weakest(scores: Mapping[str, float], count: int) -> list[str]:
    """The ``count`` classes with the lowest scores, ties by name: the ones a top-up serves first."""
    return sorted(scores, key=lambda name: (scores[name], name))[:count]


def read_metrics(metrics_path: str | Path) -> dict[str, Any]:
    """An evaluation's metrics.json, or an error that says which file to give instead."""
    path = Path(metrics_path)
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImgclfError(
            f"{path} not found; evaluate the model first (python scripts/eval.py "
            "split=val) or point top_up.from at its metrics.json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ImgclfError(
            f"{path} is not an evaluation's metrics.json ({exc}); point "
            "top_up.from at the file scripts/eval.py wrote"
        ) from None
    return metrics if isinstance(metrics, dict) else {}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def class_scores(metrics: Mapping[str, Any], metric: str, source: str) -> dict[str, float]:
    """``{class: metric}`` from metrics.json's ``per_class``; every name checked, as it names the
    folder a top-up writes to (a crafted file must not reach outside the dataset)."""
    if metric not in ("recall", "f1"):
        raise ImgclfError(f"top_up.metric={metric}: use recall or f1")
    per_class = metrics.get("per_class")
    scores = {}
    for name, values in (per_class if isinstance(per_class, dict) else {}).items():
        score = values.get(metric) if isinstance(values, dict) else None
        if _number(score):
            scores[check_class_name(name, source)] = float(score)
    if not scores:
        raise ImgclfError(
            f"{source} has no per_class {metric}; point top_up.from at the "
            "metrics.json that scripts/eval.py wrote"
        )
    return scores


def weakest_classes(metrics_path: str | Path, count: int, metric: str = "recall") -> list[str]:
    """The ``count`` classes with the lowest ``metric`` (recall or f1) in an evaluation's
    metrics.json (``{"per_class": {class: {"precision", "recall", "f1", "support"}}}``)."""
    if metric not in ("recall", "f1"):
        raise ImgclfError(f"top_up.metric={metric}: use recall or f1")
    if count <= 0:
        raise ImgclfError(
            f"top_up.weakest={count}: give how many of the weakest classes to top up, e.g. top_up.weakest=3"
        )
    return weakest(class_scores(read_metrics(metrics_path), metric, str(metrics_path)), count)


@dataclass(frozen=True)
class Projection:
    """What one class's learning curve says about more of its images."""

    images: int  # its train images in the full fit
    recall: float  # the full fit's recall on the evaluated split
    per_doubling: float | None  # recall gained per doubling of its images; None: one size only

    def needed(self, target: float) -> int | None:
        """The train images at which the curve reaches ``target`` recall: the line of recall
        against log2(images) through the full fit's point, with the fitted slope. ``None`` when
        the curve is flat (the images it has are not what holds it back) or reaches it only
        beyond ``MAX_DOUBLINGS``."""
        if self.recall >= target:
            return self.images
        if self.per_doubling is None or self.per_doubling < FLAT:
            return None
        doublings = (target - self.recall) / self.per_doubling
        if doublings > MAX_DOUBLINGS:
            return None
        return math.ceil(self.images * 2**doublings)


def project(curve: Mapping[str, Any], name: str) -> Projection | None:
    """The class's points of a learning curve (:func:`imgclf.inference.curve.learning_curve`) as
    a :class:`Projection` (least squares of recall on log2 of its images: on these small sets
    recall grows about linearly in the log of the data); ``None`` when the curve has no figure for
    the class."""
    points = [
        (r["per_class"][name]["images"], r["per_class"][name]["recall"])
        for r in curve["rows"]
        if name in r["per_class"]
    ]
    if not points:
        return None
    images, recall = points[-1]
    xs = np.log2([max(1, n) for n, _ in points])
    ys = np.array([r for _, r in points], dtype=float)
    slope = float(np.polyfit(xs, ys, 1)[0]) if len(np.unique(xs)) > 1 else None
    return Projection(int(images), float(recall), slope)


@dataclass(frozen=True)
class TopUpSize:
    """How many images a class gets, and why (for the report)."""

    extra: int
    why: str
    recall: float | None = None  # the learning curve's full fit on val
    per_doubling: float | None = None  # its recall gained per doubling of its images
    target: float | None = None
    needed: int | None = None  # train images the curve reaches ``target`` at

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _curve(metrics: Mapping[str, Any], source: str) -> dict[str, Any]:
    """metrics.json's ``learning_curve``, checked to be the shape eval writes."""
    curve = metrics.get("learning_curve")
    rows = curve.get("rows") if isinstance(curve, dict) else None
    usable = (
        isinstance(rows, list)
        and rows
        and all(
            isinstance(r, dict)
            and isinstance(r.get("per_class"), dict)
            and all(
                isinstance(v, dict) and _number(v.get("images")) and _number(v.get("recall"))
                for v in r["per_class"].values()
            )
            for r in rows
        )
    )
    if not usable:
        raise ImgclfError(
            f"{source} has no learning curve to size the top-up by: evaluate with "
            "python scripts/eval.py split=val curve=true, or give a fixed number "
            "(top_up.sizing=fixed top_up.extra_images=N; in the pipeline loop.sizing=fixed)"
        )
    return curve


def top_up_sizes(
    metrics_path: str | Path,
    classes: list[str],
    sizing: str = "fixed",
    extra_images: int = 20,
    max_images: int = 100,
    target_recall: float | None = None,
) -> dict[str, TopUpSize]:
    """Per class of ``classes``: how many new train images it gets (see the module's docstring).
    With ``sizing=curve`` the target is ``target_recall``, or else the mean full-fit recall of
    the classes not being topped up (of every class when all are)."""
    if sizing not in SIZINGS:
        raise ImgclfError(f"sizing={sizing}: use fixed (extra_images per class) or curve")
    if extra_images < 1 or max_images < extra_images:
        raise ImgclfError(
            f"extra_images={extra_images}, max_images={max_images}: give at least 1 image, "
            "and max_images of at least extra_images"
        )
    if sizing == "fixed":
        return {name: TopUpSize(extra_images, f"a fixed {extra_images} images") for name in classes}
    source = str(metrics_path)
    curve = _curve(read_metrics(metrics_path), source)
    full = {check_class_name(name, source): v["recall"] for name, v in curve["rows"][-1]["per_class"].items()}
    if target_recall is None:
        others = [recall for name, recall in full.items() if name not in classes] or list(full.values())
        target, of_what = sum(others) / len(others), "the other classes' mean"
    else:
        target, of_what = float(target_recall), "target_recall"
    sizes = {}
    for name in classes:
        projection = project(curve, name)
        if projection is None:
            sizes[name] = TopUpSize(extra_images, "no learning curve figure for it: the fewest")
            continue
        needed = projection.needed(target)
        gain = projection.per_doubling
        described = f"recall {projection.recall:.2f} with {projection.images} images, " + (
            f"{gain:+.2f} per doubling" if gain is not None else "one size only"
        )
        if needed is None and (gain is None or gain < FLAT):
            why = f"{described}: flat, more of these images would not lift it (the fewest; review its data)"
            extra = extra_images
        elif needed is None:
            why = f"{described}: {of_what} {target:.2f} lies beyond {2**MAX_DOUBLINGS}x its images (the most)"
            extra = max_images
        elif needed <= projection.images:
            why = f"{described}: already at {of_what} {target:.2f} (the fewest)"
            extra = extra_images
        else:
            wanted = needed - projection.images
            extra = min(max(wanted, extra_images), max_images)
            bound = " (at most max_images)" if wanted > max_images else ""
            bound = " (at least extra_images)" if wanted < extra_images else bound
            why = f"{described}: about {needed} images to reach {of_what} {target:.2f}{bound}"
        sizes[name] = TopUpSize(extra, why, projection.recall, gain, target, needed)
    return sizes
