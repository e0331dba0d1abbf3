"""The feature store's contents: a frozen backbone's pooled features, computed once, reused.

Training a head on a frozen backbone spends nearly all its time recomputing the same backbone
features every epoch of every trial. They are computed once per (backbone, weights file,
preprocessing, augmentation, views, dataset files) -- ``views`` augmented views of each training
image, the plain view of each validation image -- and stored (:mod:`imgclf.training.feature_store`) under
``paths.cache_dir/<key>/``, where every later run and sweep trial with the same key reads them
(several machines may share that folder).

Building: every process of a run (every DDP rank, on every machine) computes its own share of the
images (rank ``r`` of ``w`` takes images ``r, r + w, ...``: none twice, none missed) in chunks of
``features.chunk_size`` images, each chunk written atomically, so a killed run keeps its finished
chunks. Once all ranks are done, rank 0 publishes the store. Each image's augmentation is drawn
from its own (view, index) seed, so the store is the same whatever the number of processes.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from imgclf.data.datamodule import ImageFolderDataModule
from imgclf.data.hashing import sha256_file
from imgclf.errors import ImgclfError
from imgclf.inference.predict import backbone_forward, run_network
from imgclf.io import json_digest
from imgclf.training.feature_store import (
    FORMAT,
    FeatureStore,
    StoreBatches,
    StoreSampler,
    chunk_names,
    npy_header,
    publish,
    save_npy,
    share,
)

log = logging.getLogger(__name__)

VIEW_SEED = 7919  # the augmented views are the same for every run seed: one store serves them all


@functools.lru_cache(maxsize=32)
def _weights_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime: every trial of a sweep would otherwise hash ~100 MB again.
    return sha256_file(path)


def weights_sha256(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    return _weights_sha256(str(path), stat.st_size, stat.st_mtime_ns)


def store_key(
    backbone: dict[str, Any], weights_file: str | os.PathLike, data: ImageFolderDataModule, views: int
) -> str:
    description = {
        "format": FORMAT,
        "backbone": backbone,
        "weights": weights_sha256(weights_file),
        "preprocessing": data.preprocessing,
        "augmentation": data.augmentation,
        "views": views_of(data, views),
        "classes": data.classes,
        "files": data.files(),
    }
    return json_digest(description, length=24)


def views_of(data: ImageFolderDataModule, views: int) -> int:
    """Augmented views per training image: one when there is no augmentation."""
    return int(views) if data.augmentation is not None else 1


class FeatureExtraction:
    """Computes one process's share of a store's features with a frozen ``network``."""

    def __init__(
        self,
        directory: Path,
        network: nn.Module,
        data: ImageFolderDataModule,
        views: int,
        precision: str,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        chunk_size: int = 2048,
    ) -> None:
        self.directory = directory
        self.chunk_size = int(chunk_size)
        self.network = network
        self.data = data
        self.views = views_of(data, views)
        self.precision = precision
        self.device = device
        self.rank, self.world = rank, world

    def features(self, dataset: Dataset, label: str) -> tuple[np.ndarray, np.ndarray]:
        forward = backbone_forward(self.network, self.precision, self.device)
        batch = max(self.data.batch_size, 32)
        outputs, targets, kept = run_network(forward, dataset, batch, self.data.num_workers, label)
        if len(kept) != len(dataset):
            raise ImgclfError(
                f"{len(dataset) - len(kept)} images passed the header check but could not be decoded "
                "(see the warnings above); remove them (python scripts/review.py fix=quarantine) and rerun"
            )
        outputs = outputs.numpy()
        overflowed = ~np.isfinite(outputs).all(axis=tuple(range(1, outputs.ndim)))
        if overflowed.any():
            # A trained network's pooled features are small; a random one's can exceed float16.
            raise ImgclfError(
                f"the frozen backbone's features of {int(overflowed.sum())} of {len(outputs)} images "
                f"({label}) exceed the feature store's float16 range (65504): are the backbone's "
                "weights a trained network's? Set features.cache=false to train the head on images"
            )
        return outputs, targets.numpy()

    def run(self) -> None:
        for split, views in (("train", self.views), ("val", 1)):
            count = len(self.data.samples(split))
            for number, indices in enumerate(share(count, self.rank, self.world, self.chunk_size)):
                names = chunk_names(split, self.world, self.chunk_size, self.rank, number)
                if (self.directory / names["features"]).is_file():
                    continue  # finished by an earlier, interrupted run
                per_view = []
                for view in range(views):
                    augment = split == "train" and self.views > 1
                    dataset = self.data.dataset(
                        split, augment=augment, seed=VIEW_SEED + view if augment else None
                    )
                    label = f"features: {split} view {view + 1}/{views}, chunk {number + 1}"
                    features, targets = self.features(Subset(dataset, indices.tolist()), label)
                    per_view.append(features)
                save_npy(self.directory / names["indices"], indices.astype(np.int64))
                save_npy(self.directory / names["targets"], targets.astype(np.int64))
                save_npy(self.directory / names["features"], np.stack(per_view, axis=1))

    def publish(self, key: str) -> None:
        """Rank 0, once every rank has finished: the store becomes readable."""
        splits = {}
        for split, views in (("train", self.views), ("val", 1)):
            count = len(self.data.samples(split))
            chunks = [
                chunk_names(split, self.world, self.chunk_size, rank, number)
                for rank in range(self.world)
                for number in range(len(share(count, rank, self.world, self.chunk_size)))
            ]
            dim = npy_header(self.directory / chunks[0]["features"])[1][-1]
            splits[split] = {"count": count, "views": views, "dim": int(dim), "chunks": chunks}
        publish(self.directory, key, splits)


class FeatureDataModule(pl.LightningDataModule):
    """Stage 1's data when the backbone is frozen: its features, from the store.

    ``setup`` builds the store when it is not published yet, each rank its share, with the
    network being trained (the trainer's module): the data asks the model for its features.
    """

    def __init__(
        self,
        images: ImageFolderDataModule,
        cache_dir: str | os.PathLike,
        views: int,
        weights_file: str | os.PathLike,
        seed: int,
        chunk_size: int = 2048,
    ) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.images = images
        self.cache_dir = Path(cache_dir)
        self.views = views
        self.weights_file = weights_file
        self.seed = seed
        self.store: FeatureStore | None = None

    def setup(self, stage: str) -> None:
        if self.store is not None:
            return
        module = self.trainer.lightning_module
        key = store_key(module.model.backbone_config, self.weights_file, self.images, self.views)
        directory = self.cache_dir / key
        if FeatureStore.published(directory):
            log.info("Reusing the feature store %s", directory)
        else:
            self.build(directory, key, module.model.backbone)
        self.store = FeatureStore(directory)

    def build(self, directory: Path, key: str, network: nn.Module) -> None:
        trainer = self.trainer
        log.info(
            "Computing backbone features once (store %s; this process: share %d of %d)",
            directory,
            trainer.global_rank + 1,
            trainer.world_size,
        )
        directory.mkdir(parents=True, exist_ok=True)
        extraction = FeatureExtraction(
            directory,
            network,
            self.images,
            self.views,
            str(trainer.precision),
            trainer.strategy.root_device,
            trainer.global_rank,
            trainer.world_size,
            self.chunk_size,
        )
        started = time.perf_counter()
        was_training = network.training
        extraction.run()
        network.train(was_training)  # as Lightning left it
        log.info("This process's share of the feature pass took %.1f s", time.perf_counter() - started)
        trainer.strategy.barrier("feature store shards")
        if trainer.is_global_zero:
            extraction.publish(key)
            log.info("Feature store published after %.1f s: %s", time.perf_counter() - started, directory)
        trainer.strategy.barrier("feature store published")

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        assert self.store is not None
        sampler = StoreSampler(
            self.store.count(split),
            self.store.views(split),
            batch_size,
            shuffle,
            self.seed,
            self.trainer.global_rank,
            self.trainer.world_size,
        )
        # batch_size=None: the sampler hands the dataset whole batches of indices
        return DataLoader(StoreBatches(self.store, split), sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.images.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", max(self.images.batch_size, 256), shuffle=False)
