"""The model card: ``model_card.md`` and ``model_card.html`` beside ``model.ckpt``, from what is on disk.

Train writes it, eval and export write it again; ``GET /card`` serves it. It reads:

- the model file: classes, backbone and ImageNet weights, hyperparameters, training metrics and
  the validation split held out of ``train/``;
- ``card_inputs.json`` beside it: the training dataset's folder (train records it) and the report
  folder of each split evaluated since (eval adds it);
- the dataset folder: images per class and split, the scrape manifest (search terms, sites,
  engines) and the review's quarantine log beside the dataset;
- each recorded report's ``metrics.json``, used only when its ``model_sha256`` is this model.ckpt's;
- ``model.onnx`` and ``model.int8.onnx``: their export check, used only when exported from this
  model.ckpt.

A missing piece is said to be missing ("not evaluated yet"), never filled in. Every file is data:
read defensively, one that cannot be read becomes a line saying so; paths from a manifest or a log
are only compared with the files listed in the dataset, never opened. Text from files (class
names, search terms, URLs, hyperparameters) is escaped for Markdown, and the HTML is rendered with
raw HTML off, so nothing in a file becomes markup. The card names folders, never their absolute
paths: the server hands it to any client.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from markdown_it import MarkdownIt

from imgclf.data.folders import SPLITS, SplitListing, split_listings
from imgclf.data.hashing import sha256_file
from imgclf.errors import ImgclfError
from imgclf.inference.metrics import describe_interval
from imgclf.inference.runtimes import (
    CKPT_NAME,
    INSTALL_HINT,
    INT8_NAME,
    ONNX_NAME,
    describe_check,
    onnxruntime_installed,
    read_onnx,
)
from imgclf.io import atomic_write_bytes, atomic_write_json
from imgclf.locks import updating
from imgclf.models.checkpoint import read_model
from imgclf.paths import inside, plain_relative
from imgclf.review.findings import REASONS
from imgclf.review.quarantine import LOG_NAME, in_quarantine, quarantine_dir, read_log

log = logging.getLogger(__name__)

CARD_MD = "model_card.md"
CARD_HTML = "model_card.html"
INPUTS_NAME = "card_inputs.json"
# Above this expected calibration error the card warns that the probabilities mislead.
POORLY_CALIBRATED = 0.1
METRICS_NAME = "metrics.json"
# A metrics.json lists every left-out image and the worst ones: megabytes for a large split, not more.
MAX_REPORT_BYTES = 64 * 1024 * 1024
# What one value from a file may take of the card.
MAX_TEXT = 200
# How many entries a counted list gets (search terms of a class, sites, engines) before "and N more".
MAX_ROWS = 25

LICENCE = (
    "The training images were collected from the web by image search, or added by hand. They are "
    "other people's work: their rights belong to their owners, and their licences were neither "
    "checked nor recorded. Whoever deploys or shares this model, or its training images, should "
    "take that into account. This note is not legal advice."
)

# Characters that start Markdown syntax in the middle of a line: links and images ([ ] !), raw
# HTML and autolinks (< >), entities (&), emphasis and code (* _ ~ `), table cells (|), escapes (\).
_MARKDOWN = re.compile(r"([\\`*_\[\]<>&|~!])")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """``value`` as one line of inert Markdown: control and format characters dropped (no line
    breaks, no right-to-left overrides), cut to ``limit`` characters, Markdown's syntax escaped."""
    raw = "".join(
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
        for c in str(value)
        if unicodedata.category(c) != "Cf"
    )
    raw = " ".join(raw.split())
    if len(raw) > limit:
        raw = raw[: limit - 1] + "…"
    return _MARKDOWN.sub(r"\\\1", raw)


