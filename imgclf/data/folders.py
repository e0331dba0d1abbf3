"""Image folders: ``{root}/{train,val,test}/{class}/<images>``, and the one dataset over them.

Class names are the sorted folder names of ``train``; the other splits must hold the same classes
(``test`` may hold fewer). What a file *is* is decided by its content, never by its name: a photo
saved without an extension is an image, a text file named ``.jpg`` is not. When ``val/`` is
missing, a stratified, seeded share of ``train/`` serves as validation (:func:`split_off_val`),
without moving any file; the split is recorded with the model so that evaluation and review reuse
it.

Nothing here imports Lightning (the review tool lists folders too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from imgclf.data.images import ImageDecodeError, is_image, load_image
from imgclf.errors import ImgclfError
from imgclf.paths import inside

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def layout_hint(root: Path) -> str:
    return f"expected {root}/{{train,val,test}}/<class name>/<image files>"


@dataclass
class SplitListing:
    """The image files of one split, by class, and what was skipped while listing them."""

    split: str
    directory: Path
    files: dict[str, list[Path]]
    skipped: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted(self.files)

    def samples(self, classes: Sequence[str]) -> list[tuple[Path, int]]:
        """(path, index of its class in ``classes``) for every file, class by class."""
        index = {name: i for i, name in enumerate(classes)}
        return [(path, index[name]) for name in self.classes for path in self.files[name]]

    def counts(self) -> dict[str, int]:
        return {name: len(paths) for name, paths in sorted(self.files.items())}

    def without(self, paths: set[Path], split: str) -> SplitListing:
        files = {name: [p for p in kept if p not in paths] for name, kept in self.files.items()}
        return SplitListing(split, self.directory, files)

    def only(self, paths: set[Path], split: str) -> SplitListing:
        files = {name: [p for p in kept if p in paths] for name, kept in self.files.items()}
        return SplitListing(split, self.directory, {name: kept for name, kept in files.items() if kept})


def list_split(root: str | Path, split: str, verify: bool = True) -> SplitListing:
    """The split's class folders and images; ``verify=False`` keeps broken files (for the review)."""
    root = Path(root)
    directory = root / split
    if not root.is_dir():
        raise ImgclfError(
            f"dataset folder {root} does not exist; {layout_hint(root)} "
            "(build one with `python scripts/scrape.py`, or set data.root=)"
        )
    if not directory.is_dir():
        raise ImgclfError(f"dataset split folder {directory} is missing; {layout_hint(root)}")
    if not inside(directory, root):
        raise ImgclfError(
            f"{directory} is a link that leads out of the dataset; move the split into {root} "
            "(links inside the dataset are followed, links out of it are not)"
        )
    outside: list[Path] = []
    class_dirs = []
    for entry in sorted(directory.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            # Only a link can lead out: the split folder itself is inside (checked above).
            (outside if entry.is_symlink() and not inside(entry, root) else class_dirs).append(entry)
    if not class_dirs:
        raise ImgclfError(f"{directory} has no class folders; {layout_hint(root)}")
    files: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    for class_dir in class_dirs:
        kept = []
        for path in sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            if path.is_symlink() and not inside(path, root):
                outside.append(path)
            elif verify and not is_image(path):
                skipped.append(path)
            else:
                kept.append(path)
        if not kept:
            raise ImgclfError(
                f"class folder {class_dir} holds no readable images; add images or remove the "
                "folder (from every split)"
            )
        files[class_dir.name] = kept
    listing = SplitListing(split, directory, files, {"not an image": skipped} if skipped else {})
    if outside:
        # Not even listed as skipped: the review would read them.
        log.warning(
            "%s: skipped %d link(s) that lead out of the dataset (first: %s)",
            directory,
            len(outside),
            outside[0],
        )
    if skipped:
        log.warning(
            "%s: skipped %d file(s) that are not images (first: %s)", directory, len(skipped), skipped[0]
        )
    return listing


def check_same_classes(reference: SplitListing, other: SplitListing, subset_ok: bool = False) -> None:
    missing = sorted(set(reference.classes) - set(other.classes))
    extra = sorted(set(other.classes) - set(reference.classes))
    if extra or (missing and not subset_ok):
        parts = []
        if extra:
            parts.append(f"{', '.join(extra)} only in {other.directory}")
        if missing and not subset_ok:
            parts.append(f"{', '.join(missing)} missing from {other.directory}")
        raise ImgclfError(
            f"the {reference.split} and {other.split} splits have different classes: "
            f"{'; '.join(parts)}. Every split needs the same class folders."
        )


def split_off_val(train: SplitListing, fraction: float, seed: int) -> list[str]:
    """A stratified, seeded ``fraction`` (in (0, 1), as :class:`~imgclf.training.settings.TrainSettings`
    checks it) of each class (at least one image, at least one left).

    Returns the chosen files as paths relative to the split folder, sorted: what the model file
    records.
    """
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for name in train.classes:
        paths = train.files[name]
        if len(paths) < 2:
            raise ImgclfError(
                f"{train.directory / name} has {len(paths)} image: too few to split off validation "
                "images; add images or a val/ folder"
            )
        count = min(len(paths) - 1, max(1, int(round(fraction * len(paths)))))
        picked = rng.choice(len(paths), size=count, replace=False)
        chosen += [paths[i].relative_to(train.directory).as_posix() for i in sorted(picked)]
    return sorted(chosen)


def split_listings(
    root: str | Path, val_split: Mapping[str, Any] | None = None, verify: bool = True
) -> dict[str, SplitListing]:
    """train, val (a folder, or ``val_split["files"]`` taken out of train) and test when present."""
    root = Path(root)
    train = list_split(root, "train", verify)
    if val_split is not None and not (root / "val").is_dir():
        val_files = {train.directory / name for name in val_split["files"]}
        listings = {"train": train.without(val_files, "train"), "val": train.only(val_files, "val")}
    else:
        val = list_split(root, "val", verify)
        check_same_classes(train, val)
        listings = {"train": train, "val": val}
    if (root / "test").is_dir():
        listings["test"] = list_split(root, "test", verify)
        check_same_classes(train, listings["test"], subset_ok=True)
    return listings


class ImageDataset(Dataset):
    """(image tensor, class index, sample index) for each (path, class index) pair.

    ``on_error`` decides what a file that passed the header check but fails to decode becomes:
    ``"next"`` (training) takes the next decodable sample, so a run goes on; ``"mark"``
    (evaluation, the feature store) returns a blank image with sample index -1, which every
    consumer leaves out, so a prediction is never tied to the wrong file.

    With ``seed`` set, each sample's random augmentation is drawn from its own generator state
    (seed, index): the same pixels whatever the worker, batch or process that loads it, and the
    global random state untouched.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[Image.Image], torch.Tensor],
        on_error: str = "mark",
        seed: int | None = None,
    ) -> None:
        if on_error not in ("next", "mark"):
            raise ValueError(f"on_error={on_error!r}; use 'next' or 'mark'")
        self.samples = list(samples)
        self.transform = transform
        self.on_error = on_error
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def _pixels(self, image: Image.Image, index: int) -> torch.Tensor:
        if self.seed is None:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + index)
            return self.transform(image)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        for attempt in range(len(self.samples)):
            position = (index + attempt) % len(self.samples)
            path, target = self.samples[position]
            try:
                return self._pixels(load_image(path), position), target, position
            except ImageDecodeError as exc:
                if self.on_error == "mark":
                    log.warning("left out: %s", exc)
                    return self._pixels(Image.new("RGB", (1, 1)), position), target, -1
                log.warning("skipping unreadable image: %s", exc)
        raise ImgclfError(f"none of the {len(self.samples)} images could be decoded")


def model_split(root: str | Path, split: str, val_split: Mapping[str, Any] | None) -> SplitListing:
    """A split's files as a model saw them: without a val/ folder, train and val are the split the
    model recorded (``val_split`` of its file)."""
    root = Path(root)
    if split in ("train", "val") and not (root / "val").is_dir() and val_split:
        return split_listings(root, val_split)[split]
    return list_split(root, split)


def labelled_for_model(listing: SplitListing, classes: Sequence[str], model: str) -> list[tuple[Path, int]]:
    """The split's images labelled with the *model's* class indices (``classes``, of the ``model``
    file). Fails, naming both sides, when the folder's classes and the model's do not fit."""
    unknown = sorted(set(listing.classes) - set(classes))
    if unknown:
        raise ImgclfError(
            f"{listing.directory} has classes the model does not know: {', '.join(unknown)}; "
            f"the model ({model}) was trained on: {', '.join(classes)}. "
            "Evaluate the model trained on this dataset (ckpt_path=...) or fix the class folders"
        )
    if len(listing.classes) < 2:
        raise ImgclfError(
            f"{listing.directory} has one class ({listing.classes[0]}); an evaluation needs images "
            f"of at least two of the model's classes ({', '.join(classes)})"
        )
    absent = sorted(set(classes) - set(listing.classes))
    if absent:
        log.warning(
            "%s has no images of %s: their recall is not measured", listing.directory, ", ".join(absent)
        )
    return listing.samples(classes)
