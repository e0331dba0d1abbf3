"""What the review can say about an image, and about the dataset as a whole.

A :class:`Flag` ties one file to one reason; a file can carry several. The reason names are
what ``fix_reasons`` accepts, so they are part of the user interface.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

# reason -> the heading the report gives it, in the order the report shows them
REASONS = {
    "undecodable": "Not an image (cannot be decoded)",
    "truncated": "Damaged or truncated files",
    "tiny": "Too small",
    "leakage": "Leakage: the same picture in two splits",
    "label_conflict": "The same picture under two classes",
    "exact_duplicate": "Exact duplicates within a split",
    "near_duplicate": "Near duplicates within a split (resized, re-encoded)",
    "suspect_label": "Suspected wrong labels",
}


@dataclass
class Flag:
    """One reason to look at one file.

    ``other`` is the kept copy (duplicates), another copy (label conflicts) or the class the model
    prefers (suspect labels).
    """

    path: str
    reason: str
    detail: str
    other: str | None = None
    score: float | None = None  # how sure: distance, probability, ... (reason-specific)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_reasons(reasons: list[str]) -> list[str]:
    from imgclf.errors import ImgclfError

    unknown = [r for r in reasons if r not in REASONS]
    if unknown:
        raise ImgclfError(
            f"fix_reasons has unknown reason(s) {', '.join(unknown)}; choose from {', '.join(REASONS)}"
        )
    return list(reasons)


def class_counts(images: list, splits: list[str], classes: list[str]) -> dict[str, dict[str, int]]:
    """{split: {class: usable images}} with zeros for classes a split lacks."""
    counted = Counter((im.split, im.label) for im in images if im.usable)
    return {split: {label: counted[split, label] for label in classes} for split in splits}


def dataset_notes(
    counts: dict[str, dict[str, int]], imbalance_ratio: float, min_class_images: int
) -> list[str]:
    """Problems of the dataset as a whole: imbalance, tiny classes, classes missing from a split."""
    notes = []
    for split, per_class in counts.items():
        missing = [label for label, n in per_class.items() if n == 0]
        if missing:
            notes.append(f"{split}: no usable images of {', '.join(missing)}")
        present = {label: n for label, n in per_class.items() if n > 0}
        if not present:
            continue
        small = [f"{label} ({n})" for label, n in present.items() if n < min_class_images]
        if small:
            notes.append(f"{split}: classes with fewer than {min_class_images} images: {', '.join(small)}")
        largest, smallest = max(present, key=present.get), min(present, key=present.get)
        ratio = present[largest] / present[smallest]
        if ratio > imbalance_ratio:
            notes.append(
                f"{split}: class imbalance {ratio:.1f}:1 ({largest} has {present[largest]}, "
                f"{smallest} has {present[smallest]}); consider more images of the small classes "
                "or model.class_weighting=true"
            )
    return notes
