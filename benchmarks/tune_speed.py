"""Wall time of the same frozen-backbone Optuna search with and without the feature cache.

Both sweeps run through ``scripts/train.py -m hparams_search=optuna`` in this one run, with the
original's search space minus fine-tuning (a frozen-backbone search) and a seeded sampler kept
in its random phase, so both evaluate the same trial parameters. The backbone weights are those
of an Inception v3 first trained briefly on the digits themselves: ImageNet weights cannot be
downloaded here, they cost exactly the same to run, and random weights would make the accuracy
comparison meaningless.

    python benchmarks/tune_speed.py [--trials 8] [--image-size 150]  # output: docs/benchmarks.md
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

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> None:
    subprocess.run(
        [sys.executable, "scripts/train.py", *args],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    # 150 px keeps the uncached sweep near 10 minutes on two cores; the tool trains at 299 px,
    # where an uncached epoch costs ~4x more backbone compute and a cached trial no more.
    parser.add_argument("--image-size", type=int, default=150)
    args = parser.parse_args()

    from imgclf.demo import make_digits_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "digits"
        counts = make_digits_dataset(data, size=32)
        common = [
            f"data.root={data}",
            f"data.image_size={args.image_size}",
            "data.augment=false",
            f"paths.log_dir={tmp / 'logs'}",
            "callbacks=none",
        ]
        run(
            *common,
            "model.pretrained=false",
            "model.optimizer.lr=1e-3",
            "trainer.max_epochs=2",
            f"paths.model_dir={tmp / 'scratch'}",
        )
        record = torch.load(tmp / "scratch" / "model.ckpt", weights_only=True)
        weights = tmp / "backbone.pth"
        torch.save(
            {
                k.removeprefix("backbone."): v
                for k, v in record["state_dict"].items()
                if k.startswith("backbone.")
            },
            weights,
        )

        results = {}
        for cache in (True, False):
            model_dir = tmp / f"cache_{cache}"
            started = time.perf_counter()
            run(
                "-m",
                "hparams_search=optuna",
                *common,
                f"hydra.sweeper.n_trials={args.trials}",
                f"hydra.sweeper.sampler.n_startup_trials={args.trials}",
                "model.fine_tune=false",
                f"model.weights_path={weights}",
                f"features.cache={str(cache).lower()}",
                f"paths.model_dir={model_dir}",
                f"paths.cache_dir={tmp / 'feature_cache'}",
            )
            seconds = time.perf_counter() - started
            study = optuna.load_study(study_name="imgclf", storage=f"sqlite:///{model_dir / 'optuna.db'}")
            epochs = sum(t.params["trainer.max_epochs"] for t in study.trials)
            results[cache] = (seconds, study.best_value, epochs)

    (cached_s, cached_acc, epochs), (plain_s, plain_acc, _) = results[True], results[False]
    print(
        f"# tune_speed: {args.trials}-trial frozen-backbone search, digits {counts}, "
        f"{args.image_size} px, {epochs} epochs in all, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| sweep | wall time (s) | best val/acc |")
    print("| --- | ---: | ---: |")
    print(f"| feature cache on (computed once, in the time) | {cached_s:.1f} | {cached_acc:.4f} |")
    print(f"| feature cache off | {plain_s:.1f} | {plain_acc:.4f} |")
    print(
        f"\nspeed-up with the cache: {plain_s / cached_s:.1f}x (goal: at least 10x), "
        f"best val/acc difference {cached_acc - plain_acc:+.4f}"
    )


if __name__ == "__main__":
    main()
