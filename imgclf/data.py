"""Image folders -> tensors: ``{root}/{train,val,test}/{class}/*.jpg``.

Class names are the sorted folder names of ``train``; the other splits must hold the same
classes. Problems a user can fix (missing split, empty class, classes that differ between
splits) raise :class:`ImgclfError` naming the folder; files that are not images are skipped with
a warning that counts them.
"""

from __future__ import annotations

import functools
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from imgclf.errors import ImgclfError
from imgclf.images import IMAGE_SUFFIXES, ImageDecodeError, load_image
from imgclf.transforms import eval_transform, train_transform

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
        index = {name: i for i, name in enumerate(classes)}
        return [(path, index[name]) for name in self.classes for path in self.files[name]]

    def counts(self) -> dict[str, int]:
        return {name: len(paths) for name, paths in sorted(self.files.items())}


def _readable(path: Path) -> bool:
    """Header check: cheap enough for every file, catches non-images posing as images."""
    stat = path.stat()
    return _readable_version(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _readable_version(path: str, size: int, mtime_ns: int) -> bool:
    # Keyed by size and mtime: sweeps list the same unchanged files once per trial.
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # Pillow raises many types for bad files; all mean "skip it"
        return False


def list_split(root: str | Path, split: str, verify: bool = True) -> SplitListing:
    root = Path(root)
    directory = root / split
    if not root.is_dir():
        raise ImgclfError(
            f"dataset folder {root} does not exist; {layout_hint(root)} "
            "(build one with `python scripts/scrape.py`, or set data.root=)"
        )
    if not directory.is_dir():
        raise ImgclfError(f"dataset split folder {directory} is missing; {layout_hint(root)}")
    class_dirs = sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ImgclfError(f"{directory} has no class folders; {layout_hint(root)}")
    files: dict[str, list[Path]] = {}
    skipped: dict[str, list[Path]] = {"not an image": [], "unreadable": []}
    for class_dir in class_dirs:
        kept = []
        for path in sorted(p for p in class_dir.iterdir() if p.is_file()):
            if path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped["not an image"].append(path)
            elif verify and not _readable(path):
                skipped["unreadable"].append(path)
            else:
                kept.append(path)
        if not kept:
            raise ImgclfError(
                f"class folder {class_dir} holds no readable images; add images or remove the "
                "folder (from every split)"
            )
        files[class_dir.name] = kept
    listing = SplitListing(split, directory, files, {k: v for k, v in skipped.items() if v})
    for reason, paths in listing.skipped.items():
        log.warning("%s: skipped %d file(s), %s (first: %s)", directory, len(paths), reason, paths[0])
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


class ImageListDataset(Dataset):
    """(path, target) pairs decoded with :func:`load_image` and transformed."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        try:
            image = load_image(path)
        except ImageDecodeError as exc:
            # Passed the header check but fails to decode (e.g. truncated): skip it, keep going.
            log.warning("skipping unreadable image: %s", exc)
            return self[random.randrange(len(self.samples))]
        return self.transform(image), target


class ImageFolderDataModule(pl.LightningDataModule):
    def __init__(
        self,
        root: str,
        preprocessing: Mapping[str, Any],
        batch_size: int = 20,
        augment: bool = True,
        augmentation: Mapping[str, Any] | None = None,
        num_workers: int = 2,
        image_size: int | None = None,
        verify_images: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.preprocessing = dict(preprocessing)
        self.batch_size = int(batch_size)
        self.augment = bool(augment)
        self.augmentation = dict(augmentation or {})
        self.num_workers = int(num_workers)
        self.verify_images = verify_images
        self.pin_memory = pin_memory
        self.listings: dict[str, SplitListing] = {}
        self.datasets: dict[str, ImageListDataset] = {}

    def scan(self) -> list[str]:
        """List train and val (and test when present) and check they agree; returns the classes."""
        if "train" not in self.listings:
            train = list_split(self.root, "train", self.verify_images)
            val = list_split(self.root, "val", self.verify_images)
            check_same_classes(train, val)
            self.listings = {"train": train, "val": val}
            if (self.root / "test").is_dir():
                self.listings["test"] = list_split(self.root, "test", self.verify_images)
                check_same_classes(train, self.listings["test"], subset_ok=True)
        return self.classes

    @property
    def classes(self) -> list[str]:
        return self.listings["train"].classes

    def class_counts(self) -> list[int]:
        counts = Counter(target for _, target in self.listings["train"].samples(self.classes))
        return [counts[i] for i in range(len(self.classes))]

    def dataset(self, split: str, train: bool = False) -> ImageListDataset:
        self.scan()
        if split not in self.listings:
            raise ImgclfError(f"{self.root / split} is missing; {layout_hint(self.root)}")
        transform = (
            train_transform(self.preprocessing, self.augment, self.augmentation)
            if train
            else eval_transform(self.preprocessing)
        )
        return ImageListDataset(self.listings[split].samples(self.classes), transform)

    def setup(self, stage: str | None = None) -> None:
        self.scan()
        self.datasets = {"train": self.dataset("train", train=True), "val": self.dataset("val")}
        if "test" in self.listings:
            self.datasets["test"] = self.dataset("test")

    def loader(self, dataset: Dataset, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.datasets["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.datasets["val"])

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise ImgclfError(f"{self.root / 'test'} is missing; there is no test split to run")
        return self.loader(self.datasets["test"])
