"""Exact and near duplicates, within a class, across classes and across splits.

Exact: same file bytes or same decoded pixels. Near: perceptual hashes within a few bits, found
through :class:`imgclf.data.hashing.NearDuplicateIndex` (never by comparing all pairs) and confirmed
by a 16x16 grey fingerprint, because a 64-bit pHash alone calls different low-detail pictures
(digits, logos, products on white) the same. Duplicates are joined into groups; each group
keeps one image and flags the rest, so quarantining the flags leaves one copy of each picture.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from imgclf.data.folders import SPLITS
from imgclf.data.hashing import NearDuplicateIndex, hamming
from imgclf.review.findings import Flag
from imgclf.review.scan import ScannedImage


class _Groups:
    """Union-find over image indices."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)

    def members(self) -> list[list[int]]:
        groups = defaultdict(list)
        for i in range(len(self.parent)):
            groups[self.find(i)].append(i)
        return [g for g in groups.values() if len(g) > 1]


def fingerprint_difference(a: ScannedImage, b: ScannedImage) -> float:
    """Mean absolute grey-level difference of the fingerprints, 0 (same) to 1."""
    return float(np.abs(a.fingerprint.astype(np.int16) - b.fingerprint).mean() / 255.0)


def is_exact(a: ScannedImage, b: ScannedImage) -> bool:
    return a.sha256 == b.sha256 or a.pixel_sha256 == b.pixel_sha256


def duplicate_groups(
    images: list[ScannedImage], max_distance: int, max_difference: float
) -> list[list[ScannedImage]]:
    """Groups of two or more usable images that show the same picture."""
    usable = [im for im in images if im.usable]
    groups = _Groups(len(usable))
    first_seen: dict[str, int] = {}
    for i, image in enumerate(usable):
        for digest in (image.sha256, image.pixel_sha256):
            if digest in first_seen:
                groups.join(i, first_seen[digest])
            first_seen.setdefault(digest, i)
    index: NearDuplicateIndex[int] = NearDuplicateIndex(max_distance)
    for i, image in enumerate(usable):
        for j, _ in index.find(image.phash):
            if fingerprint_difference(image, usable[j]) <= max_difference:
                groups.join(i, j)
        index.add(i, image.phash)
    return [[usable[i] for i in members] for members in groups.members()]


def _keeper(group: list[ScannedImage]) -> ScannedImage:
    """The copy to keep: the earliest split (train before val before test), then the largest."""
    return min(group, key=lambda im: (SPLITS.index(im.split), -im.width * im.height, im.key))


def group_flags(group: list[ScannedImage]) -> list[Flag]:
    """Flags for one duplicate group: every member when labels disagree, else all but the keeper."""
    labels = sorted({im.label for im in group})
    if len(labels) > 1:
        return [
            Flag(
                im.key,
                "label_conflict",
                f"same picture filed under {', '.join(labels)}: "
                + ", ".join(o.key for o in group if o is not im),
                other=next(o.key for o in group if o is not im),
            )
            for im in group
        ]
    keeper = _keeper(group)
    flags = []
    for im in group:
        if im is keeper:
            continue
        exact = is_exact(im, keeper)
        kind = "exact" if exact else f"near (pHash {hamming(im.phash, keeper.phash)} bits apart)"
        reason = "leakage" if im.split != keeper.split else "exact_duplicate" if exact else "near_duplicate"
        where = f" in {keeper.split}" if reason == "leakage" else ""
        flags.append(
            Flag(
                im.key,
                reason,
                f"{kind} copy of {keeper.key}{where}",
                other=keeper.key,
                score=float(hamming(im.phash, keeper.phash)),
            )
        )
    return flags


def duplicate_flags(groups: list[list[ScannedImage]]) -> list[Flag]:
    return [flag for group in groups for flag in group_flags(group)]
