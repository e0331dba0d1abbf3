"""The dataset folder as the scraper sees it: what is there, what would be a duplicate, where the
next image goes.

Disk is the truth for how many images a class has (any image file counts, including ones a user
added by hand); the manifest is the history of what was downloaded, from where. Both feed one
duplicate index spanning every split and class, so an image already in ``train`` is refused for
``val``, and a picture the user deleted after review is not fetched again.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf.data.hashing import (
    NearDuplicateIndex,
    hash_to_hex,
    hex_to_hash,
    perceptual_hash,
    sha256_file,
)
from imgclf.data.images import ImageDecodeError, is_image, load_image
from imgclf.errors import ImgclfError
from imgclf.io import create_new_bytes
from imgclf.paths import inside
from imgclf.scrape.manifest import MANIFEST_NAME, append_row, read_manifest, rewrite_manifest
from imgclf.scrape.searchterms import SPLITS, check_class_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedImage:
    """A downloaded image, decoded and re-encoded, ready to be checked and saved."""

    jpeg: bytes
    sha256: str
    source_sha256: str
    phash: int
    width: int
    height: int


@dataclass(frozen=True)
class Origin:
    """Where an image came from, for its manifest row."""

    search_term: str
    engine: str
    source_url: str
    final_url: str
    page_url: str | None


class DatasetStore:
    """Counts, duplicate checks and atomic saves under one dataset root."""

    def __init__(self, root: str | Path, near_duplicate_distance: int) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / MANIFEST_NAME
        self.near_duplicate_distance = near_duplicate_distance
        self._load()

    # -- reading what is there -------------------------------------------------------------

    def _load(self) -> None:
        self._rows: list[dict[str, Any]] = read_manifest(self.manifest_path, repair=True)
        self._exact: dict[str, str] = {}  # sha256 (saved or source) -> path
        self._near: NearDuplicateIndex[str] = NearDuplicateIndex(self.near_duplicate_distance)
        self._urls: set[str] = set()
        self._counts: dict[tuple[str, str], int] = {}
        self._next_number: dict[tuple[str, str], int] = {}
        by_path = {row["path"]: row for row in self._rows}
        for row in self._rows:
            self._remember_row(row)
        for path in self._image_files():
            rel = path.relative_to(self.root).as_posix()
            split, folder = path.parent.parent.name, path.parent.name
            key = (split, folder)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._bump_number(split, folder, path.name)
            row = by_path.get(rel)
            if row is None or row.get("bytes") != path.stat().st_size:
                self._index_file(path, rel)

    def _image_files(self) -> list[Path]:
        files, outside = [], []
        for split in SPLITS:
            split_dir = self.root / split
            if split_dir.is_dir():
                for path in sorted(split_dir.glob("*/*")):
                    if path.name.startswith(".") or not path.is_file():
                        continue
                    if not inside(path, self.root):
                        outside.append(path)
                    elif is_image(path):
                        files.append(path)
        if outside:
            log.warning(
                "%s: skipped %d link(s) that lead out of the dataset (first: %s)",
                self.root,
                len(outside),
                outside[0],
            )
        return files

    def _folder(self, split: str, folder: str) -> Path:
        """``{root}/{split}/{folder}``, refused when its name or a link would lead out of the dataset."""
        if split not in SPLITS:
            raise ImgclfError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        folder_dir = self.root / split / check_class_name(folder, f"the scrape of {self.root}")
        if not inside(folder_dir, self.root):
            raise ImgclfError(
                f"{folder_dir} is a link that leads out of the dataset; the scraper writes only inside "
                f"{self.root}: replace the link with a folder"
            )
        return folder_dir

    def _remember_row(self, row: dict[str, Any]) -> None:
        path = row["path"]
        for digest in (row.get("sha256"), row.get("source_sha256")):
            if digest:
                self._exact.setdefault(digest, path)
        if row.get("phash"):
            self._near.add(path, hex_to_hash(row["phash"]))
        for url in (row.get("source_url"), row.get("final_url")):
            if url:
                self._urls.add(url)
        parts = path.split("/")
        if len(parts) == 3:
            self._bump_number(parts[0], parts[1], parts[2])

    def _index_file(self, path: Path, rel: str) -> None:
        """Hash an image the manifest does not describe (added by hand, or a kill lost its row)."""
        self._exact.setdefault(sha256_file(path), rel)
        try:
            self._near.add(rel, perceptual_hash(load_image(path)))
        except ImageDecodeError as exc:
            log.warning("%s: not indexed for duplicates (%s)", rel, exc)

    def _bump_number(self, split: str, folder: str, name: str) -> None:
        match = re.fullmatch(re.escape(folder) + r"_(\d+)\.jpg", name)
        if match:
            key = (split, folder)
            self._next_number[key] = max(self._next_number.get(key, 1), int(match[1]) + 1)

    # -- questions ---------------------------------------------------------------------------

    def count(self, split: str, folder: str) -> int:
        return self._counts.get((split, folder), 0)

    def knows_url(self, url: str) -> bool:
        return url in self._urls

    def duplicate_of(self, image: PreparedImage) -> tuple[str, str] | None:
        """``(reason, existing path)`` when the image is already in the dataset, else None."""
        for digest in (image.source_sha256, image.sha256):
            if digest in self._exact:
                return "duplicate_exact", self._exact[digest]
        nearest = self._near.nearest(image.phash)
        if nearest is not None:
            return "duplicate_near", nearest[0]
        return None

    # -- changes -------------------------------------------------------------------------------

    def remove_stale_temp_files(self, split: str, folder: str) -> None:
        """Delete temporary files a killed run left behind (only names atomic writes use)."""
        folder_dir = self._folder(split, folder)
        pattern = re.compile(r"\." + re.escape(folder) + r"_\d+\.jpg\..+\.tmp")
        stale = [p for p in folder_dir.glob(".*.tmp") if pattern.fullmatch(p.name)]
        stale += [p for p in self.root.glob(f".{MANIFEST_NAME}.*.tmp")]
        for path in stale:
            log.info("removing %s left by an interrupted run", path)
            path.unlink(missing_ok=True)

    def clear(self, split: str, folder: str) -> int:
        """overwrite=true: delete a class folder's images and their manifest rows."""
        folder_dir = self._folder(split, folder)
        removed = 0
        if folder_dir.is_dir():
            for path in sorted(folder_dir.iterdir()):
                if path.is_file() and is_image(path):
                    path.unlink()
                    removed += 1
        prefix = f"{split}/{folder}/"
        kept = [row for row in self._rows if not row["path"].startswith(prefix)]
        if len(kept) != len(self._rows) and self.manifest_path.exists():
            rewrite_manifest(self.manifest_path, kept)
        self._load()
        return removed

    def save_unless_duplicate(
        self, split: str, folder: str, image: PreparedImage, origin: Origin
    ) -> str | None:
        """Save the image as :meth:`save` does unless it duplicates one already in the dataset
        (any split or class); then the reason (``duplicate_exact`` or ``duplicate_near``), else None.
        """
        duplicate = self.duplicate_of(image)
        if duplicate is not None:
            log.debug("%s: %s of %s", origin.source_url, *duplicate)
            return duplicate[0]
        self.save(split, folder, image, origin)
        return None

    def save(self, split: str, folder: str, image: PreparedImage, origin: Origin) -> Path:
        """Write the image as ``{split}/{folder}/{folder}_{n}.jpg``, then its manifest row.

        The name is taken only if free at the moment of writing: a file that appeared meanwhile
        (a user's, or another process's) is never replaced, and the next number is tried.
        """
        key = (split, folder)
        folder_dir = self._folder(split, folder)
        number = self._next_number.get(key, 1)
        while True:
            path = folder_dir / f"{folder}_{number}.jpg"
            try:
                create_new_bytes(path, image.jpeg)
                break
            except FileExistsError:
                number += 1
        rel = path.relative_to(self.root).as_posix()
        row = {
            "path": rel,
            "split": split,
            "class": folder,
            "search_term": origin.search_term,
            "engine": origin.engine,
            "source_url": origin.source_url,
            "final_url": origin.final_url,
            "page_url": origin.page_url,
            "sha256": image.sha256,
            "source_sha256": image.source_sha256,
            "phash": hash_to_hex(image.phash),
            "width": image.width,
            "height": image.height,
            "bytes": len(image.jpeg),
            "downloaded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        append_row(self.manifest_path, row)
        self._rows.append(row)
        self._remember_row(row)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._next_number[key] = number + 1
        return path
