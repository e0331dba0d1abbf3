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

from imgclf.data.folders import SPLITS, ImageDataset, labelled_for_model, model_split
from imgclf.data.hashing import sha256_file
from imgclf.data.transforms import TTA_VIEWS, TenCropViews
from imgclf.errors import ImgclfError
from imgclf.inference import card
from imgclf.inference import eval_report as report
from imgclf.inference.metrics import classification_metrics, most_confused_pairs, top_loss_entries
from imgclf.inference.runtimes import CKPT_NAME, load_predictor, model_paths

log = logging.getLogger(__name__)


def curve_of(predictor: Any, cfg: DictConfig, evaluated: Any, report_dir: Path) -> dict[str, Any]:
    """``curve=true``: :func:`imgclf.inference.curve.learning_curve` on this split, plotted."""
    from imgclf.inference.curve import learning_curve, plot_learning_curve, torch_predictor

    if cfg.split == "train":
        raise ImgclfError("curve=true measures on images the fits did not see: use split=val or split=test")
    network = torch_predictor(predictor, cfg.ckpt_path)
    train = model_split(cfg.data.root, "train", network.record.get("val_split"))
    curve = learning_curve(network, train, evaluated, int(cfg.batch_size), int(cfg.num_workers))
    report_dir.mkdir(parents=True, exist_ok=True)
    title = f"Recall on {cfg.split} against train images per class"
    curve["plot"] = str(plot_learning_curve(curve, report_dir / "learning_curve.png", title))
    return curve


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    split = cfg.split
    if split not in SPLITS:
        raise ImgclfError(f"split={split!r}; use {', '.join(SPLITS)}")
    predictor = load_predictor(cfg.ckpt_path, cfg.runtime, precision=cfg.precision)
    listing = model_split(cfg.data.root, split, predictor.record.get("val_split"))
    samples = labelled_for_model(listing, predictor.classes, predictor.source)
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
            # the model.ckpt measured (an exported file's, the one it came from): the model card
            # shows a report only while it is of the model.ckpt beside the card
            "model_sha256": (
                predictor.source_sha256 if predictor.runtime == "onnx" else sha256_file(predictor.source)
            ),
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
    if cfg.get("curve"):
        metrics["learning_curve"] = curve_of(predictor, cfg, listing, report_dir)
    report.write_report(metrics, report_dir)
    metrics["report_dir"] = str(report_dir)
    model_dir = model_paths(cfg.ckpt_path)[1]
    if (model_dir / CKPT_NAME).is_file():  # the card describes a model.ckpt; an ONNX file alone has none
        card.record_evaluation(model_dir, split, report_dir)
        card.write_card(model_dir, cfg.data.root)
    return metrics
