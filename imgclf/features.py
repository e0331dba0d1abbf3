"""The feature cache: a frozen backbone's pooled features, computed once, reused by every trial.

Training a head on a frozen backbone spends nearly all its time recomputing the same backbone
features every epoch of every trial. Here they are computed once per (weights, image size,
preprocessing, augmentation, views, dataset files) — ``views`` augmented views per training
image, the plain view for validation — stored on disk under a hash of all of that, and the
head trains from them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from rich.progress import Progress
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from imgclf.data import ImageFolderDataModule
from imgclf.hardware import autocast_dtype
from imgclf.io import atomic_torch_save
from imgclf.model import InceptionClassifier, cached_weights_path

log = logging.getLogger(__name__)

CACHE_FORMAT = "imgclf.features/1"


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (weights files: the same bytes give the same features)."""
    stat = os.stat(path)
    return _fingerprint(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime: every trial of a sweep would otherwise hash ~100 MB again.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_source(model_cfg: Any) -> Path:
    return Path(model_cfg.get("weights_path") or cached_weights_path())


def cache_key(
    weights_sha256: str,
    datamodule: ImageFolderDataModule,
    views: int,
    backbone: str = "inception_v3",
) -> str:
    files = {
        split: [
            [str(p), p.stat().st_size, p.stat().st_mtime_ns, target]
            for p, target in datamodule.listings[split].samples(datamodule.classes)
        ]
        for split in ("train", "val")
    }
    description = {
        "format": CACHE_FORMAT,
        "backbone": backbone,
        "weights": weights_sha256,
        "preprocessing": datamodule.preprocessing,
        "augment": datamodule.augment,
        "augmentation": datamodule.augmentation if datamodule.augment else None,
        "views": views if datamodule.augment else 1,
        "classes": datamodule.classes,
        "files": files,
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@torch.inference_mode()
def _extract(
    model: InceptionClassifier,
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    precision: str,
    progress: Progress,
    label: str,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = autocast_dtype(precision)
    pin = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin)
    task = progress.add_task(label, total=len(dataset))
    features, targets = [], []
    for images, target in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            features.append(model.backbone(images).float().to(torch.float16).cpu())
        targets.append(target)
        progress.advance(task, len(target))
    return torch.cat(features), torch.cat(targets)


def compute_features(
    model: InceptionClassifier,
    datamodule: ImageFolderDataModule,
    views: int,
    precision: str,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """train: [N, views, D] (augmented views), val: [M, D] (plain view), computed on ``device``."""
    views = views if datamodule.augment else 1
    device = torch.device(device)
    model.eval().to(device, memory_format=torch.channels_last)
    batch, workers = max(datamodule.batch_size, 32), datamodule.num_workers
    train_set = datamodule.dataset("train", train=True)
    with Progress() as progress:
        train_views, train_targets = [], None
        for view in range(views):
            torch.manual_seed(view)  # the same views every time the cache is rebuilt
            features, train_targets = _extract(
                model,
                train_set,
                batch,
                workers,
                precision,
                progress,
                f"features: train view {view + 1}/{views}",
                device,
            )
            train_views.append(features)
        val, val_targets = _extract(
            model, datamodule.dataset("val"), batch, workers, precision, progress, "features: val", device
        )
    model.cpu()  # Lightning moves it where training runs
    return {
        "format": CACHE_FORMAT,
        "train": torch.stack(train_views, dim=1),
        "train_targets": train_targets,
        "val": val,
        "val_targets": val_targets,
    }


def load_or_compute(
    model: InceptionClassifier,
    datamodule: ImageFolderDataModule,
    model_cfg: Any,
    cache_dir: str | os.PathLike,
    views: int,
    precision: str,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    key = cache_key(file_fingerprint(weights_source(model_cfg)), datamodule, views)
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("format") == CACHE_FORMAT:
                log.info("Reusing cached backbone features %s", path)
                return cached
        except Exception as exc:  # a damaged cache file is rebuilt, never trusted
            log.warning("Ignoring unreadable feature cache %s (%s)", path, exc)
    log.info("Computing backbone features once (cache %s)", path)
    features = compute_features(model, datamodule, views, precision, device)
    atomic_torch_save(features, path)
    return features


class FeatureDataset(Dataset):
    """(features, targets) by the batch; for training, a random stored view of each image per epoch.

    Indexed with a list of indices (see :class:`FeatureDataModule`): one gather per batch instead of
    one Python call and a collate per image, which would cost more than the head's step itself.
    """

    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        self.features = features
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        items = self.features[index]
        if items.dim() == 3:  # [batch, views, D]: one random view of each
            items = items[torch.arange(len(index)), torch.randint(items.shape[1], (len(index),))]
        return items.float(), self.targets[index].long()


class FeatureDataModule(pl.LightningDataModule):
    def __init__(self, features: dict[str, torch.Tensor], batch_size: int) -> None:
        super().__init__()
        self.features = features
        self.batch_size = batch_size

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = FeatureDataset(self.features[split], self.features[f"{split}_targets"])
        order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        # batch_size=None: the sampler hands the dataset whole batches of indices
        return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", max(self.batch_size, 256), shuffle=False)
