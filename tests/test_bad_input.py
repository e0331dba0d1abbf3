"""User mistakes get one clear line naming the file or folder, never a deep traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import FAST_TRAIN, compose, run_script

from imgclf.errors import ImgclfError
from imgclf.training.train import train


def copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def train_cfg(root: Path, tmp_path: Path, *extra: str):
    return compose(
        "train",
        FAST_TRAIN + ["debug=fast", f"data.root={root}", f"paths.model_dir={tmp_path / 'model'}", *extra],
        output_dir=tmp_path,
    )


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0]


def test_missing_val_split_without_a_fraction(tmp_path, small_digits_root):
    root = copy_dataset(small_digits_root, tmp_path / "data")
    shutil.rmtree(root / "val")
    result = run_script(
        "train", *FAST_TRAIN, f"data.root={root}", f"paths.model_dir={tmp_path}", "data.val_fraction=null"
    )
    assert_one_line_error(result, str(root / "val"), "is missing", "data.val_fraction=0.2")


def test_missing_dataset_points_to_the_scraper(tmp_path):
    result = run_script("train", "+experiment=hockey", "model.pretrained=false", f"paths.data_dir={tmp_path}")
    assert_one_line_error(result, str(tmp_path / "hockey_dataset"), "scripts/scrape.py")


def test_class_only_in_one_split(tmp_path, small_digits_root):
    root = copy_dataset(small_digits_root, tmp_path / "data")
    (root / "val" / "7").rename(root / "val" / "9")
    with pytest.raises(ImgclfError, match=r"9 only in .*val.*7 missing from .*val"):
        train(train_cfg(root, tmp_path))


def test_empty_class_folder(tmp_path, small_digits_root):
    root = copy_dataset(small_digits_root, tmp_path / "data")
    (root / "train" / "5").mkdir()
    with pytest.raises(ImgclfError, match=r"train/5 holds no readable images"):
        train(train_cfg(root, tmp_path))


def test_one_class_is_not_a_classifier(tmp_path, small_digits_root):
    root = copy_dataset(small_digits_root, tmp_path / "data")
    for split in ("train", "val"):
        for name in ("1", "7"):
            shutil.rmtree(root / "test" / name, ignore_errors=True)
            shutil.rmtree(root / split / name)
    with pytest.raises(ImgclfError, match="needs at least two"):
        train(train_cfg(root, tmp_path))


def test_files_are_judged_by_content_not_name(tmp_path, small_digits_root, caplog):
    root = copy_dataset(small_digits_root, tmp_path / "data")
    (root / "train" / "0" / "notes.txt").write_text("not an image")
    (root / "train" / "1" / "fake.jpg").write_bytes(b"<html>this is not a jpeg</html>")
    (root / "train" / "7" / "empty.png").write_bytes(b"")
    photo = next((root / "train" / "7").glob("*.png"))
    shutil.copy(photo, root / "train" / "7" / "saved without an extension")
    with caplog.at_level("WARNING"):
        metrics = train(train_cfg(root, tmp_path))
    assert "val/acc" in metrics
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "train: skipped 3 file(s) that are not images" in messages

    from imgclf.data.folders import list_split

    listing = list_split(root, "train")
    assert sorted(p.name for p in listing.skipped["not an image"]) == ["empty.png", "fake.jpg", "notes.txt"]
    assert "saved without an extension" in [p.name for p in listing.files["7"]]


def test_classify_missing_file(tmp_path, tiny_model):
    result = run_script("classify", f"img={tmp_path / 'nope.jpg'}", f"ckpt_path={tiny_model}")
    assert_one_line_error(result, str(tmp_path / "nope.jpg"), "no such file")


def test_classify_not_an_image(tmp_path, tiny_model):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    result = run_script("classify", f"img={text}", f"ckpt_path={tiny_model}")
    assert_one_line_error(result, str(text), "not an image")


def test_classify_without_a_model(tmp_path):
    result = run_script("classify", "img=x.jpg", f"paths.model_dir={tmp_path}")
    assert_one_line_error(result, str(tmp_path / "model.ckpt"), "scripts/train.py")


def test_eval_with_classes_the_model_does_not_know(tmp_path, tiny_model, small_digits_root):
    root = copy_dataset(small_digits_root, tmp_path / "data")
    (root / "test" / "7").rename(root / "test" / "8")
    result = run_script(
        "eval",
        "split=test",
        f"data.root={root}",
        f"ckpt_path={tiny_model}",
        f"report_dir={tmp_path / 'report'}",
    )
    assert_one_line_error(result, "8")