def _number(value: Any) -> float | None:
    """A finite number from a file, or None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # JSON's integers have no bound
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _bounds(value: Any) -> dict[str, Any] | None:
    """An interval as metrics.json records it (:func:`imgclf.inference.metrics.interval`), or None."""
    bounds = _mapping(value)
    numbers = [_number(bounds.get(key)) for key in ("low", "high", "confidence")]
    if None in numbers or _count(bounds.get("n")) is None:
        return None
    return {"low": numbers[0], "high": numbers[1], "confidence": numbers[2], "n": bounds["n"]}


def figure(value: Any, bounds: Any = None) -> str:
    """A proportion with its interval when one was recorded: ``0.9533 (95% interval ...)``."""
    number = _number(value)
    if number is None:
        return "could not be read"
    checked = _bounds(bounds)
    return describe_interval(number, checked) if checked else f"{number:.4f}"


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """A Markdown table; the cells must already be inert (:func:`text`, or numbers)."""
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def counted(counter: Counter, unit: str) -> str:
    """``a (3), b (1) and 2 more (5 images)``: the most common first."""
    items = counter.most_common()
    shown = ", ".join(f"{text(name)} ({count})" for name, count in items[:MAX_ROWS])
    rest = items[MAX_ROWS:]
    if rest:
        shown += f" and {len(rest)} more ({sum(count for _, count in rest)} {unit})"
    return shown


def _folder_name(folder: Path, base: Path) -> str:
    """How the card names a folder: relative to the model's folder when inside it, else by its name."""
    try:
        return folder.resolve().relative_to(base.resolve()).as_posix() + "/"
    except (ValueError, OSError, RuntimeError):
        return folder.name + "/"


def _hide(message: str, folder: Path) -> str:
    """An error message without the folders above ``folder``: where the files live is not the
    card's to tell."""
    return message.replace(str(folder.resolve().parent) + os.sep, "")


# -- what the commands record -------------------------------------------------------------------


def read_inputs(model_dir: Path) -> tuple[dict[str, Any], str | None]:
    """``card_inputs.json``: ({"data_root": str | None, "reports": {split: folder}}, a problem or None)."""
    path = model_dir / INPUTS_NAME
    empty: dict[str, Any] = {"data_root": None, "reports": {}}
    if not path.is_file():
        return empty, None
    try:
        document = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return empty, f"{INPUTS_NAME} could not be read"
    if not isinstance(document, dict):
        return empty, f"{INPUTS_NAME} could not be read"
    root = document.get("data_root")
    reports = {
        split: folder
        for split, folder in _mapping(document.get("reports")).items()
        if split in SPLITS and isinstance(folder, str) and folder
    }
    return {"data_root": root if isinstance(root, str) and root else None, "reports": reports}, None


def record_training(model_dir: str | os.PathLike, data_root: str | os.PathLike) -> None:
    """A new model: its dataset, and no evaluation yet (the older ones were of another model)."""
    document = {"data_root": str(Path(data_root).resolve()), "reports": {}}
    path = Path(model_dir) / INPUTS_NAME
    with updating(path):
        atomic_write_json(path, document)


def record_evaluation(model_dir: str | os.PathLike, split: str, report_dir: str | os.PathLike) -> None:
    """Where the report of ``split`` is, for the card; evals of two splits finishing at the same
    moment both keep theirs (the update holds the file's lock)."""
    model_dir = Path(model_dir)
    path = model_dir / INPUTS_NAME
    with updating(path):
        document, _ = read_inputs(model_dir)
        document["reports"][split] = str(Path(report_dir).resolve())
        atomic_write_json(path, document)


# -- the sections -------------------------------------------------------------------------------


def model_section(record: Mapping[str, Any]) -> list[str]:
    architecture = _mapping(record.get("architecture"))
    backbone = _mapping(architecture.get("backbone"))
    hparams = _mapping(record.get("hparams"))
    classes = record.get("classes")
    lines = ["## Model", ""]
    if isinstance(classes, list):
        lines.append(f"- Classes ({len(classes)}): {', '.join(text(name) for name in classes)}")
    library = "timm" if backbone.get("library") == "timm" else "torchvision"
    size = _count(architecture.get("image_size"))
    lines.append(
        f"- Backbone: {text(backbone.get('name', 'not recorded'))} ({library}), "
        f"{f'{size} px' if size else 'input size not recorded'} input"
    )
    head = _mapping(architecture.get("head"))
    if head:
        lines.append("- Head: " + ", ".join(f"{text(key)} {text(value)}" for key, value in head.items()))
    if hparams.get("pretrained") is True:
        weights = f"- ImageNet weights: {text(backbone.get('weights', 'not recorded'))}"
        if hparams.get("weights_path"):
            weights += " (from a local file, `model.weights_path`)"
        lines.append(weights)
    elif hparams.get("pretrained") is False:
        lines.append("- ImageNet weights: none (trained from scratch)")
    else:
        lines.append("- ImageNet weights: not recorded")
    if isinstance(record.get("created"), str):
        lines.append(f"- Trained: {text(record['created'])}")
    return lines + [""]


