"""Transfer learning on real ImageNet features, side by side in one run: imgclf's own commands
against the ten-line linear probe a practitioner would write, and against training from scratch.

    python benchmarks/transfer_quality.py [--data DIR] [--backbone efficientnet_lite0]
                                          [--recipe] [--only NAME ...] [-- extra train.py overrides]

Data: ``--data``, else the original tool's hockey photos beside the repository
(``../shared/data/real-hockey``: 449 train / 107 val photos, 6 classes), else scikit-learn's digits.
Weights: EfficientNet-Lite0's ImageNet weights, installed from the package index (no network).

Rows, each a real ``python scripts/train.py`` (one shared, initially empty feature store):

- ``probe``: scikit-learn's LogisticRegression on the frozen backbone's pooled features of the plain
  (unaugmented) view, computed here with imgclf's preprocessing and inference loop;
- ``head``: imgclf's defaults for the backbone (head on stored features of 8 augmented views);
- ``head, no augmentation``, ``head + fine-tuning`` (``model.fine_tune=true``: the top blocks then
  train on images), ``head + fine-tuning, no augmentation``;
- ``from scratch``: ``model.pretrained=false``, the same epochs, on images.

``--recipe``: the recipe table instead (issue 26): the defaults (``head``), then each option of the
training recipe alone, then the best combination: the augmentation presets, label smoothing, EMA of
the weights, the learning-rate finder, and MixUp / CutMix (which blend images, so their rows train
the head on images: ``features.cache=false``).

Validation accuracy is the saved model's, counted as ``eval.py`` counts it, with its 95 % Wilson
interval: a gain smaller than the interval is not a gain. ``--recipe`` adds how far the saved
model's probabilities can be trusted: its expected calibration error (15 bins, as ``eval.py``
reports it) with a 95 % bootstrap interval over the validation images, and its mean negative
log-likelihood. Wall times include
each command's start, and the feature store pass when that row is the first to need it (said in
the table). Goal: imgclf's defaults reach at least the probe, aiming at >= 0.98.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgclf.hardware import describe_machine
from imgclf.inference.metrics import wilson_interval

ROOT = Path(__file__).resolve().parents[1]


HOCKEY = ROOT.parent / "shared" / "data" / "real-hockey"

RUNS = {
    "head": [],
    "head, no augmentation": ["data.augment=false"],
    "head + fine-tuning": ["model.fine_tune=true"],
    "head + fine-tuning, no augmentation": ["model.fine_tune=true", "data.augment=false"],
    "from scratch": ["model.pretrained=false"],
}

RECIPE = {
    "head (defaults)": [],
    "augment=trivial": ["data.augment=trivial"],
    "augment=randaugment": ["data.augment=randaugment"],
    "label_smoothing=0.1": ["model.label_smoothing=0.1"],
    "ema_decay=0.99": ["model.ema_decay=0.99"],
    "lr=auto (finder)": ["model.optimizer.lr=auto"],
    "lr=1e-3": ["model.optimizer.lr=1e-3"],
    "best epoch by val loss": ["checkpoint.monitor=val/loss", "checkpoint.mode=min"],
    "mixup=0.2, on images": ["model.mixup=0.2", "features.cache=false"],
    "cutmix=1.0, on images": ["model.cutmix=1.0", "features.cache=false"],
    "head on images (mixup's baseline)": ["features.cache=false"],
    "trivial + smoothing + EMA": [
        "data.augment=trivial",
        "model.label_smoothing=0.1",
        "model.ema_decay=0.99",
    ],
}


def probe(root: Path, backbone_name: str) -> tuple[float, int, int, float]:
    """Logistic regression on frozen pooled features: (accuracy, right, total, seconds)."""
    from sklearn.linear_model import LogisticRegression

    from imgclf.data.folders import ImageDataset, list_split
    from imgclf.data.transforms import eval_transform
    from imgclf.inference.predict import backbone_forward, run_network
    from imgclf.models.backbones import fetch_weights
    from imgclf.models.classifier import ImageClassifier
    from imgclf.testing import backbone_config

    started = time.perf_counter()
    backbone = backbone_config(backbone_name)
    model = ImageClassifier.pretrained(
        backbone, 2, weights_path=fetch_weights(backbone, allow_download=False)
    )
    forward = backbone_forward(model.backbone.eval(), "fp32", torch.device("cpu"))
    splits = {}
    classes = list_split(root, "train", True).classes
    for split in ("train", "val"):
        samples = list_split(root, split, True).samples(classes)
        dataset = ImageDataset(samples, eval_transform(model.preprocessing), on_error="mark")
        features, targets, _ = run_network(forward, dataset, 32, 2, f"probe features ({split})")
        splits[split] = (features.float().numpy(), np.asarray(targets))
    classifier = LogisticRegression(max_iter=2000, C=1.0)
    classifier.fit(*splits["train"])
    right = int((classifier.predict(splits["val"][0]) == splits["val"][1]).sum())
    total = len(splits["val"][1])
    return right / total, right, total, time.perf_counter() - started


def calibration(model_path: Path, root: Path, resamples: int = 1000) -> tuple[float, float, float, float]:
    """The saved model on ``root``'s val images: (ECE, its 95 % bootstrap interval, mean NLL)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    from imgclf.data.folders import ImageDataset, labelled_for_model, model_split
    from imgclf.inference.runtimes import load_predictor

    predictor = load_predictor(model_path, "torch", precision="32-true")
    listing = model_split(root, "val", predictor.record.get("val_split"))
    dataset = ImageDataset(
        labelled_for_model(listing, predictor.classes, str(model_path)), predictor.transform
    )
    probabilities, targets, _ = predictor.predict_dataset(dataset, 32, 2, "calibration")
    k = len(predictor.classes)

    def ece(rows: torch.Tensor) -> float:
        return float(multiclass_calibration_error(probabilities[rows], targets[rows], k, n_bins=15))

    generator = torch.Generator().manual_seed(0)
    n = len(targets)
    spread = sorted(ece(torch.randint(n, (n,), generator=generator)) for _ in range(resamples))
    low, high = spread[int(0.025 * resamples)], spread[int(0.975 * resamples) - 1]
    picked = probabilities[torch.arange(n), targets].clamp_min(1e-12)
    return ece(torch.arange(n)), low, high, float(-picked.log().mean())


