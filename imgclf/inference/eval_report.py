"""The evaluation report's files: metrics.json, per_class.csv, three plots, and the top losses'
Grad-CAM heatmaps when the evaluation made them.

Plots are matplotlib figures written straight to PNG files, without pyplot's global state (no
``matplotlib.use``, no pyplot).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imgclf.io import atomic_open, atomic_write_json

CAM_SHEET = "top_losses_cam.png"


def save_figure(figure, path: Path) -> Path:
    """A matplotlib figure as a PNG file, written atomically."""
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    return path


def _plain(text: str) -> str:
    """Class names are folder names: keep matplotlib from reading ``$`` as maths."""
    return text.replace("$", r"\$")


def plot_reliability(result: Mapping[str, Any], path: Path, title: str) -> Path:
    """Accuracy per confidence bin (bars) against the bin's mean confidence (red), and the diagonal."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    width = 1.0 / result["num_bins"]
    filled = [b for b in result["bins"] if b["count"]]
    axes.bar(
        [b["lower"] for b in filled],
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    axes.hlines(
        [b["confidence"] for b in filled],
        [b["lower"] for b in filled],
        [b["upper"] for b in filled],
        colors="tab:red",
        linewidth=2.5,
        label="mean confidence",
    )
    axes.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (top probability)",
        ylabel="accuracy",
        title=f"{_plain(title)}: ECE {result['ece']:.4f}",
    )
    axes.legend(loc="upper left")
    figure.tight_layout()
    return save_figure(figure, path)


def plot_contact_sheet(
    entries: Sequence[Mapping[str, Any]],
    path: Path,
    thumbnail: int = 160,
    images: Sequence[Any] | None = None,
) -> Path:
    """The images of ``entries`` in a grid, each titled true label / predicted label (probability).

    ``images``: PIL images to show in their place (the heatmap overlays), else each entry's file.
    """
    from matplotlib.figure import Figure

    from imgclf.data.images import ImageDecodeError, load_image

    columns = min(4, max(1, len(entries)))
    rows = max(1, math.ceil(len(entries) / columns))
    figure = Figure(figsize=(columns * 2.6, rows * 3.0))
    for number, entry in enumerate(entries, start=1):
        axes = figure.add_subplot(rows, columns, number)
        axes.axis("off")
        try:
            image = images[number - 1].copy() if images is not None else load_image(entry["path"])
            image.thumbnail((thumbnail, thumbnail))
            axes.imshow(image)
        except ImageDecodeError:
            axes.text(0.5, 0.5, "cannot decode", ha="center", va="center")
        axes.set_title(
            f"true: {_plain(entry['true'])} (p={entry['true_probability']:.2f})\n"
            f"predicted: {_plain(entry['predicted'])} (p={entry['probability']:.2f})",
            fontsize=8,
            color="darkred" if entry["true"] != entry["predicted"] else "black",
        )
    if not entries:
        figure.text(0.5, 0.5, "no images", ha="center")
    figure.tight_layout()
    return save_figure(figure, path)


def write_per_class_csv(metrics: Mapping[str, Any], path: Path) -> Path:
    lines = ["class,precision,recall,f1,support"]
    lines += [
        f"{name},{m['precision']:.4f},{m['recall']:.4f},{m['f1']:.4f},{m['support']}"
        for name, m in metrics["per_class"].items()
    ]
    with atomic_open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str
) -> Path:
    from matplotlib.figure import Figure

    size = max(4.0, 0.5 * len(classes) + 2)
    figure = Figure(figsize=(size, size))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    top = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axes.text(
                j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black"
            )
    ticks = range(len(classes))
    axes.set_xticks(ticks, [_plain(c) for c in classes], rotation=45, ha="right")
    axes.set_yticks(ticks, [_plain(c) for c in classes])
    axes.set(xlabel="predicted label", ylabel="true label", title=_plain(title))
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    return save_figure(figure, path)


def write_report(metrics: Mapping[str, Any], report_dir: Path, overlays: Sequence[Any] | None = None) -> None:
    """``overlays``: the top losses with their heatmaps, for top_losses_cam.png."""
    split = metrics["split"]
    atomic_write_json(report_dir / "metrics.json", metrics)
    write_per_class_csv(metrics, report_dir / "per_class.csv")
    plot_confusion_matrix(
        metrics["confusion_matrix"],
        metrics["classes"],
        report_dir / "confusion_matrix.png",
        f"{split}: accuracy {metrics['accuracy']:.4f}",
    )
    plot_reliability(metrics["calibration"], report_dir / "reliability_diagram.png", split)
    plot_contact_sheet(metrics["top_losses"], report_dir / "top_losses.png")
    if overlays is not None:
        plot_contact_sheet(metrics["top_losses"], report_dir / CAM_SHEET, images=overlays)
