"""How fast the dataset review runs, and how its time grows with the number of images.

Builds 4,000 distinct 64x64 pictures from scikit-learn's digits (random rotation, scale, shift,
noise), then reviews the first 1,000, 2,000 and 4,000 of them side by side in one run and prints
seconds per stage (best of two runs), images/s and the growth ratio (4.0 for 4x the images is
linear; all-pairs would be 16).

Labels are checked with ``labels.features=pixels``: the backbone's cost is Inception v3 inference
(the same per image as evaluation) and would hide the review's own scaling on a small CPU.

    python benchmarks/review_speed.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

SIZES = (1000, 2000, 4000)
SIDE = 64
REPEATS = 2  # the machine may be shared: keep each stage's best time


def make_pictures(folder: Path, count: int, seed: int = 0) -> list[tuple[Path, str]]:
    """``count`` augmented digits as PNG files; returns (path, label)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    made = []
    for n in range(count):
        index = n % len(digits.images)
        label = str(digits.target[index])
        ink = (255 - digits.images[index] * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(ink, mode="L").resize((SIDE, SIDE), Image.BICUBIC)
        image = image.rotate(
            rng.uniform(-20, 20),
            resample=Image.BICUBIC,
            fillcolor=255,
            translate=tuple(rng.integers(-4, 5, 2)),
        )
        noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 12, (SIDE, SIDE))
        path = folder / f"{label}_{n}.png"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="L").save(path)
        made.append((path, label))
    return made


def dataset_of(pictures: list[tuple[Path, str]], root: Path) -> Path:
    """The pictures as {train,val}/{label}/ by hard links (80/20), without copying bytes."""
    for n, (path, label) in enumerate(pictures):
        folder = root / ("val" if n % 5 == 0 else "train") / label
        folder.mkdir(parents=True, exist_ok=True)
        os.link(path, folder / path.name)
    return root


def review_seconds(root: Path, work: Path) -> dict[str, float]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from imgclf.review.reviewer import review

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "review",
            [
                f"data.root={root}",
                f"report_dir={work / (root.name + '_report')}",
                "labels.features=pixels",
                "hydra.run.dir=.",
            ],
        )
    started = time.perf_counter()
    result = review(cfg)
    seconds = dict(result["seconds"])
    seconds["total"] = time.perf_counter() - started
    seconds["flagged near/exact duplicates"] = sum(
        f.reason in ("near_duplicate", "exact_duplicate", "leakage", "label_conflict")
        for f in result["flags"]
    )
    return seconds


class LinearScan:
    """The baseline: compare a hash against every stored one (all pairs over a whole run)."""

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        self._items: list[tuple[int, int]] = []

    def add(self, key: int, value: int) -> None:
        self._items.append((key, value))

    def find(self, value: int) -> list[tuple[int, int]]:
        found = ((key, (value ^ other).bit_count()) for key, other in self._items)
        return [item for item in found if item[1] <= self.max_distance]


def index_seconds(pictures: list[tuple[Path, str]], radius: int = 8) -> dict[str, dict[int, float]]:
    """Look up then add every hash (best of REPEATS): the review's index against a linear scan.

    Also counts the pairs within ``radius`` bits, which both must return.
    """
    from imgclf.data.hashing import NearDuplicateIndex, perceptual_hash
    from imgclf.data.images import load_image

    hashes = [perceptual_hash(load_image(path)) for path, _ in pictures]
    indexes = {"NearDuplicateIndex (banded)": NearDuplicateIndex, "linear scan": LinearScan}
    results: dict[str, dict[int, float]] = {name: {} for name in indexes}
    results["pHash pairs within 8 bits"] = {}
    for size in SIZES:
        counted = set()
        for name, make in indexes.items():
            best = float("inf")
            for _ in range(REPEATS):
                index, pairs, started = make(radius), 0, time.perf_counter()
                for number, value in enumerate(hashes[:size]):
                    pairs += len(index.find(value))
                    index.add(number, value)
                best = min(best, time.perf_counter() - started)
            results[name][size] = best
            counted.add(pairs)
        if len(counted) != 1:
            raise AssertionError(f"the index and the linear scan disagree at {size} images: {counted}")
        results["pHash pairs within 8 bits"][size] = pairs
    return results


def main() -> None:
    import contextlib
    import io
    import platform

    print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}, labels.features=pixels")
    with tempfile.TemporaryDirectory(prefix="review_bench_") as tmp:
        work = Path(tmp)
        (work / "all").mkdir()
        print(f"making {max(SIZES)} pictures ({SIDE}x{SIDE} PNG)...", flush=True)
        pictures = make_pictures(work / "all", max(SIZES))
        rows = {}
        for size in SIZES:
            root = dataset_of(pictures[:size], work / f"n{size}")
            with contextlib.redirect_stdout(io.StringIO()):
                runs = [review_seconds(root, work) for _ in range(REPEATS)]
            rows[size] = {stage: min(run[stage] for run in runs) for stage in runs[0]}
            print(f"{size} images: {rows[size]['total']:.1f} s", flush=True)
        indexes = index_seconds(pictures)

    stages = ["scan", "duplicates", "labels", "report", "total"]
    print("\n| images | " + " | ".join(f"{s} (s)" for s in stages) + " | images/s |")
    print("|---:|" + "---:|" * (len(stages) + 1))
    for size, seconds in rows.items():
        print(
            f"| {size} | "
            + " | ".join(f"{seconds[s]:.2f}" for s in stages)
            + f" | {size / seconds['total']:.0f} |"
        )
    small, large = min(SIZES), max(SIZES)
    print(
        f"\ngrowth from {small} to {large} images ({large // small}x): "
        + ", ".join(f"{s} {rows[large][s] / rows[small][s]:.1f}x" for s in stages)
        + f" (linear: {large / small:.1f}x, all pairs: {(large / small) ** 2:.0f}x)"
    )
    print(
        "duplicate files flagged: "
        + ", ".join(f"{size}: {int(rows[size]['flagged near/exact duplicates'])}" for size in SIZES)
        + " (past 1,797 images the set repeats digits, shifted and noisy: real near duplicates)"
    )
    pairs = indexes.pop("pHash pairs within 8 bits")
    print(
        f"\nnear-duplicate look-ups at radius 8 bits, same pHashes, {small} -> {large} images "
        f"(candidate pairs, before the fingerprint check: "
        + ", ".join(f"{size}: {pairs[size]}" for size in SIZES)
        + "):"
    )
    for name, seconds in indexes.items():
        print(
            f"  {name}: "
            + ", ".join(f"{size}: {seconds[size]:.3f} s" for size in SIZES)
            + f" ({seconds[large] / seconds[small]:.1f}x)"
        )


if __name__ == "__main__":
    main()
