"""Read every image of a dataset once and keep what the checks need: hashes, size, small pixels.

Each file is read and decoded a single time here; the duplicate checks work on hashes and a
16x16 grey fingerprint, the pixel features on a small RGB copy. Only backbone features (they
need model-sized pictures) and the report's thumbnails (of the images it shows) decode again.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf.data.folders import SPLITS, list_split
from imgclf.data.hashing import perceptual_hash, sha256_bytes
from imgclf.data.images import ImageDecodeError, load_image
from imgclf.errors import ImgclfError

log = logging.getLogger(__name__)

FINGERPRINT_SIDE = 16


@dataclass
class ScannedImage:
    """One file of the dataset and what was learnt by decoding it."""

    path: Path  # relative to the dataset root
    split: str
    label: str
    sha256: str
    problem: str | None = None  # "undecodable" or "truncated" when it cannot be used
    detail: str = ""
    width: int = 0
    height: int = 0
    pixel_sha256: str = ""  # same pixels in another encoding is still an exact duplicate
    phash: int = 0
    fingerprint: np.ndarray | None = None  # FINGERPRINT_SIDE^2 grey levels, uint8
    pixels: np.ndarray | None = None  # small RGB copy for pixel features, uint8
    source: dict[str, Any] = field(default_factory=dict)  # the manifest row, when there is one

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def key(self) -> str:
        return self.path.as_posix()


def dataset_files(
    root: Path, val_files: Collection[str] = ()
) -> tuple[dict[str, dict[str, list[Path]]], list[Path]]:
    """``{split: {class: [files]}}`` of the splits present, and the files training ignores.

    Listing goes through :func:`imgclf.data.folders.list_split` without its header check, so a missing
    or empty split fails with the same message as training, and broken images are kept for the
    review to report instead of being skipped silently. ``val_files`` (paths relative to
    ``train/``, as a model file records the validation split it held out of a dataset without
    ``val/``) are listed as the ``val`` split.
    """
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        list_split(root, "train", verify=False)  # raises the layout error naming what is missing
    listings = {split: list_split(root, split, verify=False) for split in splits}
    if val_files and "train" in listings and "val" not in listings:
        train = listings.pop("train")
        held = {train.directory / name for name in val_files}
        listings = {"train": train.without(held, "train"), "val": train.only(held, "val"), **listings}
        listings["train"].skipped = train.skipped
    layout, ignored = {}, []
    for split, listing in listings.items():
        layout[split] = listing.files
        for paths in listing.skipped.values():
            ignored.extend(paths)
    return layout, ignored


def _header_ok(data: bytes) -> bool:
    """Pillow recognises the format: a failed decode after this means a damaged image."""
    try:
        with Image.open(io.BytesIO(data)):
            return True
    except Exception:  # Pillow raises many types for non-images; all mean "no"
        return False


def _small(image: Image.Image, side: int, mode: str) -> np.ndarray:
    return np.asarray(image.convert(mode).resize((side, side), Image.BILINEAR), dtype=np.uint8).reshape(-1)


def scan_file(root: Path, path: Path, split: str, label: str, pixel_side: int | None) -> ScannedImage:
    data = path.read_bytes()
    item = ScannedImage(path.relative_to(root), split, label, sha256_bytes(data))
    try:
        image = load_image(data)
    except ImageDecodeError as exc:
        item.problem = "truncated" if _header_ok(data) else "undecodable"
        item.detail = str(exc).removeprefix("uploaded data: ")
        return item
    item.width, item.height = image.size
    item.pixel_sha256 = sha256_bytes(f"{image.size}".encode() + image.tobytes())
    item.phash = perceptual_hash(image)
    item.fingerprint = _small(image, FINGERPRINT_SIDE, "L")
    if pixel_side:
        item.pixels = _small(image, pixel_side, "RGB")
    return item


def attach_manifest(root: Path, images: list[ScannedImage]) -> int:
    """Copy the scraper's manifest row (source URL, search term) onto each image; returns matches."""
    from imgclf.scrape.manifest import MANIFEST_NAME, read_manifest

    rows = {row["path"]: row for row in read_manifest(root / MANIFEST_NAME)}
    matched = 0
    for item in images:
        row = rows.get(item.key)
        if row:
            item.source = row
            matched += 1
    return matched


def check_classes(layout: dict[str, dict[str, list[Path]]], root: Path) -> list[str]:
    """Every class the dataset names; fails on one class, as training would."""
    classes = sorted({label for files in layout.values() for label in files})
    if len(classes) < 2:
        raise ImgclfError(
            f"{root} has one class ({classes[0]}); a classifier needs at least two class folders "
            "in each split"
        )
    return classes


def scan_dataset(
    root: Path, layout: dict[str, dict[str, list[Path]]], pixel_side: int | None
) -> list[ScannedImage]:
    """Decode and hash every listed file once, with a progress bar."""
    from rich.console import Console
    from rich.progress import Progress

    jobs = [
        (path, split, label)
        for split, files in layout.items()
        for label, paths in files.items()
        for path in paths
    ]
    images = []
    with Progress(transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task("reading images", total=len(jobs))
        for path, split, label in jobs:
            images.append(scan_file(root, path, split, label, pixel_side))
            progress.advance(task)
    return images