def train(args: list[str]) -> tuple[str, float]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "scripts/train.py", *args], cwd=ROOT, capture_output=True, text=True, env=os.environ
    )
    if result.returncode:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--recipe", action="store_true", help="the recipe table (RECIPE rows)")
    parser.add_argument("--only", nargs="*", default=None, help="rows to run (probe and RUNS names)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args()
    runs = RECIPE if args.recipe else RUNS
    wanted = set(args.only) if args.only else ({*RECIPE} if args.recipe else {"probe", *RUNS})

    print(f"# transfer_quality: {describe_machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None and HOCKEY.is_dir():
            root = HOCKEY
        if root is None:
            from imgclf.data.demo import make_digits_dataset

            root = Path(tmp) / "digits"
            make_digits_dataset(root)
        print(
            f"data: {root}; backbone: {args.backbone}; extra overrides: {' '.join(args.overrides) or '-'}\n"
        )
        if args.recipe:
            calibration_columns = "ECE (95 % interval) | NLL"
            print(
                f"| run | val acc | 95 % interval | right / total | {calibration_columns} | wall s | note |"
            )
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        else:
            print("| run | val acc | 95 % interval | right / total | wall s | note |")
            print("| --- | ---: | ---: | ---: | ---: | --- |")
        if "probe" in wanted:
            accuracy, right, total, seconds = probe(root, args.backbone)
            low, high = wilson_interval(right, total)
            cells = ["linear probe (scikit-learn)", f"{accuracy:.4f}", f"{low:.3f}-{high:.3f}"]
            cells += [f"{right} / {total}", *(["-", "-"] if args.recipe else []), f"{seconds:.0f}"]
            cells.append("features of the plain view, LogisticRegression(C=1)")
            print(f"| {' | '.join(cells)} |", flush=True)
        stores_seen: set[str] = set()
        for name, extra in runs.items():
            if name not in wanted:
                continue
            model_dir = Path(tmp) / re.sub(r"\W+", "-", name)
            common = [
                f"model/backbone={args.backbone}",
                f"data.root={root}",
                f"paths.model_dir={model_dir}",
                f"paths.cache_dir={tmp}/cache",
                f"paths.log_dir={tmp}/logs",
                f"hydra.run.dir={model_dir}/run",
            ]
            output, seconds = train([*common, *extra, *args.overrides])
            accuracy = float(re.search(r"val accuracy: ([0-9.]+)", output).group(1))
            total = sum(1 for p in (root / "val").rglob("*") if p.is_file()) if (root / "val").is_dir() else 0
            stores = set(re.findall(r"Computing backbone features once \(store (\S+?);", output))
            note = "computed the feature store" if stores - stores_seen else ""
            stores_seen |= stores
            right = round(accuracy * total)
            low, high = wilson_interval(right, total)
            cells = [
                name,
                f"{accuracy:.4f}",
                f"{low:.3f}-{high:.3f}",
                f"{right} / {total}",
                f"{seconds:.0f}",
                note,
            ]
            if args.recipe:
                ece, ece_low, ece_high, nll = calibration(model_dir / "model.ckpt", root)
                cells[4:4] = [f"{ece:.3f} ({ece_low:.3f}-{ece_high:.3f})", f"{nll:.3f}"]
            print(f"| {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
