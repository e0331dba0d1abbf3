"""The feature store: a frozen backbone's pooled features, computed once, read batch by batch.

Training a head on a frozen backbone spends nearly all its time recomputing the same backbone
features every epoch of every trial. They are computed once per (backbone, weights file,
preprocessing, augmentation, views, dataset files) -- ``views`` augmented views of each training
image, the plain view of each validation image -- and stored under
``paths.cache_dir/<key>/``, where every later run and sweep trial with the same key reads them
(several machines may share that folder).

Building: every process of a run (every DDP rank, on every machine) computes its own share of the
images (rank ``r`` of ``w`` takes images ``r, r + w, ...``: none twice, none missed) in chunks of
``features.chunk_size`` images, each chunk ``.npy`` files written atomically, so a killed run keeps
its finished chunks. Once all ranks are done, rank 0 publishes the store by writing
``meta.json``; a store without it is never read. Each image's augmentation is drawn from its own
(view, index) seed, so the store is the same whatever the number of processes.

Reading: rows are read with ``os.pread`` into the batch, never mapped or loaded whole: a process
holds the batch, and the operating system's page cache (shared, and given back under pressure)
holds what was read recently, whatever the size of the store (``benchmarks/feature_store.py``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from imgclf.data import ImageFolderDataModule
from imgclf.errors import ImgclfError
from imgclf.io import atomic_open, atomic_write_json
from imgclf.predict import backbone_forward, run_network

log = logging.getLogger(__name__)

FORMAT = "imgclf.features/2"
VIEW_SEED = 7919  # the augmented views are the same for every run seed: one store serves them all


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime: every trial of a sweep would otherwise hash ~100 MB again.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


def store_key(
    backbone: dict[str, Any], weights_file: str | os.PathLike, data: ImageFolderDataModule, views: int
) -> str:
    files = {
        split: [[str(p), p.stat().st_size, p.stat().st_mtime_ns, target] for p, target in data.samples(split)]
        for split in ("train", "val")
    }
    description = {
        "format": FORMAT,
        "backbone": backbone,
        "weights": file_sha256(weights_file),
        "preprocessing": data.preprocessing,
        "augmentation": data.augmentation,
        "views": views_of(data, views),
        "classes": data.classes,
        "files": files,
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def views_of(data: ImageFolderDataModule, views: int) -> int:
    """Augmented views per training image: one when there is no augmentation."""
    return int(views) if data.augmentation is not None else 1


def _npy_offset(path: Path) -> tuple[int, tuple[int, ...]]:
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read(handle)
        return handle.tell(), shape


@dataclass
class _Split:
    """One split of a published store: where each image's row lives."""

    count: int
    views: int
    dim: int
    files: list[Path]
    offsets: list[int]
    chunk_of: np.ndarray  # [count] which file holds the image
    row_of: np.ndarray  # [count] its row in that file
    targets: np.ndarray


