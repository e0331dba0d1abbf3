"""The feature store at scale: the feature pass split between DDP processes, and a store larger
than memory read batch by batch.

1. The same feature pass (train.py's head stage with a locally saved "pretrained" Inception v3) by
   one process with all the cores, and by two DDP processes (``trainer=ddp_cpu``, one core each),
   side by side; each process's share is read off the store's chunk files. Goal: the work splits
   exactly and the two processes take at most 1.15x the single one's time.
2. A synthetic store of ``--rows`` x 2,048 fp16 features (4 GB at the default million): one
   head-training epoch reading it with the store's reader (``os.pread`` of each batch's rows),
   against the same epoch with the store loaded whole into memory and with ``numpy.memmap``
   (what ``torch.load(mmap=True)`` and safetensors do too). Each in its own process, on a warm page
   cache; peak resident memory from the kernel. Goal: under 1.5 GB read batch by batch, with
   throughput within 20 % of in-memory.

    python benchmarks/feature_store.py [--images 600] [--rows 1000000] [--skip-pass] [--skip-store]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgclf.hardware import describe_machine

ROOT = Path(__file__).resolve().parents[1]


DIM = 2048
CHUNK_ROWS = 65536


def feature_pass(images: int, tmp: Path) -> None:
    from torchvision.models import inception_v3

    from imgclf.data.demo import make_digits_dataset

    data = tmp / "digits"
    # train and val (80 % of each class) are what the feature pass computes
    make_digits_dataset(data, size=64, per_class=max(5, round(images / 10 / 0.8)))
    weights = tmp / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    rows = []
    for name, extra in (
        ("1 process, 2 threads", []),
        ("2 DDP processes, 1 thread each", ["trainer=ddp_cpu"]),
    ):
        cache = tmp / f"cache-{len(rows)}"
        command = [
            sys.executable,
            "scripts/train.py",
            f"data.root={data}",
            "model.pretrained=true",
            f"model.weights_path={weights}",
            f"paths.cache_dir={cache}",
            f"paths.model_dir={tmp / f'model-{len(rows)}'}",
            f"paths.log_dir={tmp / f'logs-{len(rows)}'}",
            "data.image_size=150",
            "data.augment=false",
            "trainer.max_epochs=1",
            "callbacks=none",
            "logger=none",
            "save_model=false",
            *extra,
        ]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(result.stderr[-3000:])
        log = "".join(p.read_text() for p in (tmp / f"logs-{len(rows)}").rglob("train.log"))
        seconds = float(re.search(r"Feature store published after ([\d.]+) s", log).group(1))
        store = next(cache.iterdir())
        shares = {}
        for path in store.glob("*.idx.npy"):
            rank = re.search(r"\.r(\d+)\.", path.name).group(1)
            shares[rank] = shares.get(rank, 0) + len(np.load(path))
        meta = json.loads((store / "meta.json").read_text())
        total = sum(split["count"] for split in meta["splits"].values())
        rows.append((name, seconds, shares, total))
    print("| feature pass | images | images per process | seconds |")
    print("| --- | ---: | --- | ---: |")
    for name, seconds, shares, total in rows:
        split = " + ".join(str(shares[r]) for r in sorted(shares))
        print(f"| {name} | {total} | {split} | {seconds:.1f} |")
    print(f"\n2 processes / 1 process: {rows[1][1] / rows[0][1]:.2f}x the time (goal: at most 1.15x)\n")


def build_store(directory: Path, rows: int) -> None:
    """A published store of ``rows`` random fp16 training features (and a small val split)."""
    from imgclf.training.feature_store import chunk_names, publish

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", rows), ("val", 4096)):
        chunks = []
        for number, start in enumerate(range(0, count, CHUNK_ROWS)):
            names = chunk_names(split, 1, CHUNK_ROWS, 0, number)
            indices = np.arange(start, min(count, start + CHUNK_ROWS))
            np.save(directory / names["indices"], indices)
            np.save(directory / names["targets"], (indices % 10).astype(np.int64))
            block = np.lib.format.open_memmap(
                directory / names["features"], mode="w+", dtype=np.float16, shape=(len(indices), 1, DIM)
            )
            block[:] = rng.standard_normal((len(indices), 1, DIM), dtype=np.float32).astype(np.float16)
            block.flush()
            del block
            chunks.append(names)
        splits[split] = {"count": count, "views": 1, "dim": DIM, "chunks": chunks}
    publish(directory, "synthetic", splits)


class ArrayRows(torch.utils.data.Dataset):
    """The store's train split as numpy arrays, loaded whole or memory-mapped, read by the batch."""

    def __init__(self, store, mmap: bool) -> None:
        arrays = [np.load(path, mmap_mode="r" if mmap else None) for path in store.splits["train"].files]
        self.chunks = arrays if mmap else [np.concatenate(arrays)]
        self.rows = CHUNK_ROWS if mmap else store.count("train")
        self.targets = torch.as_tensor(store.targets("train"))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, batch):
        indices, _ = batch
        features = np.empty((len(indices), DIM), dtype=np.float16)
        which = indices // self.rows
        for chunk in np.unique(which):
            mine = which == chunk
            features[mine] = self.chunks[chunk][indices[mine] % self.rows, 0]
        return torch.from_numpy(features).float(), self.targets[torch.as_tensor(indices)]


