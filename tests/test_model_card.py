"""The model card: written by train, updated by eval and export, served at ``GET /card``.

The datasets here are copies of ``small_digits_root`` given a manifest and a quarantine log the way
the scraper and the review write them (their own writers), plus the hostile lines a crafted or
damaged file could hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import compose

from imgclf.data.hashing import sha256_file
from imgclf.inference.card import CARD_HTML, CARD_MD, INPUTS_NAME, build_card, record_training, write_card
from imgclf.models.checkpoint import export_model, load_model
from imgclf.review.quarantine import LOG_NAME, quarantine, quarantine_dir
from imgclf.scrape.manifest import MANIFEST_NAME, append_row
from imgclf.testing.processes import start_serve, stop

HOSTILE_TERM = "<script>alert(1)</script> [click](javascript:alert(2)) <img src=x onerror=alert(3)>"
API_KEY = "card-test-key"


def manifest_row(root: Path, path: Path, term: str, url: str, page_url: str | None, engine: str) -> dict:
    """A row as :meth:`imgclf.scrape.store.DatasetStore.save` writes it."""
    relative = path.relative_to(root)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "path": relative.as_posix(),
        "split": relative.parts[0],
        "class": relative.parts[1],
        "search_term": term,
        "engine": engine,
        "source_url": url,
        "final_url": url,
        "page_url": page_url,
        "sha256": digest,
        "source_sha256": digest,
        "phash": "0123456789abcdef",
        "width": 32,
        "height": 32,
        "bytes": path.stat().st_size,
        "downloaded_at": "2026-01-02T03:04:05+00:00",
    }


def scraped_dataset(small_digits_root: Path, folder: Path) -> Path:
    """A copy of the digits with a manifest row for all but the first image of each class folder,
    one image deleted since it was scraped, and two quarantined by the review."""
    root = folder / "dataset"
    shutil.copytree(small_digits_root, root)
    terms = {"0": "zero digit", "1": "one digit", "7": HOSTILE_TERM}
    for class_dir in sorted(root.glob("*/*")):
        # the first image of each class folder was added by hand: it has no row
        for number, path in enumerate(sorted(class_dir.glob("*.png"))[1:], start=1):
            label = class_dir.name
            if label == "7" and number % 2:  # a URL urllib cannot take apart, no page
                url, page = "http://[broken/x.jpg", None
            elif label == "7":
                url, page = "https://cdn.example.net/i.jpg?a=<b>&c=|d|", "https://Photos.Example.org/p?q=1#f"
            else:
                url, page = f"https://img{number % 2}.example.com/{number}.jpg", None
            append_row(root / MANIFEST_NAME, manifest_row(root, path, terms[label], url, page, "bing"))
    deleted = sorted((root / "train" / "1").glob("*.png"))[-1]
    deleted.unlink()  # its row stays: rows are history
    quarantine(
        root,
        {
            sorted((root / "train" / "0").glob("*.png"))[1].relative_to(root).as_posix(): ["exact_duplicate"],
            sorted((root / "train" / "7").glob("*.png"))[1].relative_to(root).as_posix(): [
                "tiny",
                "suspect_label",
            ],
        },
    )
    return root


def model_folder(tiny_model: Path, folder: Path) -> Path:
    """A model folder holding a copy of ``tiny_model``'s model.ckpt, nothing else."""
    folder.mkdir(parents=True)
    shutil.copy2(tiny_model, folder / "model.ckpt")
    return folder


@pytest.fixture(scope="module")
def scraped(tiny_model, small_digits_root, tmp_path_factory) -> tuple[Path, Path]:
    """(a model folder with its card, its scraped dataset), as train leaves them."""
    folder = tmp_path_factory.mktemp("card")
    root = scraped_dataset(small_digits_root, folder)
    model_dir = model_folder(tiny_model, folder / "model")
    record_training(model_dir, root)
    write_card(model_dir)
    return model_dir, root


@pytest.fixture(scope="module")
def evaluated_and_exported(scraped, tmp_path_factory) -> Path:
    """``scraped``'s model evaluated on test (its report outside the model folder) and exported,
    each updating the card as the commands do."""
    from imgclf.inference.evaluate import evaluate
    from imgclf.inference.export import export

    model_dir, root = scraped
    folder = tmp_path_factory.mktemp("card_runs")
    ckpt = f"ckpt_path={model_dir / 'model.ckpt'}"
    common = [ckpt, f"data.root={root}", "num_workers=0", "batch_size=8"]
    evaluate(compose("eval", common + ["runtime=torch", f"report_dir={folder / 'report'}"], folder / "eval"))
    export(compose("export", common, folder / "export"))
    return model_dir


