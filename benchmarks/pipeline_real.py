"""The whole pipeline on real photos, as a user runs it: one command from a search-terms CSV to a
model folder with its card, its intervals, its heatmaps and its learning curve.

    python benchmarks/pipeline_real.py [--data DIR] [--backbone efficientnet_lite0] [--keep DIR]

Data: ``--data`` (``train/`` and ``val/`` class folders), else the original tool's hockey photos
beside the repository (``../shared/data/real-hockey``: 449 train / 107 val photos, 6 classes, file
names without extensions, PNG/GIF/BMP among the JPEGs). They are copied into a fresh dataset
folder with a CSV asking for no more images than each folder has, so the scrape stage finds its
work done without a browser: this machine reaches no search engine. Weights: EfficientNet-Lite0's
ImageNet weights from the package index.

``python -m imgclf pipeline`` then runs scrape -> review -> train -> eval with the defaults
(``curve=true`` on val, as a second round would). The report: each stage's wall time, the
accuracy with its 95 % interval, what the model card holds, the heatmaps beside the top losses,
and what a second round's top-up would ask for each weak class (``loop.sizing=curve``,
:func:`imgclf.scrape.weak_classes.top_up_sizes`), all read from the files the run left.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgclf.hardware import describe_machine
from imgclf.inference.metrics import describe_interval
from imgclf.scrape.weak_classes import top_up_sizes, weakest_classes

ROOT = Path(__file__).resolve().parents[1]
HOCKEY = ROOT.parent / "shared" / "data" / "real-hockey"
# the card's sections, and the intervals in its figures
CARD_SECTIONS = ("where the images came from", "what the review quarantined", "95% interval", "licence")


def prepare(source: Path, work: Path) -> tuple[Path, dict[str, dict[str, int]]]:
    """The photos copied to ``work/data/image_dataset`` and a CSV that asks for what each has.
    A dataset already there (``--keep`` of an earlier run) is left as the run left it: the same
    command then continues, or skips every stage."""
    dataset = work / "data" / "image_dataset"
    fresh = not dataset.exists()
    counts: dict[str, dict[str, int]] = {}
    rows = []
    for split in ("train", "val"):
        for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            name = folder.name.replace(" ", "_")  # a class folder as the scraper names it
            if fresh:
                shutil.copytree(folder, dataset / split / name)
            count = sum(1 for f in folder.iterdir() if f.is_file())
            counts.setdefault(name, {})[split] = count
            rows.append([folder.name, count, name, split])
    terms = work / "searchterms.csv"
    with terms.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["search_term", "number_imgs", "folder_name", "train_val"])
        writer.writerows(rows)
    return terms, counts


def stage_lines(model_dir: Path) -> list[str]:
    """Each stage's status, wall time and outcome, from the pipeline's state file."""
    stages = json.loads((model_dir / "pipeline" / "state.json").read_text(encoding="utf-8"))["stages"]
    return [f"{key:10} {row['seconds']:6.0f} s  {row['outcome']}" for key, row in stages.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HOCKEY)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        sys.exit(f"{args.data}/train not found: give --data DIR with train/ and val/ class folders")
    print(describe_machine())
    work = args.keep or Path(tempfile.mkdtemp(prefix="imgclf-pipeline-real-"))
    work.mkdir(parents=True, exist_ok=True)
    terms, counts = prepare(args.data, work)
    command = [
        sys.executable,
        "-m",
        "imgclf",
        "pipeline",
        f"searchterms={terms}",
        f"paths.data_dir={work / 'data'}",
        f"paths.log_dir={work / 'logs'}",
        f"model.backbone={args.backbone}",
        'eval.overrides=["curve=true"]',
    ]
    # The scraper checks that it has a browser before it counts what is missing: give it the
    # system's (it is not started, as no class lacks images).
    env = {**os.environ, "IMGCLF_CHROMIUM": os.environ.get("IMGCLF_CHROMIUM", "/usr/bin/chromium")}
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, cwd=work, check=False, env=env)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"the pipeline failed ({run.returncode}):\n{run.stderr[-4000:]}")
    model_dir = work / "data" / "trained_model"
    metrics_path = model_dir / "pipeline" / "round1" / "eval_val" / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    print(
        f"\npipeline on {args.data.name} ({sum(c.get('train', 0) for c in counts.values())} train / "
        f"{sum(c.get('val', 0) for c in counts.values())} val photos, {len(counts)} classes), "
        f"{args.backbone}: this command {seconds:.0f} s; its stages, as the state file records them:"
    )
    for line in stage_lines(model_dir):
        print(f"  {line}")
    print(f"val accuracy {describe_interval(metrics['accuracy'], metrics['accuracy_interval'])}")
    for name, row in sorted(metrics["per_class"].items()):
        print(f"  {name:16} recall {describe_interval(row['recall'], row['recall_interval'])}")
    card = model_dir / "model_card.md"
    text = card.read_text(encoding="utf-8").casefold()
    held = ", ".join(f"{s} {'yes' if s in text else 'NO'}" for s in CARD_SECTIONS)
    print(
        f"model card: {card.name} {card.stat().st_size} bytes, "
        f"html {(model_dir / 'model_card.html').is_file()}; "
        f"mentions {held}"
    )
    report = metrics_path.parent
    for name in ("top_losses.png", "top_losses_cam.png", "learning_curve.png", "confusion_matrix.png"):
        print(f"  {name}: {'written' if (report / name).is_file() else 'MISSING'}")
    rows = metrics["learning_curve"]["rows"]
    print(
        "learning curve (linear fit): "
        + ", ".join(f"{r['train_images']} images {r['accuracy']:.3f}" for r in rows)
    )
    weak = weakest_classes(metrics_path, 2)
    print("a second round's top-up (loop.sizing=curve, the defaults: 20 to 100 images per class):")
    for name, size in top_up_sizes(metrics_path, weak, "curve").items():
        print(f"  {name}: {size.extra} images ({size.why})")
    print(f"\nthe run's folder: {work}" if args.keep else "")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
