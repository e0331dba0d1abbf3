"""``review(cfg)``: read a dataset once, flag what deserves a look, write the report, maybe quarantine.

Stages: list the splits -> decode and hash each image -> broken and tiny files -> duplicate
groups (exact, near, across splits) -> suspected wrong labels (cross-validated) -> HTML report and
``findings.json`` -> optional quarantine of the chosen reasons. ``undo=true`` only puts
quarantined files back.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imgclf.errors import ImgclfError
from imgclf.io import atomic_write_json, atomic_write_text
from imgclf.review import quarantine as quarantining
from imgclf.review.duplicates import duplicate_flags, duplicate_groups
from imgclf.review.findings import Flag, class_counts, dataset_notes
from imgclf.review.html import Thumbnails, render
from imgclf.review.labels import suspect_labels
from imgclf.review.scan import (
    ScannedImage,
    attach_manifest,
    check_classes,
    dataset_files,
    scan_dataset,
)
from imgclf.review.settings import ReviewSettings
from imgclf.settings import typed

log = logging.getLogger(__name__)


def file_flags(images: list[ScannedImage], min_side: int) -> list[Flag]:
    """Files that cannot be used (undecodable, truncated) or are too small to be worth training on."""
    flags = [Flag(im.key, im.problem, im.detail) for im in images if not im.usable]
    flags += [
        Flag(
            im.key,
            "tiny",
            f"{im.width}x{im.height} pixels, under {min_side} on a side",
            score=float(min(im.width, im.height)),
        )
        for im in images
        if im.usable and min(im.width, im.height) < min_side
    ]
    return flags


def check_weights(cfg: DictConfig) -> None:
    """Fail before reading any image when the label check needs ImageNet weights it cannot have."""
    labels = cfg.labels
    if labels.enabled and labels.features != "pixels" and cfg.model.pretrained and not cfg.model.weights_path:
        from imgclf.models.backbones import fetch_weights

        try:
            fetch_weights(cfg.model.backbone, cfg.model.allow_download)
        except ImgclfError as exc:  # training's message, plus the review's own way out
            raise ImgclfError(
                f"{exc} For the review, labels.features=pixels or labels.enabled=false need no weights."
            ) from None


class Stopwatch:
    """Seconds per stage, for the log, ``findings.json`` and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 3)
        self._last = now


def recorded_val_files(ckpt_path: str | None, root: Path) -> list[str]:
    """The validation files a model held out of ``train/`` (``data.val_fraction``), when the
    dataset has no ``val/`` and the model file at ``ckpt_path`` recorded a split of it."""
    if not ckpt_path or (root / "val").is_dir() or not Path(ckpt_path).is_file():
        return []
    from imgclf.models.checkpoint import read_model

    split = read_model(ckpt_path).get("val_split") or {}
    files = [name for name in split.get("files", []) if (root / "train" / name).is_file()]
    if split and not files:
        log.warning(
            "none of the %d validation files recorded in %s is in %s; reviewing train/ as one split",
            len(split["files"]),
            ckpt_path,
            root / "train",
        )
    return files


def find_problems(cfg: DictConfig, root: Path, clock: Stopwatch) -> dict[str, Any]:
    """Everything the review knows, before any file moves."""
    val_files = recorded_val_files(cfg.ckpt_path, root)
    layout, ignored = dataset_files(root, val_files)
    classes = check_classes(layout, root)
    pixel_side = cfg.labels.pixel_size if cfg.labels.enabled and cfg.labels.features != "backbone" else None
    images = scan_dataset(root, layout, pixel_side)
    matched = attach_manifest(root, images)
    clock.lap("scan")
    checks = cfg.checks
    flags = file_flags(images, checks.min_side)
    groups = duplicate_groups(images, checks.near_duplicate_distance, checks.near_duplicate_difference)
    flags += duplicate_flags(groups)
    clock.lap("duplicates")
    counts = class_counts(images, list(layout), classes)
    notes = dataset_notes(counts, checks.imbalance_ratio, checks.min_class_images)
    if val_files:
        notes.append(
            f"no val/ folder: the {len(val_files)} images of train/ that {cfg.ckpt_path} validated on "
            "are the val split here, so a copy of one of them elsewhere in train/ counts as leakage"
        )
    if ignored:
        notes.append(
            f"{len(ignored)} file(s) without an image extension are ignored by training, "
            f"e.g. {ignored[0].relative_to(root).as_posix()}"
        )
    if cfg.labels.enabled:
        group_of = {im.key: number for number, group in enumerate(groups) for im in group}
        label_cfg = OmegaConf.to_container(cfg.labels, resolve=True)
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        suspects, skipped = suspect_labels(root, images, group_of, label_cfg, model_cfg, cfg.seed)
        flags += suspects
        notes += skipped
        clock.lap("labels")
    manifest = (
        f"manifest: source URLs for {matched} of {len(images)} images"
        if matched
        else "no manifest.jsonl: source URLs unknown"
    )
    summary = {
        "root": str(root),
        "images": len(images),
        "classes": classes,
        "splits": list(layout),
        "counts": counts,
        "manifest": manifest,
    }
    return {"summary": summary, "images": images, "flags": flags, "notes": notes}


def quarantine_flagged(root: Path, flags: list[Flag], reasons: list[str]) -> list[dict[str, Any]]:
    chosen = defaultdict(list)
    for flag in flags:
        if flag.reason in reasons:
            chosen[flag.path].append(flag.reason)
    return quarantining.quarantine(root, dict(chosen))


def write_report(cfg: DictConfig, root: Path, found: dict[str, Any], moved: list[dict[str, Any]]) -> Path:
    report_dir = Path(cfg.report_dir)
    flags: list[Flag] = found["flags"]
    findings = {
        **found["summary"],
        "notes": found["notes"],
        "flag_counts": dict(Counter(f.reason for f in flags)),
        "flags": [f.as_dict() for f in flags],
        "quarantined": moved,
    }
    atomic_write_json(report_dir / "findings.json", findings)
    folder = quarantining.quarantine_dir(root)
    thumbs = Thumbnails(
        root, cfg.report.thumbnail_size, {e["path"]: folder / e["quarantined"] for e in moved}
    )
    page = render(
        found["summary"],
        found["images"],
        flags,
        found["notes"],
        thumbs,
        {e["path"] for e in moved},
        cfg.report.max_thumbnails_per_class,
    )
    atomic_write_text(report_dir / "report.html", page)
    return report_dir / "report.html"


def review(cfg: DictConfig) -> dict[str, Any]:
    """The review of ``cfg`` (conf/review.yaml; checked against :class:`ReviewSettings` unless it is so)."""
    cfg = typed(cfg, ReviewSettings)
    root = Path(cfg.data.root)
    if cfg.undo:
        restored = quarantining.undo(root)
        return {
            "restored": [e["path"] for e in restored],
            "quarantine": str(quarantining.quarantine_dir(root)),
        }
    check_weights(cfg)
    clock = Stopwatch()
    found = find_problems(cfg, root, clock)
    moved = quarantine_flagged(root, found["flags"], list(cfg.fix_reasons)) if cfg.fix == "quarantine" else []
    page = write_report(cfg, root, found, moved)
    clock.lap("report")
    log.info("review stages (s): %s", clock.seconds)
    return {
        **found["summary"],
        "flags": found["flags"],
        "notes": found["notes"],
        "quarantined": moved,
        "quarantine": str(quarantining.quarantine_dir(root)),
        "seconds": clock.seconds,
        "report": str(page),
    }
