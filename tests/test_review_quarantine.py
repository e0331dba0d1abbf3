"""fix=quarantine moves exactly the files flagged for the chosen reasons; undo puts them back."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import compose

from imgclf.errors import ImgclfError
from imgclf.review.quarantine import LOG_NAME, in_quarantine, quarantine_dir
from imgclf.review.reviewer import review

NO_LABELS = ["labels.enabled=false"]


def snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def dataset(tmp_path, small_digits_root) -> Path:
    """Small digits with a leaked copy, an in-split copy, a non-image and a tiny image."""
    root = tmp_path / "data"
    shutil.copytree(small_digits_root, root)
    first = min((root / "train" / "7").glob("*.png"))
    shutil.copyfile(first, root / "test" / "7" / "leak.png")
    shutil.copyfile(first, root / "train" / "7" / "again.png")
    (root / "train" / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "train" / "0" / "tiny.png").write_bytes(_tiny_png())
    return root


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def run(root: Path, tmp_path: Path, *overrides: str) -> dict:
    return review(
        compose("review", NO_LABELS + [f"data.root={root}", *overrides], output_dir=tmp_path / "run")
    )


def test_quarantine_moves_exactly_the_chosen_flags_and_undo_restores(dataset, tmp_path):
    before = snapshot(dataset)
    reasons = ["leakage", "exact_duplicate", "undecodable"]
    result = run(dataset, tmp_path, "fix=quarantine", f"fix_reasons=[{','.join(reasons)}]")
    chosen = {f.path for f in result["flags"] if f.reason in reasons}
    assert chosen == {"test/7/leak.png", "train/7/again.png", "train/1/broken.png"}
    assert {f.reason for f in result["flags"]} == {"tiny", *reasons}
    folder = quarantine_dir(dataset)
    assert folder == tmp_path / "data_quarantine"
    after = snapshot(dataset)
    assert set(before) - set(after) == chosen and set(after) <= set(before)
    for path in chosen:
        assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == before[path]
    assert {e["path"] for e in in_quarantine(folder)} == chosen

    restored = run(dataset, tmp_path, "undo=true")["restored"]
    assert set(restored) == chosen
    assert snapshot(dataset) == before
    assert in_quarantine(folder) == [] and (folder / LOG_NAME).is_file()


def test_the_report_marks_quarantined_files(dataset, tmp_path):
    result = run(dataset, tmp_path, "fix=quarantine", "fix_reasons=[tiny]")
    html = Path(result["report"]).read_text()
    assert [e["path"] for e in result["quarantined"]] == ["train/0/tiny.png"]
    assert html.count(">quarantined<") == 1
    card = html.split('data-reason="tiny"')[1].split('class="card"')[0]
    assert '<img src="data:image/jpeg' in card  # its thumbnail comes from the quarantine folder


def test_a_second_quarantine_of_the_same_path_keeps_both_copies(dataset, tmp_path):
    run(dataset, tmp_path, "fix=quarantine", "fix_reasons=[tiny]")
    (dataset / "train" / "0" / "tiny.png").write_bytes(_tiny_png())
    run(dataset, tmp_path, "fix=quarantine", "fix_reasons=[tiny]")
    folder = quarantine_dir(dataset)
    assert sorted(p.name for p in (folder / "train" / "0").iterdir()) == ["tiny.png", "tiny~2.png"]
    # Both want to go back to the same place: undo refuses rather than overwrite one.
    with pytest.raises(ImgclfError, match="quarantined more than once, e.g. train/0/tiny.png"):
        run(dataset, tmp_path, "undo=true")


def test_undo_refuses_to_overwrite_and_moves_nothing(dataset, tmp_path):
    run(dataset, tmp_path, "fix=quarantine", "fix_reasons=[leakage,undecodable]")
    (dataset / "test" / "7" / "leak.png").write_bytes(b"a new file")
    quarantined = snapshot(quarantine_dir(dataset))
    with pytest.raises(ImgclfError, match=r"test/7/leak.png"):
        run(dataset, tmp_path, "undo=true")
    assert snapshot(quarantine_dir(dataset)) == quarantined
    assert (dataset / "test" / "7" / "leak.png").read_bytes() == b"a new file"


def test_script_quarantines_and_undoes(dataset, tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "review.py"
    common = [
        sys.executable,
        str(script),
        f"data.root={dataset}",
        *NO_LABELS,
        f"hydra.run.dir={tmp_path / 'h'}",
    ]
    done = subprocess.run(common + ["fix=quarantine"], capture_output=True, text=True, check=True)
    assert "quarantined 3 file(s)" in done.stdout and "report: " in done.stdout
    undone = subprocess.run(common + ["undo=true"], capture_output=True, text=True, check=True)
    assert "restored 3 file(s)" in undone.stdout