def test_train_writes_the_card_beside_the_model(tiny_model):
    """The card of a freshly trained model (no manifest, no review) says what it knows and what
    is missing."""
    model_dir = tiny_model.parent
    card = (model_dir / CARD_MD).read_text(encoding="utf-8")
    assert (model_dir / CARD_HTML).read_text(encoding="utf-8").startswith("<!doctype html>")
    assert "- Classes (3): 0, 1, 7" in card
    assert "- Backbone: inception\\_v3 (torchvision), 75 px input" in card
    assert "- ImageNet weights: none (trained from scratch)" in card
    assert re.search(r"Accuracy on the validation images: [01]\.\d{4} \(95% interval [01]\.\d{4}-", card)
    assert "| optimizer.lr | 0.001 |" in card and "| max\\_epochs | 2 |" in card
    # 18 train, 6 val, 6 test images of each class
    assert "| 0 | 18 | 6 | 6 |" in card and "| **all** | 54 | 18 | 18 |" in card
    assert "No scrape manifest (manifest.jsonl): the images were added by hand" in card
    assert "No quarantine log" in card
    assert "Not exported: `python scripts/export.py`" in card
    assert "their rights belong to their owners" in card
    # the folders' names only: the server hands the card to anyone
    assert str(model_dir.parent) not in card and str(tiny_model.parent.parent) not in card


def test_card_with_manifest_and_quarantine(scraped):
    model_dir, root = scraped
    card = (model_dir / CARD_MD).read_text(encoding="utf-8")
    # images now in the dataset: one of train/1 deleted, one each of train/0 and train/7 quarantined
    assert "| 0 | 17 | 6 | 6 |" in card and "| 1 | 17 | 6 | 6 |" in card and "| 7 | 17 | 6 | 6 |" in card
    # the first image of each of the 9 class folders has no row
    assert "78 of the 87 images were scraped (rows of manifest.jsonl); 9 have no row: added by hand." in card
    assert "3 manifest row(s) name images the dataset no longer holds" in card
    assert "| 0 | zero digit (26) |" in card and "| 1 | one digit (26) |" in card
    assert "Search engines: bing (78)." in card
    assert "img0.example.com (" in card and "img1.example.com (" in card
    # class 7: odd-numbered rows have the URL urllib cannot parse, one of them quarantined
    assert "photos.example.org (12)" in card and "(a URL that could not be read) (14)" in card
    assert "Search terms, with the images each gave" in card
    assert "Not evaluated yet: `python scripts/eval.py split=test`" in card
    assert "2 image(s) are in quarantine, out of the training data." in card
    assert "| Exact duplicates within a split | 1 |" in card and "| Too small | 1 |" in card
    assert "| Suspected wrong labels | 1 |" in card
    assert "By class: train/0 (1), train/7 (1)." in card
    assert f"{quarantine_dir(root).name}" not in card  # there is a log: the "no log" line is absent


def test_hostile_search_terms_and_urls_stay_text(scraped):
    model_dir, _ = scraped
    card = (model_dir / CARD_MD).read_text(encoding="utf-8")
    page = (model_dir / CARD_HTML).read_text(encoding="utf-8")
    assert "\\<script\\>alert(1)\\</script\\> \\[click\\](javascript:alert(2))" in card
    assert "&lt;script&gt;alert(1)&lt;/script&gt; [click](javascript:alert(2))" in page
    assert "&lt;img src=x onerror=alert(3)&gt;" in page
    tags = set(re.findall(r"<([a-z0-9]+)", page))
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "ul", "li"} | {
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "code",
        "strong",
    }, tags
    assert "href" not in page and "<script" not in page


