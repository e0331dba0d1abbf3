"""``evaluate(cfg)``: accuracy and a report of the saved model on one split.

The report folder holds metrics.json (accuracy, per-class precision/recall/F1, confusion matrix,
most-confused pairs, calibration with its ECE, the worst images, and the test-time-augmentation
accuracy when ``tta=true``), per_class.csv, confusion_matrix.png, reliability_diagram.png and
top_losses.png (:mod:`imgclf.inference.eval_report`). Images that cannot be decoded are left out and listed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from imgclf.data.folders import SPLITS, ImageDataset, SplitListing, list_split, split_listings
from imgclf.data.transforms import TTA_VIEWS, TenCropViews
from imgclf.errors import ImgclfError
from imgclf.inference import eval_report as report
from imgclf.inference.metrics import classification_metrics, most_confused_pairs, top_loss_entries
from imgclf.inference.predict import PredictorBase
from imgclf.inference.runtimes import load_predictor

log = logging.getLogger(__name__)


def split_listing(predictor: PredictorBase, root: str | Path, split: str) -> SplitListing:
    """The split's files; without a val/ folder, train and val are the split the model recorded."""
    root = Path(root)
    val_split = predictor.record.get("val_split")
    if split in ("train", "val") and not (root / "val").is_dir() and val_split:
        return split_listings(root, val_split)[split]
    return list_split(root, split)


def split_samples(predictor: PredictorBase, listing: SplitListing) -> list[tuple[Path, int]]:
    """The split's images labelled with the *model's* class indices.

    Fails, naming both sides, when the folder's classes and the model's do not fit.
    """
    unknown = sorted(set(listing.classes) - set(predictor.classes))
    if unknown:
        raise ImgclfError(
            f"{listing.directory} has classes the model does not know: {', '.join(unknown)}; "
            f"the model ({predictor.source}) was trained on: {', '.join(predictor.classes)}. "
            "Evaluate the model trained on this dataset (ckpt_path=...) or fix the class folders"
        )
    if len(listing.classes) < 2:
        raise ImgclfError(
            f"{listing.directory} has one class ({listing.classes[0]}); an evaluation needs images "
            f"of at least two of the model's classes ({', '.join(predictor.classes)})"
        )
    absent = sorted(set(predictor.classes) - set(listing.classes))
    if absent:
        log.warning(
            "%s has no images of %s: their recall is not measured", listing.directory, ", ".join(absent)
        )
    return listing.samples(predictor.classes)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    split = cfg.split
    if split not in SPLITS:
        raise ImgclfError(f"split={split!r}; use {', '.join(SPLITS)}")
    predictor = load_predictor(cfg.ckpt_path, cfg.runtime, precision=cfg.precision)
    listing = split_listing(predictor, cfg.data.root, split)
    samples = split_samples(predictor, listing)
    dataset = ImageDataset(samples, predictor.transform, on_error="mark")
    probabilities, targets, indices = predictor.predict_dataset(
        dataset, cfg.batch_size, cfg.num_workers, "evaluating"
    )
    if not len(indices):
        raise ImgclfError(f"none of the {len(samples)} images could be decoded; see the warnings above")
    classes = predictor.classes
    metrics = classification_metrics(probabilities, targets, classes, cfg.calibration_bins)
    decoded = set(indices.tolist())
    left_out = listing.skipped.get("not an image", []) + [
        p for i, (p, _) in enumerate(samples) if i not in decoded
    ]
    metrics.update(
        {
            "split": split,
            "model": str(cfg.ckpt_path),
            "runtime": predictor.runtime,
            "model_file": str(predictor.source),
            "precision": predictor.precision,
            "data_root": str(cfg.data.root),
            "left_out": [str(path) for path in left_out],
        }
    )
    metrics["most_confused"] = most_confused_pairs(metrics["confusion_matrix"], classes, cfg.most_confused)
    paths = [samples[i][0] for i in indices.tolist()]
    metrics["top_losses"] = top_loss_entries(probabilities, targets, paths, classes, cfg.top_losses)
    if cfg.tta:
        tta = ImageDataset(samples, TenCropViews(predictor.preprocessing), on_error="mark")
        tta_probabilities, tta_targets, _ = predictor.predict_dataset(
            tta, max(1, int(cfg.batch_size) // TTA_VIEWS), cfg.num_workers, "test-time augmentation"
        )
        metrics["tta_accuracy"] = float((tta_probabilities.argmax(dim=1) == tta_targets).float().mean())
    report_dir = Path(cfg.report_dir)
    report.write_report(metrics, report_dir)
    metrics["report_dir"] = str(report_dir)
    return metrics