def epoch(directory: str, mode: str, batch_size: int) -> None:
    """One head-training epoch over the store's train split; prints a JSON line (child process)."""
    from torch.utils.data import DataLoader

    from imgclf.models.classifier import MLPHead
    from imgclf.training.feature_store import FeatureStore, StoreBatches, StoreSampler

    head = MLPHead(DIM, 10)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    warm = torch.randn(batch_size, DIM)  # loads the kernels: what any training process holds
    loss_fn(head(warm), torch.zeros(batch_size, dtype=torch.long)).backward()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    store = FeatureStore(directory)
    count = store.count("train")
    if mode == "pread":
        dataset = StoreBatches(store, "train")
    else:
        dataset = ArrayRows(store, mmap=mode == "memmap")
    loader = DataLoader(dataset, sampler=StoreSampler(count, 1, batch_size, True, seed=0), batch_size=None)
    started = time.perf_counter()
    for features, targets in loader:
        optimizer.zero_grad()
        loss_fn(head(features), targets).backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps({"mode": mode, "rows_per_s": count / seconds, "peak_gb": peak_kb / 2**20, "base_gb": base})
    )


def store_epochs(rows: int, tmp: Path, batch_size: int) -> None:
    directory = tmp / "store"
    started = time.perf_counter()
    build_store(directory, rows)
    size = sum(p.stat().st_size for p in directory.iterdir()) / 2**30
    print(
        f"synthetic store: {rows:,} x {DIM} fp16 rows, {size:.2f} GiB on disk, built in "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    for path in directory.glob("train*.npy"):  # warm the page cache: every mode reads from memory
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    results = {}
    for mode in ("in-memory", "pread", "memmap"):
        out = subprocess.run(
            [sys.executable, __file__, "--epoch", str(directory), mode, str(batch_size)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| head-training epoch on the store | rows/s | peak resident memory (GiB) | of which the runtime |")
    print("| --- | ---: | ---: | ---: |")
    labels = {
        "in-memory": "loaded whole (np.load)",
        "pread": "read batch by batch (FeatureStore, os.pread)",
        "memmap": "numpy.memmap (mapped pages count as resident)",
    }
    for mode, result in results.items():
        rate, peak, base = result["rows_per_s"], result["peak_gb"], result["base_gb"]
        print(f"| {labels[mode]} | {rate:,.0f} | {peak:.2f} | {base:.2f} |")
    ratio = results["pread"]["rows_per_s"] / results["in-memory"]["rows_per_s"]
    print(
        f"\nbatch by batch: {results['pread']['peak_gb']:.2f} GiB peak (goal: under 1.5), "
        f"{ratio:.2f}x the in-memory throughput (goal: at least 0.8)"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--epoch":
        epoch(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="digits in the feature-pass comparison")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--skip-pass", action="store_true")
    parser.add_argument("--skip-store", action="store_true")
    args = parser.parse_args()
    print(f"# feature_store: {describe_machine()}\n")
    with tempfile.TemporaryDirectory(dir=os.environ.get("IMGCLF_BENCH_TMP")) as tmp:
        if not args.skip_pass:
            feature_pass(args.images, Path(tmp))
        if not args.skip_store:
            store_epochs(args.rows, Path(tmp), args.batch_size)


if __name__ == "__main__":
    main()
