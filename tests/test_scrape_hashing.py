"""Hashes, the near-duplicate index, the manifest and the dataset store, without a browser."""

from __future__ import annotations

import hashlib
import io
import json
import random

import pytest
from PIL import Image

from imgclf.data.folders import list_split
from imgclf.data.hashing import (
    NearDuplicateIndex,
    hamming,
    hash_to_hex,
    hex_to_hash,
    perceptual_hash,
    sha256_bytes,
    sha256_file,
)
from imgclf.scrape.downloader import DownloadSettings, prepare
from imgclf.scrape.manifest import append_row, read_manifest
from imgclf.scrape.store import DatasetStore, Origin
from imgclf.testing.scrape_fixture.pictures import encode, picture


def test_sha256_helpers(tmp_path):
    data = b"imgclf" * 1000
    (tmp_path / "f").write_bytes(data)
    assert sha256_bytes(data) == hashlib.sha256(data).hexdigest() == sha256_file(tmp_path / "f")


def test_perceptual_hash_is_near_for_copies_and_far_for_different_pictures():
    original = picture(1, (200, 150))
    copy = Image.open(io.BytesIO(encode(original.resize((150, 112)), quality=60)))
    h = perceptual_hash(original)
    assert 0 <= h < 2**64
    assert hamming(h, perceptual_hash(copy)) <= 6
    others = [perceptual_hash(picture(seed)) for seed in range(2, 40)]
    assert min(hamming(h, other) for other in others) > 10
    assert hex_to_hash(hash_to_hex(h)) == h and len(hash_to_hex(5)) == 16


@pytest.mark.parametrize("radius", [0, 1, 3, 4, 8, 10, 20])
def test_near_duplicate_index_finds_exactly_what_brute_force_finds(radius):
    rng = random.Random(radius)
    stored = [rng.getrandbits(64) for _ in range(1000)]
    # Plant neighbours from 0 to radius + 1 bits away, so that answers sit on both sides of the edge.
    stored += [
        h ^ sum(1 << bit for bit in rng.sample(range(64), rng.randrange(radius + 2))) for h in stored[:300]
    ]
    index: NearDuplicateIndex[int] = NearDuplicateIndex(radius)
    for key, value in enumerate(stored):
        index.add(key, value)
    assert len(index) == len(stored)
    for query in stored[:40] + stored[-40:] + [rng.getrandbits(64) for _ in range(20)]:
        expected = sorted((hamming(query, v), k) for k, v in enumerate(stored) if hamming(query, v) <= radius)
        found = index.find(query)
        assert found == [(k, d) for d, k in expected]  # nearest first, then in the order added
        assert index.nearest(query) == (found[0] if found else None)


def test_near_duplicate_index_keeps_keys_with_equal_hashes():
    index: NearDuplicateIndex[str] = NearDuplicateIndex(2)
    assert index.find(0) == [] and index.nearest(0) is None
    index.add("a", 0b1010)
    index.add("b", 0b1010)
    index.add("c", 0b1011)
    assert index.find(0b1010) == [("a", 0), ("b", 0), ("c", 1)]
    assert index.nearest(0b0011) == ("c", 1)
    exact: NearDuplicateIndex[str] = NearDuplicateIndex(0)
    exact.add("a", 0b1010)
    assert exact.find(0b1010) == [("a", 0)] and exact.find(0b1011) == []
    with pytest.raises(ValueError, match="max_distance"):
        NearDuplicateIndex(-1)


def test_manifest_drops_a_torn_last_row_and_appends_on_a_fresh_line(tmp_path):
    path = tmp_path / "manifest.jsonl"
    append_row(path, {"path": "train/a/a_1.jpg", "sha256": "ab" * 32})
    with open(path, "a") as handle:
        handle.write('{"path": "train/a/a_2.jpg", "sha2')  # a kill in the middle of a write
    torn = path.read_bytes()
    assert [row["path"] for row in read_manifest(path)] == ["train/a/a_1.jpg"]
    assert path.read_bytes() == torn  # reading alone changes nothing
    assert [row["path"] for row in read_manifest(path, repair=True)] == ["train/a/a_1.jpg"]
    append_row(path, {"path": "train/a/a_3.jpg"})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["train/a/a_1.jpg", "train/a/a_3.jpg"]


