"""Training-step throughput: data pipeline cost and channels-last + bf16 versus fp32.

Measured side by side in one run on this machine (noisy machines: compare the ratios):

1. stage-1 steps (frozen backbone, head trained: the default training) fed by the real data
   module from JPEG files on disk, versus the same steps on batches already in memory;
2. the same in-memory steps in fp32 / contiguous versus bf16 autocast / channels-last.

    python benchmarks/train_throughput.py [--batches 6] [--image-size 299] [--backbone inception_v3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from imgclf.config import build
from imgclf.hardware import cpu_has_fast_bf16, describe_machine
from imgclf.training.module import ClassifierModule

CONF = Path(__file__).resolve().parents[1] / "conf"


def write_photos(root: Path, per_class: int) -> None:
    """Scraped-photo-like JPEGs (500x375 crops of real photos) in train/val class folders."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, photo in enumerate(photos):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                top, left = rng.integers(0, photo.shape[0] - 375), rng.integers(0, photo.shape[1] - 500)
                crop = photo[top : top + 375, left : left + 500]
                Image.fromarray(crop).save(folder / f"class_{label}_{n}.jpg", quality=90)


def stage_one_module(cfg) -> ClassifierModule:
    module = build(cfg.model, num_classes=2)
    module.model.backbone.requires_grad_(False)
    module.model.backbone.eval()
    return module


def timed_steps(module: ClassifierModule, batches, precision: str, channels_last: bool) -> float:
    """Images per second over ``batches`` (an iterable of (images, targets))."""
    module.channels_last = channels_last
    module.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = module.configure_optimizers()
    dtype = torch.bfloat16 if precision == "bf16" else None
    seen, started = 0, None
    for index, batch in enumerate(batches):
        if index == 1:  # the first batch warms up allocators and kernels
            seen, started = 0, time.perf_counter()
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss, _, _ = module._step(batch)
        loss.backward()
        optimizer.step()
        seen += len(batch[1])
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--backbone", default="inception_v3")
    args = parser.parse_args()
    torch.manual_seed(0)
    fast = "bf16" if cpu_has_fast_bf16() else "fp32"

    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(CONF)):
        root = Path(tmp)
        write_photos(root, per_class=(args.batches + 1) * args.batch_size // 2 + 1)
        cfg = compose(
            "train",
            [
                f"data.root={root}",
                f"data.image_size={args.image_size}",
                f"data.batch_size={args.batch_size}",
                f"data.num_workers={args.num_workers}",
                f"model/backbone={args.backbone}",
                "model.pretrained=false",
            ],
        )
        data = build(cfg.data)
        loader = data.train_dataloader()
        in_memory = [batch for batch, _ in zip(loader, range(args.batches + 1))]
        module = stage_one_module(cfg)

        from_files = timed_steps(module, (b for b, _ in zip(loader, range(args.batches + 1))), fast, True)
        from_memory = timed_steps(module, in_memory, fast, True)
        fp32 = timed_steps(module, in_memory, "fp32", False)
        bf16 = timed_steps(module, in_memory, "bf16", True)

    print(f"# train_throughput: {describe_machine()}, {torch.get_num_threads()} threads")
    print(
        f"stage-1 step (frozen {args.backbone} backbone + MLP head), {args.image_size} px, batch "
        f"{args.batch_size}, {args.batches} timed batches, num_workers={args.num_workers}\n"
    )
    print("| measurement | images/s |")
    print("| --- | ---: |")
    print(f"| JPEG files through the data module ({fast}, channels-last) | {from_files:.1f} |")
    print(f"| same batches already in memory ({fast}, channels-last) | {from_memory:.1f} |")
    print(f"| in memory, fp32, contiguous | {fp32:.1f} |")
    print(f"| in memory, bf16 autocast, channels-last | {bf16:.1f} |")
    print()
    overhead = 1 - from_files / from_memory
    print(f"data pipeline cost: {overhead:.1%} of the in-memory throughput (goal: under 10%)")
    print(f"bf16 + channels-last vs fp32: {bf16 / fp32:.2f}x (goal: at least 2x)")


if __name__ == "__main__":
    main()
