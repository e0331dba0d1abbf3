"""The review's label check on real photos with planted mislabels, side by side in one run: how
many planted mislabels each kind of feature finds, and how many clean photos it flags.

    python benchmarks/review_labels.py [--data DIR] [--per-class 2] [--seed 0]

Data: ``--data``, else the original tool's scraped hockey photos beside the repository
(``../shared/data/real-hockey``: train and val, 6 classes, 556 photos), else scikit-learn's
digits. Into a copy, ``--per-class`` photos of each class are moved into another class's folder
(named ``planted-*``, so that the count is by name); then ``python scripts/review.py`` runs once
per row:

- ``pixels``: a 16x16 RGB copy of each photo (``labels.features=pixels``), no network;
- ``EfficientNet-Lite0``: the frozen backbone's pooled ImageNet features
  (``labels.features=backbone model/backbone=efficientnet_lite0``, the installed package's weights);
- ``both``: the two side by side.

The photos the original tool scraped hold their own mistakes (a glove in the helmet folder): a
"clean" photo flagged is not always a false flag. The table says which ones, to look at.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgclf.hardware import describe_machine

ROOT = Path(__file__).resolve().parents[1]


HOCKEY = ROOT.parent / "shared" / "data" / "real-hockey"

ROWS = {
    "pixels (16x16 RGB)": ["labels.features=pixels"],
    "EfficientNet-Lite0 ImageNet features": ["labels.features=backbone", "model/backbone=efficientnet_lite0"],
    "both": ["labels.features=both", "model/backbone=efficientnet_lite0"],
}


def plant(source: Path, root: Path, per_class: int, seed: int) -> set[str]:
    """Copy train/ and val/ of ``source`` to ``root``; move ``per_class`` train photos of each
    class into the next class. Returns the planted paths (relative to ``root``)."""
    for split in ("train", "val"):
        if (source / split).is_dir():
            shutil.copytree(source / split, root / split)
    rng = random.Random(seed)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    planted = set()
    for n, label in enumerate(classes):
        wrong = classes[(n + 1) % len(classes)]
        files = sorted(p for p in (root / "train" / label).iterdir() if p.is_file())
        for photo in rng.sample(files, per_class):
            target = root / "train" / wrong / f"planted-from-{label}-{photo.name}"
            photo.rename(target)
            planted.add(target.relative_to(root).as_posix())
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"# review_labels: {describe_machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        source = args.data or (HOCKEY if HOCKEY.is_dir() else None)
        if source is None:
            from imgclf.data.demo import make_digits_dataset

            source = Path(tmp) / "digits"
            make_digits_dataset(source)
        root = Path(tmp) / "dataset"
        planted = plant(source, root, args.per_class, args.seed)
        total = sum(1 for p in root.rglob("*") if p.is_file())
        print(f"data: {source} ({total} files); planted mislabels: {len(planted)}", end="")
        print(f" ({args.per_class} per class)\n")
        print("| label features | planted found | clean photos flagged | wall s |")
        print("| --- | ---: | ---: | ---: |")
        clean_flags = {}
        for name, extra in ROWS.items():
            report = Path(tmp) / f"report-{len(clean_flags)}"
            started = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable,
                    "scripts/review.py",
                    f"data.root={root}",
                    f"report_dir={report}",
                    f"paths.log_dir={tmp}/logs",
                    f"hydra.run.dir={report}/run",
                    "ckpt_path=null",
                    *extra,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - started
            if result.returncode:
                raise SystemExit(f"review.py {' '.join(extra)} failed:\n{result.stderr[-3000:]}")
            flags = json.loads((report / "findings.json").read_text())["flags"]
            suspects = {f["path"] for f in flags if f["reason"] == "suspect_label"}
            found = len(suspects & planted)
            clean = sorted(suspects - planted)
            clean_flags[name] = clean
            clean_total = total - len(planted)
            row = f"| {name} | {found} / {len(planted)} | {len(clean)} / {clean_total} | {seconds:.0f} |"
            print(row, flush=True)
        for name, clean in clean_flags.items():
            if clean:
                print(f"\n{name}, clean photos flagged (look at them: some are the scrape's own mistakes):")
                for path in clean:
                    print(f"  {path}")


if __name__ == "__main__":
    main()
