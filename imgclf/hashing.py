"""Content hashes for finding the same picture twice: exact (sha256) and near (perceptual).

The scraper uses them to keep duplicates out of a dataset, and across splits so that a validation
image never leaks into training; the dataset review tool reuses them to report duplicates. A
perceptual hash is a 64-bit integer; two pictures are near duplicates when few bits differ
(Hamming distance). :class:`NearDuplicateIndex` answers "what is within d bits of this hash?"
with a BK-tree, so a look-up does not compare against every stored hash.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Hashable
from typing import Generic, TypeVar

import imagehash
from PIL import Image

Key = TypeVar("Key", bound=Hashable)

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks so large files do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash (pHash) of a picture as an integer.

    Resizing, re-encoding and small colour changes move it by a few bits; different pictures
    differ in about half of the 64.
    """
    return int(str(imagehash.phash(image, hash_size=8)), 16)


def hash_to_hex(value: int) -> str:
    """The fixed-width hex form stored in manifests (16 digits for 64 bits)."""
    return f"{value:016x}"


def hex_to_hash(text: str) -> int:
    return int(text, 16)


def hamming(a: int, b: int) -> int:
    """Number of bits in which two hashes differ."""
    return (a ^ b).bit_count()


class _Node(Generic[Key]):
    __slots__ = ("children", "keys", "value")

    def __init__(self, value: int, key: Key) -> None:
        self.value = value
        self.keys: list[Key] = [key]
        self.children: dict[int, _Node[Key]] = {}


class NearDuplicateIndex(Generic[Key]):
    """Hashes under the Hamming distance, searchable by radius (a BK-tree).

    ``add(key, hash)`` stores a key (a path, a URL, any hashable) under its hash; ``find(hash,
    max_distance)`` returns every ``(key, distance)`` within ``max_distance`` bits, nearest first.
    The triangle inequality lets a search skip whole subtrees, so small radii touch a small part
    of the tree.
    """

    def __init__(self) -> None:
        self._root: _Node[Key] | None = None
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, key: Key, value: int) -> None:
        self._size += 1
        if self._root is None:
            self._root = _Node(value, key)
            return
        node = self._root
        while True:
            distance = hamming(value, node.value)
            if distance == 0:
                node.keys.append(key)
                return
            child = node.children.get(distance)
            if child is None:
                node.children[distance] = _Node(value, key)
                return
            node = child

    def find(self, value: int, max_distance: int) -> list[tuple[Key, int]]:
        if self._root is None or max_distance < 0:
            return []
        found: list[tuple[Key, int]] = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            distance = hamming(value, node.value)
            if distance <= max_distance:
                found.extend((key, distance) for key in node.keys)
            low, high = distance - max_distance, distance + max_distance
            stack.extend(child for edge, child in node.children.items() if low <= edge <= high)
        found.sort(key=lambda item: item[1])
        return found

    def nearest(self, value: int, max_distance: int) -> tuple[Key, int] | None:
        """The closest stored key within ``max_distance`` bits, or None."""
        found = self.find(value, max_distance)
        return found[0] if found else None
