"""Accuracy spread of the demo recipe across seeds and CPU precisions: what the tests' bars rest on.

``make demo`` and the end-to-end test train Inception v3 from scratch on scikit-learn's digits
(``+experiment=digits``). Kernels and precision differ between CPUs (bf16 autocast on those with
native bf16, fp32 on AVX2-only ones), and so does the result for one seed. Each run here is
``scripts/train.py`` then ``scripts/eval.py split=test``, in the CPU modes of
``imgclf.hardware.CPU_MODES``:

- ``native``: whatever ``precision=auto`` picks on this CPU;
- ``avx2``: PyTorch and oneDNN capped to AVX2 (``ATEN_CPU_CAPABILITY=avx2``,
  ``ONEDNN_MAX_CPU_ISA=AVX2``), so ``auto`` picks fp32 and the kernels are an AVX2 machine's;
- ``avx512-fp32``: oneDNN capped below bf16, so ``auto`` picks fp32 on AVX-512 kernels.

    python benchmarks/demo_recipe.py [--seeds 0 1 2] [--modes native avx2] [--source-size 32 64]
        [-- extra train.py overrides]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgclf.hardware import CPU_MODES, describe_machine

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, f"scripts/{name}.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    if result.returncode:
        raise SystemExit(f"{name}.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def figure(text: str, label: str) -> float:
    return float(text.split(f"{label}: ")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["native", "avx2"], choices=list(CPU_MODES))
    # 64 px: the demo's folders (make demo); 32 px: the test suite's
    parser.add_argument("--source-size", type=int, nargs="+", default=[64])
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args()

    from imgclf.data.demo import make_digits_dataset

    print(f"# demo_recipe: {describe_machine()}")
    print(f"recipe: +experiment=digits {' '.join(args.overrides)}\n")
    print("| source px | mode | seed | val acc | test acc | train + eval s |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    results: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.source_size:
            data = Path(tmp) / f"digits{size}"
            make_digits_dataset(data, size=size)
            for mode in args.modes:
                env = CPU_MODES[mode]
                for seed in args.seeds:
                    model_dir = Path(tmp) / f"model-{size}-{mode}-{seed}"
                    common = [f"data.root={data}", f"paths.model_dir={model_dir}"]
                    common.append(f"paths.log_dir={tmp}/logs")
                    started = time.perf_counter()
                    trained = script(
                        "train", ["+experiment=digits", f"seed={seed}", *common, *args.overrides], env
                    )
                    tested = script("eval", ["split=test", *common], env)
                    seconds = time.perf_counter() - started
                    val, test = figure(trained, "val accuracy"), figure(tested, "accuracy")
                    results.setdefault((size, mode), []).append(test)
                    row = f"| {size} | {mode} | {seed} | {val:.4f} | {test:.4f} | {seconds:.0f} |"
                    print(row, flush=True)
    print()
    for (size, mode), accuracies in results.items():
        print(
            f"{size} px {mode}: test accuracy min {min(accuracies):.4f}, "
            f"mean {statistics.mean(accuracies):.4f}, max {max(accuracies):.4f} over {len(accuracies)} seeds"
        )


if __name__ == "__main__":
    main()
