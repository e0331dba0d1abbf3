"""The image data module: image folders -> batches, built from its own config (``conf/data/``).

Its pixels are those the backbone's weights expect (:func:`imgclf.models.backbones.preprocessing` of
``backbone`` at ``image_size``), computed by the same function the model uses. When the dataset has
no ``val/`` folder, ``val_fraction`` of ``train/`` (stratified, seeded with ``split_seed``) is
held out instead; the split is recorded (``val_split``) with the model.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from imgclf.data.folders import (
    ImageDataset,
    SplitListing,
    layout_hint,
    list_split,
    split_listings,
    split_off_val,
)
from imgclf.data.transforms import augment_preset, eval_transform, train_transform
from imgclf.errors import ImgclfError
from imgclf.models.backbones import preprocessing

log = logging.getLogger(__name__)


class ImageFolderDataModule(pl.LightningDataModule):
    def __init__(
        self,
        root: str,
        backbone: Mapping[str, Any],
        augmentation: Mapping[str, Any],
        image_size: int | None = None,
        batch_size: int = 20,
        augment: bool | str = True,
        num_workers: int = 2,
        verify_images: bool = True,
        pin_memory: bool = False,
        val_fraction: float | None = 0.2,
        split_seed: int = 42,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.preprocessing = preprocessing(backbone, image_size)
        preset = augment_preset(augment)
        # The original's parameters alone (as before presets): the feature stores built with them
        # keep their key. The other presets have no parameters to set.
        self.augmentation = (
            None if preset is None else dict(augmentation) if preset == "original" else {"preset": preset}
        )
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.verify_images = verify_images
        self.pin_memory = pin_memory
        self.val_fraction = val_fraction
        self.split_seed = int(split_seed)
        self.val_split: dict[str, Any] | None = None
        self.listings: dict[str, SplitListing] = {}

    def scan(self) -> list[str]:
        """List the splits and check they agree; returns the classes."""
        if not self.listings:
            if not (self.root / "val").is_dir() and (self.root / "train").is_dir():
                self.val_split = self.hold_out_val()
            self.listings = split_listings(self.root, self.val_split, self.verify_images)
        return self.classes

    def hold_out_val(self) -> dict[str, Any]:
        if self.val_fraction is None:
            raise ImgclfError(
                f"{self.root / 'val'} is missing and data.val_fraction=null; add a val/ folder "
                "or hold out part of train/ with data.val_fraction=0.2"
            )
        train = list_split(self.root, "train", self.verify_images)
        files = split_off_val(train, float(self.val_fraction), self.split_seed)
        log.info(
            "%s has no val/: %d of train/'s images (%.0f %%, stratified, seed %d) validate instead",
            self.root,
            len(files),
            100 * float(self.val_fraction),
            self.split_seed,
        )
        return {"fraction": float(self.val_fraction), "seed": self.split_seed, "files": files}

    @property
    def classes(self) -> list[str]:
        return self.listings["train"].classes

    def class_counts(self) -> list[int]:
        counts = Counter(target for _, target in self.listings["train"].samples(self.classes))
        return [counts[i] for i in range(len(self.classes))]

    def samples(self, split: str) -> list[tuple[Path, int]]:
        self.scan()
        if split not in self.listings:
            raise ImgclfError(f"{self.root / split} is missing; {layout_hint(self.root)}")
        return self.listings[split].samples(self.classes)

    def files(self) -> dict[str, list[list[Any]]]:
        """The training and validation files as they are now (path, size, mtime, class): what a
        run's fingerprint and the feature store's key include, so that changed data is noticed."""
        return {
            split: [[str(p), p.stat().st_size, p.stat().st_mtime_ns, t] for p, t in self.samples(split)]
            for split in ("train", "val")
        }

    def dataset(
        self, split: str, augment: bool = False, seed: int | None = None, on_error: str = "mark"
    ) -> ImageDataset:
        transform = (
            train_transform(self.preprocessing, self.augmentation)
            if augment
            else eval_transform(self.preprocessing)
        )
        return ImageDataset(self.samples(split), transform, on_error=on_error, seed=seed)

    def loader(
        self, dataset: ImageDataset, shuffle: bool = False, batch_size: int | None = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("train", augment=True, on_error="next"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("val"))
