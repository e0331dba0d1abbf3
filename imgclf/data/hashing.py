"""Content hashes for finding the same picture twice: exact (sha256) and near (perceptual).

The scraper uses them to keep duplicates out of a dataset, and across splits so that a validation
image never leaks into training; the dataset review tool reuses them to report duplicates. A
perceptual hash is a 64-bit integer; two pictures are near duplicates when few bits differ
(Hamming distance). :class:`NearDuplicateIndex` answers "what is within d bits of this hash?"
by banding the hash (pigeonhole), so a look-up does not compare against every stored hash.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Hashable
from itertools import combinations, pairwise
from typing import Generic, TypeVar

from PIL import Image

Key = TypeVar("Key", bound=Hashable)

HASH_BITS = 64

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
    import imagehash  # only perceptual hashing needs it (with scipy and PyWavelets): training does not

    return int(str(imagehash.phash(image, hash_size=8)), 16)


def hash_to_hex(value: int) -> str:
    """The fixed-width hex form stored in manifests (16 digits for 64 bits)."""
    return f"{value:016x}"


def hex_to_hash(text: str) -> int:
    return int(text, 16)


def hamming(a: int, b: int) -> int:
    """Number of bits in which two hashes differ."""
    return (a ^ b).bit_count()


class NearDuplicateIndex(Generic[Key]):
    """64-bit hashes searchable within ``max_distance`` bits, in time that grows with the matches.

    ``add(key, hash)`` stores a key (a path, a URL, any hashable) under its hash; ``find(hash)``
    returns every ``(key, distance)`` within ``max_distance`` bits, nearest first (ties in the
    order they were added), and ``nearest(hash)`` the first of them. The radius is fixed when the
    index is built because the bands depend on it.

    Pigeonhole: cut the hash into ``m = max_distance // 2 + 1`` bands; two hashes within
    ``max_distance`` bits agree on some band up to ``max_distance // m`` bits (one bit for the
    usual radii). A look-up probes each band's bucket for its value and its one-bit variants
    (about 70 dictionary look-ups at radius 8) and checks only what it finds. A BK-tree, the
    textbook metric index, must visit about a quarter of its nodes at radius 8 on 64 bits, which
    made the dataset review quadratic (benchmarks/review_speed.py).
    """

    def __init__(self, max_distance: int) -> None:
        if max_distance < 0:
            raise ValueError(f"max_distance must be 0 or more, not {max_distance}")
        self.max_distance = max_distance
        count = max_distance // 2 + 1
        edges = [round(i * HASH_BITS / count) for i in range(count + 1)]
        self._bands = [(low, (1 << (high - low)) - 1) for low, high in pairwise(edges)]
        tolerance = max_distance // count
        self._probes = [
            [
                sum(1 << bit for bit in flipped)
                for n in range(tolerance + 1)
                for flipped in combinations(range(mask.bit_length()), n)
            ]
            for _, mask in self._bands
        ]
        self._buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in self._bands]
        self._keys: list[Key] = []
        self._values: list[int] = []

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: Key, value: int) -> None:
        number = len(self._keys)
        self._keys.append(key)
        self._values.append(value)
        for (shift, mask), bucket in zip(self._bands, self._buckets):
            bucket[(value >> shift) & mask].append(number)

    def find(self, value: int) -> list[tuple[Key, int]]:
        """Every ``(key, distance)`` within ``max_distance`` bits, nearest first."""
        candidates: set[int] = set()
        for (shift, mask), bucket, probes in zip(self._bands, self._buckets, self._probes):
            band = (value >> shift) & mask
            for probe in probes:
                candidates.update(bucket.get(band ^ probe, ()))
        found = sorted((hamming(value, self._values[n]), n) for n in candidates)
        return [(self._keys[n], distance) for distance, n in found if distance <= self.max_distance]

    def nearest(self, value: int) -> tuple[Key, int] | None:
        """The closest stored ``(key, distance)`` within ``max_distance`` bits, or None."""
        found = self.find(value)
        return found[0] if found else None
