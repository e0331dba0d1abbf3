"""``evaluate(cfg)``: accuracy and a report of the saved model on one split.

The report folder holds metrics.json (accuracy, per-class precision/recall/F1, confusion matrix,
most-confused pairs, calibration with its ECE, the worst images, and the test-time-augmentation
accuracy when ``tta=true``), per_class.csv, confusion_matrix.png, reliability_diagram.png and
top_losses.png (:mod:`imgclf.inference.eval_report`), and with ``explain=true`` top_losses_cam.png: the
same images with the Grad-CAM heatmap of the class the model chose (:mod:`imgclf.inference.explain`).
Images that cannot be decoded are left out and listed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imgclf.data.folders import ImageDataset, labelled_for_model, model_split
from imgclf.data.hashing import sha256_file
from imgclf.data.images import load_image
from imgclf.data.transforms import TTA_VIEWS, TenCropViews
from imgclf.errors import ImgclfError
from imgclf.inference import card
from imgclf.inference import eval_report as report
from imgclf.inference.explain import explain, target_layer
from imgclf.inference.metrics import classification_metrics, most_confused_pairs, top_loss_entries
from imgclf.inference.predict import PredictorBase
from imgclf.inference.runtimes import CKPT_NAME, load_predictor, model_paths
from imgclf.inference.settings import EvalSettings
from imgclf.models.checkpoint import load_model
from imgclf.models.classifier import ImageClassifier
from imgclf.settings import typed

log = logging.getLogger(__name__)


def curve_of(predictor: Any, cfg: EvalSettings, evaluated: Any, report_dir: Path) -> dict[str, Any]:
    """``curve=true``: :func:`imgclf.inference.curve.learning_curve` on this split, plotted."""
    from imgclf.inference.curve import learning_curve, plot_learning_curve

    if cfg.split == "train":
        raise ImgclfError("curve=true measures on images the fits did not see: use split=val or split=test")
    network = torch_network(predictor, cfg.ckpt_path, "the learning curve")
    train = model_split(cfg.data.root, "train", predictor.record.get("val_split"))
    curve = learning_curve(network, predictor, train, evaluated, cfg.batch_size, cfg.num_workers)
    report_dir.mkdir(parents=True, exist_ok=True)
    title = f"Recall on {cfg.split} against train images per class"
    curve["plot"] = str(plot_learning_curve(curve, report_dir / "learning_curve.png", title))
    return curve


def evaluate(cfg: Any) -> dict[str, Any]:
    """The report of ``cfg`` (conf/eval.yaml; checked against :class:`EvalSettings` unless it is one)."""
    cfg = typed(cfg, EvalSettings)
    split = cfg.split
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
            tta, max(1, cfg.batch_size // TTA_VIEWS), cfg.num_workers, "test-time augmentation"
        )
        metrics["tta_accuracy"] = float((tta_probabilities.argmax(dim=1) == tta_targets).float().mean())
    overlays = None
    if cfg.explain:
        overlays, metrics["explanations"] = explain_top_losses(predictor, cfg, metrics["top_losses"])
    report_dir = Path(cfg.report_dir)
    if cfg.curve:
        metrics["learning_curve"] = curve_of(predictor, cfg, listing, report_dir)
    report.write_report(metrics, report_dir, overlays)
    metrics["report_dir"] = str(report_dir)
    model_dir = model_paths(cfg.ckpt_path)[1]
    if (model_dir / CKPT_NAME).is_file():  # the card describes a model.ckpt; an ONNX file alone has none
        card.record_evaluation(model_dir, split, report_dir)
        card.write_card(model_dir, cfg.data.root)
    return metrics


def torch_network(predictor: PredictorBase, ckpt_path: str, need: str = "heatmaps") -> ImageClassifier:
    """The PyTorch network behind the predictor: its own, or for an exported file the model.ckpt it
    was exported from (ONNX Runtime gives no gradients or backbone features; ``load_predictor``
    only runs an exported file that matches the model.ckpt beside it)."""
    if predictor.runtime == "torch":
        return predictor.model
    ckpt = model_paths(ckpt_path)[1] / CKPT_NAME
    if not ckpt.is_file():
        raise ImgclfError(f"{need} need the PyTorch model and there is no {ckpt}")
    return load_model(ckpt)[0]


def explain_top_losses(
    predictor: PredictorBase, cfg: EvalSettings, entries: list[dict[str, Any]]
) -> tuple[list[Any] | None, dict[str, Any]]:
    """Overlays of the predicted class's heatmap on the top losses, and what metrics.json says of
    them; a model that cannot be explained leaves the rest of the report as it is."""
    try:
        model = torch_network(predictor, cfg.ckpt_path)
        layer, _ = target_layer(model)
    except ImgclfError as exc:
        log.warning("no heatmaps in the report: %s", exc)
        return None, {"file": None, "skipped": str(exc)}
    images = [load_image(entry["path"]) for entry in entries]
    predicted = [predictor.classes.index(entry["predicted"]) for entry in entries]
    explained = explain(model, predictor.transform, predictor.preprocessing, images, predicted)
    return [picture for _, picture in explained], {
        "file": report.CAM_SHEET,
        "method": "grad-cam",
        "layer": layer,
        "class": "predicted",
    }