class FeatureStore:
    """A published store, read by rows; ``read`` is safe to call from several processes."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self.splits = {name: self._open(name, info) for name, info in self.meta["splits"].items()}
        self._fds: dict[Path, int] = {}

    @staticmethod
    def published(directory: str | os.PathLike) -> bool:
        try:
            return json.loads((Path(directory) / "meta.json").read_text()).get("format") == FORMAT
        except (OSError, ValueError):
            return False

    def _open(self, name: str, info: dict[str, Any]) -> _Split:
        count = int(info["count"])
        chunk_of = np.full(count, -1, dtype=np.int32)
        row_of = np.zeros(count, dtype=np.int64)
        targets = np.zeros(count, dtype=np.int64)
        files, offsets = [], []
        for number, chunk in enumerate(info["chunks"]):
            indices = np.load(self.directory / chunk["indices"])
            chunk_of[indices] = number
            row_of[indices] = np.arange(len(indices))
            targets[indices] = np.load(self.directory / chunk["targets"])
            files.append(self.directory / chunk["features"])
            offsets.append(_npy_offset(files[-1])[0])
        if (chunk_of < 0).any():
            raise ValueError(f"{self.directory}: {int((chunk_of < 0).sum())} {name} images have no features")
        return _Split(count, int(info["views"]), int(info["dim"]), files, offsets, chunk_of, row_of, targets)

    def _fd(self, path: Path) -> int:
        # Opened lazily and per process: DataLoader workers and DDP ranks each get their own.
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}}

    def count(self, split: str) -> int:
        return self.splits[split].count

    def views(self, split: str) -> int:
        return self.splits[split].views

    def targets(self, split: str) -> np.ndarray:
        return self.splits[split].targets

    def read(self, split: str, indices: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
        """float16 [len(indices), dim]: view ``views[i]`` (default 0) of each image."""
        info = self.splits[split]
        views = np.zeros(len(indices), dtype=np.int64) if views is None else views
        out = np.empty((len(indices), info.dim), dtype=np.float16)
        row_bytes = info.dim * 2
        for position, (index, view) in enumerate(zip(indices.tolist(), views.tolist())):
            chunk = int(info.chunk_of[index])
            offset = info.offsets[chunk] + (int(info.row_of[index]) * info.views + view) * row_bytes
            got = os.preadv(self._fd(info.files[chunk]), [memoryview(out[position]).cast("B")], offset)
            if got != row_bytes:
                raise OSError(f"{info.files[chunk]}: short read at {offset}")
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _chunk_names(split: str, world: int, chunk_size: int, rank: int, chunk: int) -> dict[str, str]:
    # how the work was split is in the name: a rerun split differently never mistakes a chunk
    stem = f"{split}.w{world}.s{chunk_size}.r{rank}.c{chunk}"
    return {"features": f"{stem}.npy", "indices": f"{stem}.idx.npy", "targets": f"{stem}.targets.npy"}


def share(count: int, rank: int, world: int, chunk_size: int) -> list[np.ndarray]:
    """The image indices rank ``rank`` of ``world`` computes, in chunks of ``chunk_size``."""
    mine = np.arange(rank, count, world)
    return [mine[start : start + chunk_size] for start in range(0, len(mine), chunk_size)] or [mine]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array)


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
        return outputs.numpy(), targets.numpy()

    def run(self) -> None:
        for split, views in (("train", self.views), ("val", 1)):
            count = len(self.data.samples(split))
            for number, indices in enumerate(share(count, self.rank, self.world, self.chunk_size)):
                names = _chunk_names(split, self.world, self.chunk_size, self.rank, number)
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
                _save_npy(self.directory / names["indices"], indices.astype(np.int64))
                _save_npy(self.directory / names["targets"], targets.astype(np.int64))
                _save_npy(self.directory / names["features"], np.stack(per_view, axis=1))

    def publish(self, key: str) -> None:
        """Rank 0, once every rank has finished: the store becomes readable."""
        splits = {}
        for split, views in (("train", self.views), ("val", 1)):
            count = len(self.data.samples(split))
            chunks = [
                _chunk_names(split, self.world, self.chunk_size, rank, number)
                for rank in range(self.world)
                for number in range(len(share(count, rank, self.world, self.chunk_size)))
            ]
            dim = _npy_offset(self.directory / chunks[0]["features"])[1][-1]
            splits[split] = {"count": count, "views": views, "dim": int(dim), "chunks": chunks}
        atomic_write_json(self.directory / "meta.json", {"format": FORMAT, "key": key, "splits": splits})


class StoreBatches(Dataset):
    """Indexed by a whole batch of image indices (see :class:`StoreSampler`): one read per batch."""

    def __init__(self, store: FeatureStore, split: str) -> None:
        self.store = store
        self.split = split
        self.targets = torch.as_tensor(store.targets(split))

    def __len__(self) -> int:
        return self.store.count(self.split)

    def __getitem__(self, batch: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        indices, views = batch
        features = torch.from_numpy(self.store.read(self.split, indices, views)).float()
        return features, self.targets[torch.as_tensor(indices)]


class StoreSampler:
    """Batches of (image indices, view of each), this rank's share, reshuffled every epoch.

    Order and views come from a generator seeded by (seed, epoch), never from the global random
    state. Under DDP each rank takes every ``world``-th image of the epoch's order, padded so that
    all ranks run the same number of steps (as ``DistributedSampler`` does).
    """

    def __init__(
        self, count: int, views: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        self.count, self.views, self.batch_size, self.shuffle = count, views, batch_size, shuffle
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> tuple[np.ndarray, np.ndarray]:
        generator = np.random.default_rng([self.seed, self.epoch])
        order = generator.permutation(self.count) if self.shuffle else np.arange(self.count)
        views = (
            generator.integers(self.views, size=self.count) if self.views > 1 else np.zeros(self.count, int)
        )
        per_rank = -(-self.count // self.world)
        order = np.resize(order, per_rank * self.world)  # pads by repeating the start
        return order[self.rank :: self.world], views

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order, views = self._order()
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            yield batch, views[batch]

    def __len__(self) -> int:
        per_rank = -(-self.count // self.world)
        return -(-per_rank // self.batch_size)


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
        was_training = network.training
        extraction.run()
        network.train(was_training)  # as Lightning left it
        trainer.strategy.barrier("feature store shards")
        if trainer.is_global_zero:
            extraction.publish(key)
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
