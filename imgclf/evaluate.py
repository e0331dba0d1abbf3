"""``evaluate(cfg)``: accuracy and a report of the saved model on one split.

The report folder holds metrics.json (accuracy, per-class precision/recall/F1, confusion matrix,
most-confused pairs, calibration with its ECE, the worst images, and the test-time-augmentation
accuracy when ``tta=true``), per_class.csv, confusion_matrix.png, reliability_diagram.png and
top_losses.png.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from imgclf import report
from imgclf.data import list_split
from imgclf.errors import ImgclfError
from imgclf.images import ImageDecodeError, load_image
from imgclf.io import atomic_open, atomic_write_json
from imgclf.predict import Predictor

log = logging.getLogger(__name__)


def split_samples(
    predictor: Predictor, root: str | Path, split: str
) -> tuple[list[tuple[Path, int]], list[Path]]:
    """The split's images labelled with the *model's* class indices, and the files skipped as unreadable.

    Fails, naming both sides, when the folder's classes and the model's do not fit.
    """
    listing = list_split(root, split)
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
    return listing.samples(predictor.classes), listing.skipped.get("unreadable", [])


class EvalImages(Dataset):
    """(tensor, target, index); an image that fails to decode gets index -1 and is left out later.

    ``ImageListDataset`` swaps a broken image for a random other one, which keeps training going
    but would tie an image's prediction to the wrong file in the report.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable, side: int) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.side = side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path, target = self.samples[index]
        try:
            return self.transform(load_image(path)), target, index
        except ImageDecodeError as exc:
            log.warning("left out of the evaluation: %s", exc)
            return self.transform(Image.new("RGB", (self.side, self.side))), target, -1


def predict_split(
    predictor: Predictor,
    dataset: EvalImages,
    batch_size: int,
    num_workers: int,
    description: str = "evaluating",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities, targets and sample indices of the decodable images.

    Items of shape [views, 3, H, W] (test-time augmentation) get their views' probabilities averaged.
    """
    probabilities, targets, indices = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    with Progress(transient=True) as progress:
        task = progress.add_task(description, total=len(dataset))
        for images, target, index in loader:
            if images.dim() == 5:
                views = images.shape[1]
                probs = predictor.predict_batch(images.flatten(0, 1)).unflatten(0, (-1, views)).mean(1)
            else:
                probs = predictor.predict_batch(images)
            kept = index >= 0
            probabilities.append(probs[kept])
            targets.append(target[kept])
            indices.append(index[kept])
            progress.advance(task, len(target))
    if not torch.cat(indices).numel():
        raise ImgclfError(f"none of the {len(dataset)} images could be decoded; see the warnings above")
    return torch.cat(probabilities).numpy(), torch.cat(targets).numpy(), torch.cat(indices).numpy()


def classification_metrics(
    probabilities: np.ndarray, targets: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(classes)))
    predictions = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=labels, zero_division=0
    )
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            targets, predictions, labels=labels, average=average, zero_division=0
        )
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    return {
        "accuracy": float((predictions == targets).mean()),
        "num_images": len(targets),
        "classes": list(classes),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "averages": averages,
        "confusion_matrix": confusion_matrix(targets, predictions, labels=labels).tolist(),
    }


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=classes).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45
    )
    ax.set_title(title)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return path


def tta_accuracy(predictor: Predictor, samples: list[tuple[Path, int]], cfg: DictConfig) -> float:
    """Accuracy with each image's ten crops and mirrors averaged (ten times the compute)."""
    dataset = EvalImages(
        samples, report.TenCropViews(predictor.preprocessing), predictor.preprocessing["crop"]
    )
    batch = max(1, int(cfg.batch_size) // report.TTA_VIEWS)
    probabilities, targets, _ = predict_split(
        predictor, dataset, batch, cfg.num_workers, "test-time augmentation"
    )
    return float((probabilities.argmax(axis=1) == targets).mean())


def write_report(
    metrics: dict[str, Any], top: list[dict[str, Any]], classes: list[str], report_dir: Path
) -> None:
    split = metrics["split"]
    atomic_write_json(report_dir / "metrics.json", metrics)
    report.write_per_class_csv(metrics, report_dir / "per_class.csv")
    plot_confusion_matrix(
        metrics["confusion_matrix"],
        classes,
        report_dir / "confusion_matrix.png",
        f"{split}: accuracy {metrics['accuracy']:.4f}",
    )
    report.plot_reliability(metrics["calibration"], report_dir / "reliability_diagram.png", split)
    report.plot_contact_sheet(top, report_dir / "top_losses.png")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    split = cfg.split
    if split not in ("train", "val", "test"):
        raise ImgclfError(f"split={split!r}; use train, val or test")
    predictor = Predictor.from_file(cfg.ckpt_path, precision=cfg.precision)
    samples, unreadable = split_samples(predictor, cfg.data.root, split)
    dataset = EvalImages(samples, predictor.transform, predictor.preprocessing["crop"])
    probabilities, targets, indices = predict_split(predictor, dataset, cfg.batch_size, cfg.num_workers)
    classes = predictor.classes
    metrics = classification_metrics(probabilities, targets, classes)
    decoded = set(indices.tolist())
    left_out = unreadable + [path for i, (path, _) in enumerate(samples) if i not in decoded]
    metrics.update(
        {
            "split": split,
            "model": str(cfg.ckpt_path),
            "data_root": str(cfg.data.root),
            "left_out": [str(path) for path in left_out],
        }
    )
    metrics["most_confused"] = report.most_confused_pairs(
        metrics["confusion_matrix"], classes, cfg.most_confused
    )
    metrics["calibration"] = report.calibration(probabilities, targets, cfg.calibration_bins)
    paths = [samples[i][0] for i in indices]
    top = report.top_loss_entries(probabilities, targets, paths, classes, cfg.top_losses)
    metrics["top_losses"] = top
    if cfg.tta:
        metrics["tta_accuracy"] = tta_accuracy(predictor, samples, cfg)

    report_dir = Path(cfg.report_dir)
    write_report(metrics, top, classes, report_dir)
    print(f"accuracy: {metrics['accuracy']:.4f}")
    if left_out:
        print(f"left out {len(left_out)} unreadable image(s), listed in metrics.json")
    if cfg.tta:
        print(f"tta accuracy: {metrics['tta_accuracy']:.4f} (ten crops and mirrors averaged)")
    print(f"expected calibration error: {metrics['calibration']['ece']:.4f}")
    for pair in metrics["most_confused"][:3]:
        print(f"confused: {pair['true']} -> {pair['predicted']} ({pair['count']}x)")
    print(f"report: {report_dir}")
    return metrics
