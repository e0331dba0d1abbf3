"""The "Choosing a backbone" table of docs/training.md, measured side by side in one run on this CPU.

For every backbone of ``conf/model/backbone/``, at the weights' own image size: parameters of the
network up to its pooled features, CPU inference images/s of the whole classifier through the
predictor (fp32, and bf16 where the CPU runs it natively; batch 8, channels-last), the feature
pass's time per 1,000 images (JPEG photos decoded, preprocessed and run through the frozen
backbone, as the feature store does), and the ImageNet top-1 that torchvision publishes for the
weights. With ``--sweeps``, also each backbone's frozen-backbone sweep with and without the
feature store (``benchmarks/tune_speed.py``; goal: at least 10x for each), on fewer digits and
smaller images than the weights' own if asked: both make the uncached sweep cheaper while the
cached one keeps its fixed costs (start-up, per-trial set-up), so the speed-up measured that way
is a lower bound for the full-size one.

Random weights: the speed of a network does not depend on its values.

    python benchmarks/backbones.py [--batches 3] [--photos 64] [--sweeps] [--sweep-image-size 128]
        [--sweep-sizes vit_b_16=64 ...] [--sweep-per-class 60] [--only resnet50 ...] [--no-table]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgclf.data.folders import ImageDataset
from imgclf.data.transforms import eval_transform
from imgclf.hardware import cpu_has_fast_bf16, describe_machine, resolve_precision
from imgclf.inference.predict import Predictor, backbone_forward, run_network
from imgclf.models.backbones import weights_enum
from imgclf.models.classifier import ImageClassifier
from imgclf.testing import backbone_config, backbone_names

ROOT = Path(__file__).resolve().parents[1]


BACKBONES = backbone_names()


def images_per_second(predictor: Predictor, size: int, batches: int, batch_size: int = 8) -> float:
    batch = torch.randn(batch_size, 3, size, size)
    predictor.predict_batch(batch)  # warm-up: allocations, kernel choice
    started = time.perf_counter()
    for _ in range(batches):
        predictor.predict_batch(batch)
    return batches * batch_size / (time.perf_counter() - started)


def photos(folder: Path, count: int) -> list[tuple[Path, int]]:
    """Scraped-photo-like JPEGs: 500x375 crops of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    sources = load_sample_images().images
    rng = np.random.default_rng(0)
    samples = []
    for n in range(count):
        photo = sources[n % len(sources)]
        top, left = rng.integers(0, photo.shape[0] - 375), rng.integers(0, photo.shape[1] - 500)
        path = folder / f"photo_{n}.jpg"
        Image.fromarray(photo[top : top + 375, left : left + 500]).save(path, quality=90)
        samples.append((path, 0))
    return samples


def feature_pass_seconds(model: ImageClassifier, samples: list[tuple[Path, int]]) -> float:
    """Seconds per 1,000 images through the frozen backbone, decoding included."""
    forward = backbone_forward(model.backbone, resolve_precision("auto", "cpu"), torch.device("cpu"))
    dataset = ImageDataset(samples, eval_transform(model.preprocessing))
    run_network(forward, torch.utils.data.Subset(dataset, range(4)), 32, 2, "warm-up")
    started = time.perf_counter()
    run_network(forward, dataset, 32, 2, "feature pass")
    return (time.perf_counter() - started) / len(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--sweeps", action="store_true")
    parser.add_argument("--sweep-image-size", type=int, default=128)
    parser.add_argument("--sweep-sizes", nargs="*", default=[], metavar="BACKBONE=PX")
    parser.add_argument("--sweep-per-class", type=int, default=None, help="digits of each class")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--only", nargs="*", default=BACKBONES, choices=BACKBONES)
    parser.add_argument("--no-table", action="store_true", help="only the sweeps")
    args = parser.parse_args()
    sweep_sizes = {name: int(px) for name, _, px in (s.partition("=") for s in args.sweep_sizes)}
    torch.manual_seed(0)
    bf16 = cpu_has_fast_bf16()
    print(f"# backbones: {describe_machine()}, {torch.get_num_threads()} threads\n")
    if not args.no_table:
        table(args.only, args.photos, args.batches, bf16)
    if args.sweeps:
        sweeps(args.only, args.trials, args.sweep_image_size, sweep_sizes, args.sweep_per_class)


# timm keeps published accuracies out of the model's metadata: the figure for the one backbone
# whose weights install offline, as its authors publish it (EfficientNet-Lite0, fp32: 74.94 %)
TIMM_TOP1 = {"tf_efficientnet_lite0": 74.9}


def published_top1(spec: dict) -> float | None:
    if spec.get("library") == "timm":
        return TIMM_TOP1.get(spec["name"])
    return weights_enum(spec).meta["_metrics"]["ImageNet-1K"]["acc@1"]


def table(backbones: list[str], photo_count: int, batches: int, bf16: bool) -> None:
    print(
        "| backbone | image px | parameters (M) | images/s fp32 | images/s bf16 | feature pass s/1,000 "
        "| ImageNet top-1 (published) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        samples = photos(Path(tmp) / "photos", photo_count)
        for name in backbones:
            spec = backbone_config(name)
            model = ImageClassifier(spec, 10)
            size = model.image_size
            params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
            record = {"classes": [str(i) for i in range(10)]}
            fp32 = images_per_second(Predictor(model, record, precision="fp32"), size, batches)
            fast = (
                images_per_second(Predictor(model, record, precision="bf16"), size, batches) if bf16 else None
            )
            seconds = feature_pass_seconds(model, samples)
            top1 = published_top1(spec)
            print(
                f"| {name} | {size} | {params:.1f} | {fp32:.1f} | {f'{fast:.1f}' if fast else 'n/a'} "
                f"| {seconds:.0f} | {f'{top1:.1f}' if top1 else 'see timm'} |",
                flush=True,
            )


def sweeps(
    backbones: list[str], trials: int, image_size: int, sizes: dict[str, int], per_class: int | None
) -> None:
    from tune_speed import compare_sweeps

    digits = f"{per_class} of each digit" if per_class else "all 1,797 digits"
    print(f"\n{trials}-trial frozen-backbone sweeps, {digits}\n")
    print("| backbone | px | store on (s) | store off (s) | speed-up | best val/acc on / off |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name in backbones:
        size = sizes.get(name, max(image_size, 75) if name == "inception_v3" else image_size)
        with tempfile.TemporaryDirectory() as tmp:
            r = compare_sweeps(Path(tmp), name, size, trials, per_class)
        print(
            f"| {name} | {size} | {r['stored_s']:.1f} | {r['plain_s']:.1f} | {r['speedup']:.1f}x "
            f"| {r['stored_acc']:.4f} / {r['plain_acc']:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