def flat(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as ``(a.b, value)`` pairs, in the file's order."""
    pairs: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            pairs += flat(value, f"{name}.")
        else:
            pairs.append((name, ", ".join(map(str, value)) if isinstance(value, list) else value))
    return pairs


def training_section(record: Mapping[str, Any]) -> list[str]:
    metrics = _mapping(record.get("metrics"))
    lines = ["## Training", ""]
    if "train/acc" in metrics:
        lines.append(f"- Accuracy on the training images: {figure(metrics['train/acc'])}")
    if "val/acc" in metrics:
        val = figure(metrics["val/acc"], metrics.get("val/acc_interval"))
        lines.append(f"- Accuracy on the validation images: {val}")
    if _count(metrics.get("best_epoch")) is not None:
        lines.append(f"- Best epoch: {metrics['best_epoch']}")
    if len(lines) == 2:
        lines.append("- The model file records no training metrics.")
    pairs = flat(_mapping(record.get("hparams")))
    lines += ["", "Hyperparameters:", ""]
    if not pairs:
        return lines + ["- none recorded", ""]
    rows = [(text(key), text(value)) for key, value in pairs]
    return lines + table(("setting", "value"), rows)


def dataset_section(root: Path | None, note: str | None, record: Mapping[str, Any]) -> list[str]:
    """Images per class and split, their sources (the manifest) and the review's quarantine."""
    lines = ["## Classes and images", ""]
    if root is None:
        return lines + [
            "The training dataset's folder was not recorded with this model "
            f"({INPUTS_NAME} is missing), so its images are not described.",
            "",
        ]
    if note:
        lines += [note, ""]
    val_split = record.get("val_split")
    if val_split is not None and not (
        isinstance(val_split, Mapping)
        and isinstance(val_split.get("files"), list)
        and all(isinstance(name, str) for name in val_split["files"])
    ):
        return lines + ["The model file's validation split could not be read.", ""]
    try:
        listings = split_listings(root, val_split)
    except (ImgclfError, OSError) as exc:
        return lines + [
            f"The dataset {text(root.name)}/ could not be listed: {text(_hide(str(exc), root))}",
            "",
        ]
    lines += images_table(listings, record)
    if val_split:
        fraction, seed = _number(val_split.get("fraction")), _count(val_split.get("seed"))
        share = f"{fraction:.0%} of " if fraction is not None else "part of "
        lines += [
            f"There is no val/ folder: validation is {share}train/'s images, held out (stratified"
            f"{f', seed {seed}' if seed is not None else ''}) when the model was trained.",
            "",
        ]
    where = {
        path.relative_to(root).as_posix(): (listing.split, name)
        for listing in listings.values()
        for name, paths in listing.files.items()
        for path in paths
    }
    return lines + sources_section(root, where) + quarantine_section(root)


def images_table(listings: Mapping[str, SplitListing], record: Mapping[str, Any]) -> list[str]:
    splits = [split for split in SPLITS if split in listings]
    counts = {split: listing.counts() for split, listing in listings.items()}
    names = sorted({name for listing in listings.values() for name in listing.classes})
    rows = [[text(name), *(str(counts[split].get(name, 0)) for split in splits)] for name in names]
    rows.append(["**all**", *(str(sum(counts[split].values())) for split in splits)])
    lines = table(("class", *splits), rows)
    classes = record.get("classes")
    if isinstance(classes, list) and sorted(map(str, classes)) != names:
        lines += [
            "The dataset's classes are no longer the model's: it was trained on "
            f"{', '.join(text(name) for name in classes)}.",
            "",
        ]
    return lines


def _site(row: Mapping[str, Any]) -> str:
    """The site an image was found on: the page's host when the engine named the page, else the
    host the image came from."""
    for key in ("page_url", "final_url", "source_url"):
        url = row.get(key)
        if isinstance(url, str) and url:
            try:
                host = urlsplit(url).hostname
            except ValueError:  # "http://[x": a URL urllib cannot take apart
                return "(a URL that could not be read)"
            return host or "(a URL without a host)"
    return "(no URL recorded)"


def sources_section(root: Path, where: Mapping[str, tuple[str, str]]) -> list[str]:
    """Search terms per class, the sites and engines the images came from, from the manifest."""
    # Here, not at the top: the scrape package imports the scraper, and Playwright with it, which
    # the server (that imports this module) has no use for.
    from imgclf.scrape.manifest import MANIFEST_NAME, read_manifest

    path = root / MANIFEST_NAME
    lines = ["## Where the images came from", ""]
    if not path.exists():
        return lines + [
            f"No scrape manifest ({MANIFEST_NAME}): the images were added by hand; where they come "
            "from is not recorded.",
            "",
        ]
    if not inside(path, root):
        return lines + [f"{MANIFEST_NAME} is a link that leads out of the dataset; it was not read.", ""]
    try:
        rows = read_manifest(path)
        unreadable = sum(1 for line in path.read_bytes().split(b"\n") if line.strip()) - len(rows)
    except OSError:
        return lines + [f"{MANIFEST_NAME} could not be read.", ""]
    # A row counts for an image the dataset holds now; the paths are only looked up, never opened.
    present = {row["path"]: row for row in rows if row["path"] in where}
    terms: dict[str, Counter] = {}
    sites: Counter = Counter()
    engines: Counter = Counter()
    for relative, row in present.items():
        _, name = where[relative]
        term = row.get("search_term")
        terms.setdefault(name, Counter())[term if isinstance(term, str) else "(none recorded)"] += 1
        sites[_site(row)] += 1
        engines[row.get("engine") if isinstance(row.get("engine"), str) else "(none recorded)"] += 1
    by_hand = len(where) - len(present)
    lines.append(
        f"{len(present)} of the {len(where)} images were scraped (rows of {MANIFEST_NAME}); "
        f"{by_hand} {'has' if by_hand == 1 else 'have'} no row: added by hand."
    )
    gone = sum(1 for row in rows if row["path"] not in where)
    if gone:
        lines.append(
            f"{gone} manifest row(s) name images the dataset no longer holds (deleted, quarantined or "
            "moved); they are not counted."
        )
    if unreadable:
        lines.append(f"{unreadable} line(s) of {MANIFEST_NAME} could not be read and are not counted.")
    lines.append("")
    if present:
        lines += ["Search terms, with the images each gave:", ""]
        names = sorted(terms)
        lines += table(
            ("class", "search terms"), [(text(name), counted(terms[name], "images")) for name in names]
        )
        lines += [
            "Sites (the page each image was found on, else the image's own host): "
            f"{counted(sites, 'images')}.",
            "",
            f"Search engines: {counted(engines, 'images')}.",
            "",
        ]
    return lines


def quarantine_section(root: Path) -> list[str]:
    folder = quarantine_dir(root)
    lines = ["## What the review quarantined", ""]
    log_path = folder / LOG_NAME
    if not log_path.is_file():
        return lines + [
            f"No quarantine log ({text(folder.name)}/{LOG_NAME}): the review has quarantined no image "
            "of this dataset.",
            "",
        ]
    try:
        total = sum(1 for line in log_path.read_bytes().splitlines() if line.strip())
        unreadable = total - len(read_log(folder))
        entries = in_quarantine(folder)
    except OSError:
        return lines + [f"{LOG_NAME} could not be read.", ""]
    reasons: Counter = Counter()
    classes: Counter = Counter()
    refused = 0
    for entry in entries:
        relative = plain_relative(entry["path"])
        if relative is None:  # "../x", "/etc/x": not a file of the dataset
            refused += 1
            continue
        parts = relative.parts
        classes[f"{parts[0]}/{parts[1]}" if len(parts) >= 3 and parts[0] in SPLITS else "(other)"] += 1
        listed = entry.get("reasons")
        if not isinstance(listed, list) or not listed or not all(isinstance(r, str) for r in listed):
            listed = ["(no reason recorded)"]
        for reason in listed:
            reasons[REASONS.get(reason, reason)] += 1
    kept = len(entries) - refused
    lines.append(f"{kept} image(s) are in quarantine, out of the training data.")
    if refused:
        lines.append(f"{refused} log entry(ies) name paths outside the dataset; they are not counted.")
    if unreadable:
        lines.append(f"{unreadable} line(s) of {LOG_NAME} could not be read and are not counted.")
    lines.append("")
    if kept:
        lines += table(("reason", "images"), [(text(r), str(n)) for r, n in reasons.most_common()])
        lines += [f"By class: {counted(classes, 'images')}.", ""]
    return lines


def read_report(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(metrics.json, None) or (None, why it could not be read)."""
    path = folder / METRICS_NAME
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_REPORT_BYTES + 1)
    except FileNotFoundError:
        return None, "is gone"
    except OSError:
        return None, "could not be read"
    if len(data) > MAX_REPORT_BYTES:
        return None, "is too large to be a report"
    try:
        metrics = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None, "could not be read"
    return (metrics, None) if isinstance(metrics, dict) else (None, "could not be read")


def evaluation_section(model_dir: Path, reports: Mapping[str, str], model_sha256: str | None) -> list[str]:
    lines = ["## Evaluation", ""]
    done = 0
    for split in SPLITS:
        if split not in reports:
            continue
        folder = Path(reports[split])
        named = f"The {split} report ({text(_folder_name(folder, model_dir))}{METRICS_NAME})"
        metrics, problem = read_report(folder)
        if metrics is None:
            lines += [f"{named} {problem}: evaluate again with `python scripts/eval.py split={split}`.", ""]
            continue
        if model_sha256 is None or metrics.get("model_sha256") != model_sha256:
            lines += [
                f"{named} is of another model.ckpt (trained since?): evaluate again with "
                f"`python scripts/eval.py split={split}`.",
                "",
            ]
            continue
        done += 1
        lines += split_figures(split, metrics)
    if not done:
        lines += [
            "Not evaluated yet: `python scripts/eval.py split=test` measures the accuracy on the test "
            "images and updates this card.",
            "",
        ]
    return lines


def split_figures(split: str, metrics: Mapping[str, Any]) -> list[str]:
    runtime = text(metrics.get("runtime", "not recorded"))
    model_file = text(os.path.basename(str(metrics.get("model_file", ""))) or "not recorded")
    lines = [
        f"### {split.capitalize()} split",
        "",
        f"- Accuracy: {figure(metrics.get('accuracy'), metrics.get('accuracy_interval'))}",
        f"- Run by {runtime} on {model_file}, precision {text(metrics.get('precision', 'not recorded'))}",
    ]
    if "tta_accuracy" in metrics:
        lines.append(f"- Accuracy with test-time augmentation: {figure(metrics['tta_accuracy'])}")
    left_out = metrics.get("left_out")
    if isinstance(left_out, list) and left_out:
        lines.append(f"- Left out: {len(left_out)} image(s) that could not be decoded")
    ece = _number(_mapping(metrics.get("calibration")).get("ece"))
    if ece is not None:
        caveat = (
            ": its probabilities are far from how often it is right, so do not threshold them as "
            "they are (see the calibration note in the docs' training page)"
            if ece > POORLY_CALIBRATED
            else ""
        )
        lines.append(f"- Calibration error (ECE): {ece:.3f}{caveat}")
    curve = _mapping(metrics.get("learning_curve")).get("rows")
    points = [
        (_count(row.get("train_images")), _number(row.get("accuracy")))
        for row in (curve if isinstance(curve, list) else [])
        if isinstance(row, Mapping)
    ]
    points = [(n, acc) for n, acc in points if n is not None and acc is not None]
    if points:
        steps = ", ".join(f"{acc:.3f} with {n} train images" for n, acc in points)
        lines.append(f"- Learning curve (a linear fit on the backbone's features): {steps}")
    lines.append("")
    per_class = _mapping(metrics.get("per_class"))
    rows = []
    for name, scores in per_class.items():
        scores = _mapping(scores)
        cells = [figure(scores.get(key)) for key in ("precision", "recall", "f1")]
        bounds = _bounds(scores.get("recall_interval"))
        if bounds and _number(scores.get("recall")) is not None:
            cells[1] += f" ({bounds['low']:.4f}-{bounds['high']:.4f})"
        support = _count(scores.get("support"))
        rows.append([text(name), *cells, str(support) if support is not None else "could not be read"])
    if rows:
        lines += table(("class", "precision", "recall (interval)", "F1", "images"), rows)
    else:
        lines += ["No per-class figures could be read.", ""]
    return lines


def export_section(model_dir: Path, model_sha256: str | None) -> list[str]:
    lines = ["## Export", ""]
    present = [model_dir / name for name in (ONNX_NAME, INT8_NAME) if (model_dir / name).is_file()]
    if not present:
        return lines + [
            "Not exported: `python scripts/export.py` writes model.onnx, checked against PyTorch "
            "(`quantize=int8` also model.int8.onnx).",
            "",
        ]
    if not onnxruntime_installed():
        names = " and ".join(path.name for path in present)
        return lines + [f"{names} present; reading its check needs onnxruntime ({INSTALL_HINT}).", ""]
    for path in present:
        try:
            onnx = read_onnx(path)
        except (ImgclfError, ValueError):  # ValueError: metadata that is not JSON
            lines.append(f"- {path.name}: could not be read.")
            continue
        if model_sha256 is None or onnx.source_sha256 != model_sha256:
            lines.append(f"- {path.name}: exported from another model.ckpt (trained since?); export again.")
            continue
        lines.append(f"- {path.name}: {check_text(onnx.check)}")
    return lines + [""]


def check_text(check: Any) -> str:
    """An export check in words, or that it could not be read."""
    check = _mapping(check)
    if (
        _number(check.get("top1_agreement")) is None
        or _number(check.get("max_probability_difference")) is None
        or _count(check.get("images")) is None
        or not isinstance(check.get("split"), str)
    ):
        return "its export check could not be read."
    words = text(describe_check(dict(check)))
    if check.get("verified") is True:
        words += ": verified"
    else:
        words += f": not verified (below the {figure(check.get('min_agreement'))} agreement required)"
    quantization = _mapping(check.get("quantization"))
    if quantization:
        settings = ", ".join(f"{text(k)} {text(v)}" for k, v in quantization.items())
        words += f"; quantization: {settings}"
    return words + "."


# -- the card -----------------------------------------------------------------------------------


def build_card(model_dir: str | os.PathLike, data_root: str | os.PathLike | None = None) -> str:
    """The card in Markdown. The dataset is the one train recorded, else ``data_root`` (the one the
    command writing the card was given)."""
    model_dir = Path(model_dir)
    ckpt = model_dir / CKPT_NAME
    lines = [
        "# Model card",
        "",
        f"Written by imgclf at {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} from "
        "the files in the model's folder and its dataset. What is missing is said to be missing.",
        "",
    ]
    try:
        record = read_model(ckpt)
        model_sha256: str | None = sha256_file(ckpt)
    except (ImgclfError, OSError):
        record, model_sha256 = {}, None
        lines += [f"The model file {CKPT_NAME} could not be read.", ""]
    inputs, problem = read_inputs(model_dir)
    if problem:
        lines += [f"{problem}: the dataset and the evaluations are not described from it.", ""]
    root, note = None, None
    if inputs["data_root"]:
        root = Path(inputs["data_root"])
    elif data_root is not None:
        root = Path(data_root)
        note = (
            "The model did not record its training dataset; these are the images of "
            f"{text(root.name)}/, the dataset this card was written with."
        )
    if record:
        lines += model_section(record)
    lines += dataset_section(root, note, record)
    if record:
        lines += training_section(record)
    lines += evaluation_section(model_dir, inputs["reports"], model_sha256)
    lines += export_section(model_dir, model_sha256)
    lines += ["## The training images' licence", "", LICENCE, ""]
    return "\n".join(lines)


HTML_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Model card</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }}
table {{ border-collapse: collapse; margin: 0.5rem 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.2rem 0.6rem; text-align: left; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
</style>
</head>
<body>
{body}</body>
</html>
"""


def render_html(markdown: str) -> str:
    """The card as a page. ``js-default``: CommonMark with tables, raw HTML off (it shows as text),
    no linkify, no typography."""
    return HTML_PAGE.format(body=MarkdownIt("js-default").render(markdown))


def write_card(model_dir: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Path | None:
    """Write ``model_card.md`` and ``model_card.html`` into the model's folder, each atomically;
    returns the Markdown's path. The card is a by-product: a folder that will not take it (read-only,
    full) leaves a warning, not a failed command."""
    model_dir = Path(model_dir)
    markdown = build_card(model_dir, data_root)
    try:
        atomic_write_bytes(model_dir / CARD_MD, markdown.encode("utf-8"))
        atomic_write_bytes(model_dir / CARD_HTML, render_html(markdown).encode("utf-8"))
    except OSError as exc:
        log.warning("could not write the model card into %s: %s", model_dir, exc)
        return None
    return model_dir / CARD_MD