def _origin(url: str) -> Origin:
    return Origin("cat", "google", url, url, None)


def test_store_counts_disk_numbers_past_history_and_indexes_hand_added_images(tmp_path):
    settings = DownloadSettings()
    store = DatasetStore(tmp_path, near_duplicate_distance=6)
    first = store.save("train", "cats", prepare(encode(picture(1)), settings), _origin("u1"))
    second = store.save("train", "cats", prepare(encode(picture(2)), settings), _origin("u2"))
    assert [first.name, second.name] == ["cats_1.jpg", "cats_2.jpg"]
    second.unlink()  # the user weeds out an image after review
    picture(3).save(tmp_path / "train" / "cats" / "mine.png")  # and adds one of their own
    # a photo saved without an extension (as in the original tool's own dataset) is an image, as
    # training counts it; a text file is not, whatever its name
    picture(6).save(tmp_path / "train" / "cats" / "saved_from_browser", format="JPEG")
    (tmp_path / "train" / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "cats" / "notes.jpg").write_text("not an image either")

    store = DatasetStore(tmp_path, near_duplicate_distance=6)
    assert store.count("train", "cats") == 3  # cats_1.jpg, mine.png and saved_from_browser
    assert store.count("train", "cats") == len(list_split(tmp_path, "train").files["cats"])
    assert store.knows_url("u2")  # history: the deleted image's URL is not fetched again
    deleted_again = prepare(encode(picture(2), quality=80), settings)
    assert store.duplicate_of(deleted_again)[0] == "duplicate_near"
    hand_added = prepare(encode(picture(3)), settings)
    assert store.duplicate_of(hand_added) == ("duplicate_near", "train/cats/mine.png")
    third = store.save("val", "cats", prepare(encode(picture(4)), settings), _origin("u4"))
    again = store.save("train", "cats", prepare(encode(picture(5)), settings), _origin("u5"))
    assert (third.name, again.name) == ("cats_1.jpg", "cats_3.jpg")  # never reuses cats_2


def test_store_exact_duplicate_across_splits_and_distance_zero(tmp_path):
    settings = DownloadSettings()
    store = DatasetStore(tmp_path, near_duplicate_distance=0)
    data = encode(picture(1))
    store.save("train", "cats", prepare(data, settings), _origin("u1"))
    exact = prepare(data, settings)
    assert store.duplicate_of(exact) == ("duplicate_exact", "train/cats/cats_1.jpg")
    near = prepare(encode(picture(1), quality=50), settings)
    assert store.duplicate_of(near) is None  # distance 0: only exact copies are refused


def test_clear_removes_only_that_folders_images_and_rows(tmp_path):
    settings = DownloadSettings()
    store = DatasetStore(tmp_path, near_duplicate_distance=6)
    store.save("train", "cats", prepare(encode(picture(1)), settings), _origin("u1"))
    store.save("train", "dogs", prepare(encode(picture(2)), settings), _origin("u2"))
    (tmp_path / "train" / "cats" / "notes.txt").write_text("kept")
    assert store.clear("train", "cats") == 1
    assert sorted(p.name for p in (tmp_path / "train" / "cats").iterdir()) == ["notes.txt"]
    assert (tmp_path / "train" / "dogs" / "dogs_1.jpg").exists()
    assert [row["path"] for row in read_manifest(tmp_path / "manifest.jsonl")] == ["train/dogs/dogs_1.jpg"]
    assert not store.knows_url("u1") and store.knows_url("u2")