def test_malformed_and_escaping_inputs_become_lines(tiny_model, small_digits_root, tmp_path):
    """Damaged files and paths that lead out of the dataset: a line each, no crash, nothing read
    outside the dataset."""
    root = tmp_path / "dataset"
    shutil.copytree(small_digits_root, root)
    good = manifest_row(
        root, next((root / "train" / "0").glob("*.png")), "zero", "https://a.example/x.jpg", None, "google"
    )
    escaping = {**good, "path": "../outside.png"}
    absolute = {**good, "path": "/etc/passwd"}
    lines = [json.dumps(good), "{not json", json.dumps(escaping), json.dumps(absolute), '"a string"', ""]
    (root / MANIFEST_NAME).write_bytes("\n".join(lines).encode() + b"\xff\xfe\n")
    folder = quarantine_dir(root)
    folder.mkdir()
    entries = [
        {"action": "quarantine", "batch": "x", "path": "../../etc/passwd", "quarantined": "a", "reasons": 7},
        {
            "action": "quarantine",
            "batch": "x",
            "path": "train/1/x.png",
            "quarantined": "b",
            "reasons": "tiny",
        },
    ]
    (folder / LOG_NAME).write_text("\n".join([*map(json.dumps, entries), "[1, 2", "null"]) + "\n")
    model_dir = model_folder(tiny_model, tmp_path / "model")
    (model_dir / "model.onnx").write_bytes(b"not an onnx file")
    record_training(model_dir, root)
    inputs = json.loads((model_dir / INPUTS_NAME).read_text())
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text('{"accuracy": ')
    inputs["reports"] = {"test": str(report), "val": str(tmp_path / "gone"), "../../x": "/etc"}
    (model_dir / INPUTS_NAME).write_text(json.dumps(inputs))

    card = build_card(model_dir)
    assert "1 of the 90 images were scraped" in card
    assert "5 line(s) of manifest.jsonl could not be read and are not counted." in card
    assert "1 log entry(ies) name paths outside the dataset; they are not counted." in card
    assert "2 line(s) of quarantine_log.jsonl could not be read" in card
    assert "| (no reason recorded) | 1 |" in card  # "reasons": "tiny" is not a list of reasons
    assert "The test report (report/metrics.json) could not be read" in card
    assert "The val report (gone/metrics.json) is gone" in card
    assert "- model.onnx: could not be read." in card
    assert "passwd" not in card and "/etc" not in card

    # a manifest that leads out of the dataset is not read at all; one that is a folder cannot be
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps(good) + "\n")
    (root / MANIFEST_NAME).unlink()
    os.symlink(outside, root / MANIFEST_NAME)
    assert "manifest.jsonl is a link that leads out of the dataset; it was not read." in build_card(model_dir)
    (root / MANIFEST_NAME).unlink()
    (root / MANIFEST_NAME).mkdir()
    assert "manifest.jsonl could not be read." in build_card(model_dir)

    # a card_inputs.json that is not JSON, and a model file that is not one
    (model_dir / INPUTS_NAME).write_text("{")
    (model_dir / "model.ckpt").write_bytes(b"garbage")
    card = build_card(model_dir)
    assert "The model file model.ckpt could not be read." in card
    assert "card_inputs.json could not be read: the dataset and the evaluations are not described" in card
    assert "Not evaluated yet" in card and "their rights belong to their owners" in card


def test_the_card_warns_of_misleading_probabilities_and_shows_the_curve(
    tiny_model, small_digits_root, tmp_path
):
    """An evaluation whose probabilities are far from its accuracy gets a warning; its learning
    curve (eval.py curve=true) a line; rows that are not numbers are left out."""
    model_dir = model_folder(tiny_model, tmp_path / "model")
    record_training(model_dir, small_digits_root)
    report = tmp_path / "report"
    report.mkdir()
    rows = [{"train_images": 9, "accuracy": 0.5}, {"train_images": "18", "accuracy": 0.9}, "x"]
    rows.append({"train_images": 18, "accuracy": 0.75})
    metrics = {"accuracy": 0.8, "calibration": {"ece": 0.397}, "learning_curve": {"rows": rows}}
    metrics["model_sha256"] = sha256_file(model_dir / "model.ckpt")  # a report of this model
    (report / "metrics.json").write_text(json.dumps(metrics))
    inputs = json.loads((model_dir / INPUTS_NAME).read_text())
    inputs["reports"] = {"val": str(report)}
    (model_dir / INPUTS_NAME).write_text(json.dumps(inputs))
    card = build_card(model_dir)
    assert "- Calibration error (ECE): 0.397: its probabilities are far from how often it is right" in card
    assert (
        "- Learning curve (a linear fit on the backbone's features): 0.500 with 9 train images, "
        "0.750 with 18 train images" in card
    )
    metrics["calibration"]["ece"] = 0.03
    (report / "metrics.json").write_text(json.dumps(metrics))
    assert "- Calibration error (ECE): 0.030\n" in build_card(model_dir)


