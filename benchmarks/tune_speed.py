"""Wall time of the same frozen-backbone Optuna search with and without the feature store.

Both sweeps run through ``scripts/train.py -m hparams_search=optuna`` in this one run, with the
original's search space minus fine-tuning (a frozen-backbone search) and a seeded sampler kept
in its random phase, so both evaluate the same trial parameters. The backbone weights are real
ImageNet weights where they are installed (EfficientNet-Lite0's, from its package: the default);
for a backbone whose weights cannot be had offline (torchvision's), those of the network first
trained briefly on the digits themselves: they cost exactly the same to run, and random weights
would make the accuracy comparison meaningless.

    python benchmarks/tune_speed.py [--trials 8] [--image-size 128] [--backbone efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

from imgclf.hardware import describe_machine

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "scripts/train.py", *args], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def digits_weights(tmp: Path, data: Path, common: list[str]) -> Path:
    """The backbone after two epochs from scratch on the digits, as a torchvision-layout state dict."""
    run(
        *common,
        "model.pretrained=false",
        "model.optimizer.lr=1e-3",
        "trainer.max_epochs=2",
        f"paths.model_dir={tmp / 'scratch'}",
    )
    record = torch.load(tmp / "scratch" / "model.ckpt", weights_only=True)
    weights = tmp / "backbone.pth"
    backbone = {
        k.removeprefix("backbone."): v for k, v in record["state_dict"].items() if k.startswith("backbone.")
    }
    torch.save(backbone, weights)
    return weights


def installed_weights(backbone: str) -> Path | None:
    """The backbone's ImageNet weights when a package installed them (no download), else None."""
    from imgclf.errors import ImgclfError
    from imgclf.models.backbones import fetch_weights
    from imgclf.testing import backbone_config

    try:
        return Path(fetch_weights(backbone_config(backbone), allow_download=False))
    except ImgclfError:
        return None


def compare_sweeps(
    tmp: Path, backbone: str, image_size: int, trials: int, per_class: int | None = None
) -> dict[str, float]:
    """Both sweeps on the digits (all 1,797, or ``per_class`` of each digit); their wall times and
    best validation accuracies."""
    from imgclf.data.demo import make_digits_dataset

    data = tmp / "digits"
    make_digits_dataset(data, size=32, per_class=per_class)
    common = [
        f"data.root={data}",
        f"model/backbone={backbone}",
        f"data.image_size={image_size}",
        "data.augment=false",
        f"paths.log_dir={tmp / 'logs'}",
        "callbacks=none",
    ]
    weights = installed_weights(backbone) or digits_weights(tmp, data, common)
    print(f"backbone weights: {weights}", flush=True)
    results = {}
    for store in (True, False):
        model_dir = tmp / f"store_{store}"
        started = time.perf_counter()
        run(
            "-m",
            "hparams_search=optuna",
            *common,
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweeper.sampler.n_startup_trials={trials}",
            "model.fine_tune=false",
            f"model.weights_path={weights}",
            f"features.cache={str(store).lower()}",
            f"paths.model_dir={model_dir}",
            f"paths.cache_dir={tmp / 'feature_store'}",
        )
        seconds = time.perf_counter() - started
        study = optuna.load_study(study_name="imgclf", storage=f"sqlite:///{model_dir / 'optuna.db'}")
        results[store] = (
            seconds,
            study.best_value,
            sum(t.params["trainer.max_epochs"] for t in study.trials),
        )
    (stored_s, stored_acc, epochs), (plain_s, plain_acc, _) = results[True], results[False]
    return {
        "stored_s": stored_s,
        "stored_acc": stored_acc,
        "plain_s": plain_s,
        "plain_acc": plain_acc,
        "epochs": epochs,
        "speedup": plain_s / stored_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    # 128 px (the demo's size for the 32 px digits) keeps the uncached sweep short on two cores; at
    # 224 px an uncached epoch costs ~3x more backbone compute and a cached trial no more.
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = compare_sweeps(Path(tmp), args.backbone, args.image_size, args.trials)
    print(f"# tune_speed: {describe_machine()}")
    print(
        f"{args.trials}-trial frozen-backbone search, {args.backbone}, 1,797 digits, {args.image_size} px, "
        f"{result['epochs']} epochs in all\n"
    )
    print("| sweep | wall time (s) | best val/acc |")
    print("| --- | ---: | ---: |")
    stored, accuracy = result["stored_s"], result["stored_acc"]
    print(f"| feature store on (built once, in the time) | {stored:.1f} | {accuracy:.4f} |")
    print(f"| feature store off | {result['plain_s']:.1f} | {result['plain_acc']:.4f} |")
    print(
        f"\nspeed-up with the store: {result['speedup']:.1f}x (goal: at least 10x), "
        f"best val/acc difference {result['stored_acc'] - result['plain_acc']:+.4f}"
    )


if __name__ == "__main__":
    main()
