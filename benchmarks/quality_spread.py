"""How far the learned qualities the tests assert move between seeds and CPUs: what their bars rest on.

Each test that asserts a learned quality (an accuracy, an agreement between runtimes, the review's
recall of planted mislabels) records the figure it checks with pytest's ``record_property``. This
reruns those tests under other seeds (``IMGCLF_TEST_SEED``, which every fixed seed in them
follows) and CPU modes (``imgclf.hardware.CPU_MODES``: this CPU as ``precision=auto`` uses it, an
AVX2-only CPU's kernels in fp32, AVX-512 kernels without bf16), and prints each figure's range
beside the bar the test holds it to.

    python benchmarks/quality_spread.py [--seeds default 1 2] [--modes native avx2 avx512-fp32]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from imgclf.hardware import CPU_MODES, describe_machine

ROOT = Path(__file__).resolve().parents[1]


TESTS = [
    "tests/test_end_to_end.py::test_digits_train_eval_classify",
    "tests/test_tune.py::test_cached_and_uncached_training_agree",
    "tests/test_features.py::test_two_ddp_ranks_split_the_feature_pass",
    "tests/test_review.py::test_finds_planted_mislabels_and_few_clean_images",
    "tests/test_export.py::test_runtime_choice",
    "tests/test_export.py::test_int8_kept_only_at_the_threshold",
]
# the bar each figure is held to in its test (the test is the authority; this is the reminder)
BARS = {
    "test accuracy": ">= 0.9",
    "cached val acc": "> 0.85",
    "uncached val acc": "> 0.85",
    "|cached - uncached|": "< 0.05",
    "|DDP - single| val acc": "<= 1/18 = 0.056",
    "planted mislabels found": "== 1",
    "clean images flagged": "<= 0.025",
    "onnx fp32 top-1 agreement": "== 1",
    "int8 top-1 agreement (random network)": "< 1",
}


def run(seed: str, mode: str, junit: Path) -> tuple[dict[str, float], str]:
    env = {**os.environ, **CPU_MODES[mode], "CI": "true"}
    env.pop("IMGCLF_TEST_SEED", None)
    if seed != "default":
        env["IMGCLF_TEST_SEED"] = seed
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    figures = {prop.get("name"): float(prop.get("value")) for prop in ET.parse(junit).iter("property")}
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:]
    return figures, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", default=["default", "1", "2"])
    parser.add_argument("--modes", nargs="+", default=list(CPU_MODES), choices=list(CPU_MODES))
    args = parser.parse_args()

    print(f"# quality_spread: {describe_machine()}\n")
    table: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            for seed in args.seeds:
                started = time.perf_counter()
                figures, summary = run(seed, mode, Path(tmp) / f"{mode}-{seed}.xml")
                shown = ", ".join(f"{k} {v:.4f}" for k, v in figures.items())
                print(
                    f"{mode} seed {seed} ({time.perf_counter() - started:.0f} s; {summary}): {shown}",
                    flush=True,
                )
                for name, value in figures.items():
                    table.setdefault(name, []).append(value)
    print("\n| figure | bar in the test | min | max | runs |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, values in table.items():
        print(f"| {name} | {BARS.get(name, '?')} | {min(values):.4f} | {max(values):.4f} | {len(values)} |")


if __name__ == "__main__":
    main()