def test_eval_and_export_update_the_card(evaluated_and_exported):
    card = (evaluated_and_exported / CARD_MD).read_text(encoding="utf-8")
    assert "Not evaluated yet" not in card and "Not exported" not in card
    assert "### Test split" in card
    assert re.search(r"- Accuracy: [01]\.\d{4} \(95% interval [01]\.\d{4}-[01]\.\d{4}, 18 images\)", card)
    assert "- Run by torch on model.ckpt, precision" in card
    test_report = json.loads((evaluated_and_exported / INPUTS_NAME).read_text())["reports"]["test"]
    report = json.loads((Path(test_report) / "metrics.json").read_text())
    assert f"- Calibration error (ECE): {report['calibration']['ece']:.3f}" in card
    rows = re.findall(
        r"^\| (0|1|7) \| ([01]\.\d{4}) \| ([01]\.\d{4}) \(([01]\.\d{4})-([01]\.\d{4})\) \|", card, re.M
    )
    assert [row[0] for row in rows] == ["0", "1", "7"], card
    assert all(float(low) <= float(recall) <= float(high) for _, _, recall, low, high in rows)
    assert "The test report (report/metrics.json)" not in card  # used, not refused
    assert re.search(
        r"- model\.onnx: top-1 agreement 100\.00% with PyTorch fp32 on 18 val images, .*: verified\.", card
    )
    assert "<h3>Test split</h3>" in (evaluated_and_exported / CARD_HTML).read_text(encoding="utf-8")


RECORDER = """
import json, sys, time
from pathlib import Path
from imgclf.inference.card import INPUTS_NAME, record_evaluation
model_dir, split, start = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
(model_dir / f"ready-{split}").touch()
while not start.exists():
    time.sleep(0.001)
lost = 0
for i in range(300):
    record_evaluation(model_dir, split, model_dir / f"{split}-{i}")
    # The other process may write since, but only ever a document read after this entry was in.
    reports = json.loads((model_dir / INPUTS_NAME).read_text())["reports"]
    lost += reports.get(split) != str((model_dir / f"{split}-{i}").resolve())
print(lost)
"""


def test_evaluations_finishing_together_both_keep_their_entry(tmp_path):
    """Two processes recording evaluations of two splits at once: each read-modify-write holds the
    file's lock, so neither writes back a document read before the other's last entry."""
    record_training(tmp_path, tmp_path)
    start = tmp_path / "go"
    recorders = [
        subprocess.Popen(
            [sys.executable, "-c", RECORDER, str(tmp_path), split, str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for split in ("val", "test")
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{split}").exists() for split in ("val", "test")):
        assert time.monotonic() < deadline and all(r.poll() is None for r in recorders)
        time.sleep(0.01)
    start.touch()  # both imported: the two loops run at the same time
    outputs = [recorder.communicate(timeout=300)[0] for recorder in recorders]
    assert [recorder.returncode for recorder in recorders] == [0, 0]
    assert [int(output) for output in outputs] == [0, 0], "entries another process wrote over"
    reports = json.loads((tmp_path / INPUTS_NAME).read_text())["reports"]
    assert reports == {split: str((tmp_path / f"{split}-299").resolve()) for split in ("val", "test")}


def test_a_retrained_model_does_not_inherit_the_figures(evaluated_and_exported, tmp_path):
    """A model.ckpt replaced since eval and export: their figures are of the other one."""
    model_dir = tmp_path / "model"
    shutil.copytree(evaluated_and_exported, model_dir)
    model, record = load_model(model_dir / "model.ckpt")
    export_model(model, record["classes"], model_dir / "model.ckpt", {**record["hparams"], "seed": 7})
    card = build_card(model_dir)
    assert "The test report (" in card and "is of another model.ckpt (trained since?)" in card
    assert "Not evaluated yet" in card
    assert "- model.onnx: exported from another model.ckpt (trained since?); export again." in card


def test_the_server_answers_get_card(evaluated_and_exported, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(evaluated_and_exported, model_dir)
    process, url = start_serve(
        f"ckpt_path={model_dir / 'model.ckpt'}",
        log_path=tmp_path / "server.log",
        env={"LIT_SERVER_API_KEY": API_KEY},
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            refused = client.get("/card")
            assert refused.status_code == 401 and refused.json()["success"] is False
            key = {"X-API-Key": API_KEY}
            page = client.get("/card", headers=key)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert page.headers["content-security-policy"].startswith("default-src 'none'")
            assert page.text == (model_dir / CARD_HTML).read_text(encoding="utf-8")
            markdown = client.get("/card", params={"format": "md"}, headers=key)
            assert markdown.status_code == 200 and markdown.headers["content-type"].startswith(
                "text/markdown"
            )
            assert markdown.text == (model_dir / CARD_MD).read_text(encoding="utf-8")
            wrong = client.get("/card", params={"format": "pdf"}, headers=key)
            assert wrong.status_code == 400 and "format=md" in wrong.json()["error"]
            (model_dir / CARD_HTML).unlink()
            missing = client.get("/card", headers=key)
            assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
            body = missing.json()
            assert body["success"] is False and "scripts/train.py" in body["error"]
            assert str(model_dir) not in body["error"]
    finally:
        stop(process)
