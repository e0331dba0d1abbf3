"""The evaluation report's numbers agree with a direct computation from the model's outputs."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose, run_script
from PIL import Image
from torchvision.transforms.v2 import functional as F

from imgclf.data.images import load_image
from imgclf.errors import ImgclfError
from imgclf.inference.evaluate import evaluate
from imgclf.inference.predict import Predictor


def eval_cfg(model: Path, root: Path, report_dir: Path, *extra: str):
    return compose(
        "eval",
        [
            "split=test",
            f"ckpt_path={model}",
            f"data.root={root}",
            "precision=fp32",
            "num_workers=0",
            "batch_size=8",
            f"report_dir={report_dir}",
            *extra,
        ],
    )


def direct_outputs(predictor: Predictor, root: Path):
    """Every test image through the predictor one by one, without the evaluation code."""
    paths, targets = [], []
    for label in predictor.classes:
        for path in sorted((root / "test" / label).glob("*.png")):
            paths.append(path)
            targets.append(predictor.classes.index(label))
    probabilities = np.array([[row[c] for c in predictor.classes] for row in predictor.classify(paths)])
    return paths, probabilities, np.array(targets)


def ten_crop_probabilities(predictor: Predictor, path: Path) -> np.ndarray:
    """Corner and centre crops of the resized image and their mirrors, averaged, by hand."""
    pre = predictor.preprocessing
    image = F.to_image(load_image(path))
    image = F.resize(image, [pre["resize"]], antialias=True)
    image = F.normalize(F.to_dtype(image, torch.float32, scale=True), pre["mean"], pre["std"])
    crop, (height, width) = pre["crop"], image.shape[-2:]
    top, left = round((height - crop) / 2), round((width - crop) / 2)
    corners = [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop), (top, left)]
    views = [image[:, y : y + crop, x : x + crop] for y, x in corners]
    views += [v.flip(-1) for v in views]
    return predictor.predict_batch(torch.stack(views)).mean(0).numpy()


def expected_calibration_error(probabilities, targets, bins):
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        confidence = probabilities.max(1)
        members = (confidence > low) & (confidence <= high) if b else confidence <= high
        if members.any():
            accuracy = (probabilities[members].argmax(1) == targets[members]).mean()
            total += members.mean() * abs(accuracy - confidence[members].mean())
    return total


@pytest.fixture(scope="module")
def evaluated(tiny_model, small_digits_root, tmp_path_factory):
    report_dir = tmp_path_factory.mktemp("eval_report")
    metrics = evaluate(eval_cfg(tiny_model, small_digits_root, report_dir, "tta=true", "top_losses=5"))
    return metrics, report_dir


def test_numbers_agree_with_a_direct_computation(evaluated, tiny_model, small_digits_root):
    metrics, report_dir = evaluated
    assert json.loads((report_dir / "metrics.json").read_text()) == {
        k: v for k, v in metrics.items() if k != "report_dir"
    }
    predictor = Predictor.from_file(tiny_model, precision="fp32")
    paths, probabilities, targets = direct_outputs(predictor, small_digits_root)
    predictions = probabilities.argmax(1)
    k = len(predictor.classes)
    matrix = np.zeros((k, k), dtype=int)
    for t, p in zip(targets, predictions):
        matrix[t, p] += 1

    assert metrics["num_images"] == len(paths) == 18
    assert metrics["accuracy"] == pytest.approx((predictions == targets).mean())
    assert metrics["confusion_matrix"] == matrix.tolist()
    for i, name in enumerate(predictor.classes):
        tp = matrix[i, i]
        precision = tp / matrix[:, i].sum() if matrix[:, i].sum() else 0.0
        recall = tp / matrix[i].sum()
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        got = metrics["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (precision, recall, f1, matrix[i].sum())
        )

    ece = expected_calibration_error(probabilities, targets, 15)
    assert metrics["calibration"]["ece"] == pytest.approx(ece, abs=1e-5)
    assert sum(b["count"] for b in metrics["calibration"]["bins"]) == len(paths)

    off_diagonal = sorted(
        ((matrix[i, j], i, j) for i in range(k) for j in range(k) if i != j and matrix[i, j]),
        key=lambda c: -c[0],
    )
    assert [p["count"] for p in metrics["most_confused"]] == [c[0] for c in off_diagonal]

    # Losses use the report's convention: p clipped at 1e-12, so a certain mistake costs 27.6.
    losses = -np.log(np.clip(probabilities[np.arange(len(targets)), targets], 1e-12, 1))
    loss_of = {str(path): loss for path, loss in zip(paths, losses)}
    reported = [e["loss"] for e in metrics["top_losses"]]
    assert reported == pytest.approx(sorted(losses, reverse=True)[:5], rel=1e-4)
    for entry in metrics["top_losses"]:  # ties may come in either order; each entry is right
        i = [str(p) for p in paths].index(entry["path"])
        assert entry["loss"] == pytest.approx(loss_of[entry["path"]], rel=1e-4)
        assert entry["true"] == predictor.classes[targets[i]]
        assert entry["predicted"] == predictor.classes[predictions[i]]
        assert entry["probability"] == pytest.approx(probabilities[i].max(), abs=1e-5)

    tta = np.array([ten_crop_probabilities(predictor, p) for p in paths])
    assert metrics["tta_accuracy"] == pytest.approx((tta.argmax(1) == targets).mean())


def test_report_math_on_known_arrays():
    """The tiny model is nearly constant; these arrays exercise every bin and pair."""
    from imgclf.inference.metrics import classification_metrics, most_confused_pairs, top_loss_entries

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 4)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = np.where(rng.random(400) < 0.6, probabilities.argmax(1), rng.integers(0, 4, 400))
    result = classification_metrics(
        torch.as_tensor(probabilities).float(), torch.as_tensor(targets), "abcd", 10
    )
    ece = expected_calibration_error(probabilities, targets, 10)
    assert result["calibration"]["ece"] == pytest.approx(ece, abs=1e-5)
    assert result["calibration"]["ece"] > 0.01
    bins = result["calibration"]["bins"]
    assert sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / 400 == (
        pytest.approx(ece, abs=1e-5)
    )
    matrix = [[5, 1, 0], [7, 2, 3], [0, 3, 9]]
    assert [(p["true"], p["predicted"], p["count"]) for p in most_confused_pairs(matrix, "abc", 3)] == [
        ("b", "a", 7),
        ("b", "c", 3),
        ("c", "b", 3),
    ]
    assert most_confused_pairs(matrix, "abc")[0]["fraction_of_true"] == pytest.approx(7 / 12)
    entries = top_loss_entries(
        torch.as_tensor(probabilities), torch.as_tensor(targets), [str(i) for i in range(400)], "abcd", 5
    )
    true_p = probabilities[np.arange(400), targets]
    assert [true_p[int(e["path"])] for e in entries] == pytest.approx(sorted(true_p)[:5])


def test_report_files(evaluated):
    metrics, report_dir = evaluated
    for name in ("confusion_matrix.png", "reliability_diagram.png", "top_losses.png"):
        with Image.open(report_dir / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    rows = (report_dir / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,precision,recall,f1,support" and len(rows) == 1 + len(metrics["classes"])


def test_prints_accuracy_tta_and_where_the_report_is(tiny_model, small_digits_root, tmp_path):
    report_dir = tmp_path / "r"
    result = run_script(
        "eval",
        "split=test",
        f"ckpt_path={tiny_model}",
        f"data.root={small_digits_root}",
        f"report_dir={report_dir}",
        "tta=true",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert re.fullmatch(
        r"accuracy: [01]\.\d{4} \(95% interval [01]\.\d{4}-[01]\.\d{4}, \d+ images\)", lines[0]
    )
    assert lines[1].startswith("tta accuracy: ")
    assert lines[-1] == f"report: {report_dir}"


def test_an_undecodable_image_is_left_out_not_replaced(tiny_model, small_digits_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_digits_root, root)
    data = next((root / "test" / "7").glob("*.png")).read_bytes()
    (root / "test" / "7" / "cut.png").write_bytes(data[: len(data) // 2])  # fails the header check
    jpeg = io.BytesIO()
    Image.open(next((root / "test" / "1").glob("*.png"))).convert("RGB").save(jpeg, format="JPEG")
    (root / "test" / "1" / "cut.jpg").write_bytes(jpeg.getvalue()[:300])  # fails only when decoded
    metrics = evaluate(eval_cfg(tiny_model, root, tmp_path / "r"))
    assert metrics["num_images"] == 18
    assert sorted(Path(p).name for p in metrics["left_out"]) == ["cut.jpg", "cut.png"]
    assert all("cut." not in e["path"] for e in metrics["top_losses"])


def test_bad_splits_are_clear_errors(tiny_model, small_digits_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_digits_root, root)

    def run() -> dict:
        return evaluate(eval_cfg(tiny_model, root, tmp_path / "r"))

    (root / "test" / "7").rename(root / "test" / "seven")
    with pytest.raises(ImgclfError, match=r"classes the model does not know: seven; .* trained on: 0, 1, 7"):
        run()
    shutil.rmtree(root / "test" / "seven")
    shutil.rmtree(root / "test" / "1")
    with pytest.raises(ImgclfError, match=r"has one class \(0\)"):
        run()
    shutil.rmtree(root / "test" / "0")
    with pytest.raises(ImgclfError, match=r"test has no class folders"):
        run()


@pytest.mark.parametrize(
    ("correct", "total", "low", "high"),
    [(9, 10, 0.5958, 0.9821), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (102, 107, 0.8952, 0.9799)],
)
def test_accuracy_comes_with_its_wilson_interval(correct, total, low, high):
    """The Wilson score interval at 95 %, against values worked out by hand from Wilson's formula
    (z = 1.95996): a small validation set is wide, and 0 or all correct stays inside [0, 1]."""
    from imgclf.inference.metrics import describe_interval, interval, wilson_interval

    got = wilson_interval(correct, total)
    assert got == pytest.approx((low, high), abs=1e-4)
    bounds = interval(correct, total)
    assert describe_interval(correct / total, bounds).endswith(f"-{bounds['high']:.4f}, {total} images)")
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_the_learning_curve_refits_on_growing_shares_of_each_class(digits_model, digits_root, tmp_path):
    """curve=true: a linear fit on the model's backbone features of 25..100 % of each class's train
    images, scored per class on the split; more images per class at every step, the plot written,
    and the real ImageNet features of the digits already separate them well at full size."""
    report_dir = tmp_path / "r"
    model_dir, _ = digits_model
    common = [
        f"ckpt_path={model_dir / 'model.ckpt'}",
        f"data.root={digits_root}",
        f"paths.log_dir={tmp_path}",
    ]
    result = run_script("eval", "split=val", *common, f"report_dir={report_dir}", "curve=true")
    assert result.returncode == 0, result.stderr[-2000:]
    curve = json.loads((report_dir / "metrics.json").read_text())["learning_curve"]
    rows = curve["rows"]
    assert [r["fraction"] for r in rows] == [0.25, 0.5, 0.75, 1.0]
    for smaller, larger in zip(rows, rows[1:]):
        assert all(
            smaller["per_class"][c]["images"] < larger["per_class"][c]["images"] for c in larger["per_class"]
        )
    assert rows[-1]["accuracy"] >= 0.85 and rows[-1]["accuracy_interval"]["n"] == sum(
        c["recall_interval"]["n"] for c in rows[-1]["per_class"].values()
    )
    assert (report_dir / "learning_curve.png").stat().st_size > 10_000
    assert "learning curve (linear fit on the backbone's features): " in result.stdout
    refused = run_script("eval", "split=train", *common, f"report_dir={tmp_path / 't'}", "curve=true")
    assert refused.returncode == 2 and "curve=true measures on images the fits did not see" in refused.stderr
