"""The feature store on disk: its format, writing a chunk, publishing, and reading rows back.

A store is a folder: per split, chunk files ``{split}.w{world}.s{chunk_size}.r{rank}.c{n}.npy``
(features ``[rows, views, dim]`` float16) with ``.idx.npy`` (the images' indices) and
``.targets.npy`` beside them, and ``meta.json``, written last, listing them. A folder without
``meta.json`` is a store still being built and is never read.

Rows are read with ``os.pread`` into the batch, never mapped or loaded whole: a process holds the
batch, and the operating system's page cache (shared, and given back under pressure) holds what
was read recently, whatever the size of the store. A mapped file's pages count as the process's
resident memory (``benchmarks/feature_store.py``). Nothing here imports Lightning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from imgclf.io import atomic_open, atomic_write_json

FORMAT = "imgclf.training.features/2"


def npy_header(path: Path) -> tuple[int, tuple[int, ...]]:
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
            offsets.append(npy_header(files[-1])[0])
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


def chunk_names(split: str, world: int, chunk_size: int, rank: int, chunk: int) -> dict[str, str]:
    # how the work was split is in the name: a rerun split differently never mistakes a chunk
    stem = f"{split}.w{world}.s{chunk_size}.r{rank}.c{chunk}"
    return {"features": f"{stem}.npy", "indices": f"{stem}.idx.npy", "targets": f"{stem}.targets.npy"}


def share(count: int, rank: int, world: int, chunk_size: int) -> list[np.ndarray]:
    """The image indices rank ``rank`` of ``world`` computes, in chunks of ``chunk_size``."""
    mine = np.arange(rank, count, world)
    return [mine[start : start + chunk_size] for start in range(0, len(mine), chunk_size)] or [mine]


def publish(directory: Path, key: str, splits: dict[str, dict[str, Any]]) -> None:
    """Make a store readable: ``splits`` maps each split to its count, views, dim and chunk files."""
    atomic_write_json(directory / "meta.json", {"format": FORMAT, "key": key, "splits": splits})


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array)


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
