"""ONNX export and the ONNX Runtime path of classify, eval and serve, on real files and processes.

The model is an Inception v3 at 75 px with random weights whose batch norm and last layer are
calibrated on the digits (imgclf/testing/calibrated.py), so that its classes differ from image to image.
``scripts/export.py`` exports it once for the module; int8 is tried on it too (and refused: a
random network's features do not survive int8, see test_int8_refused_below_the_threshold).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, backbone_config, compose, require, run_script, seeded
from PIL import Image

from imgclf.errors import ImgclfError
from imgclf.inference.predict import Predictor
from imgclf.models.checkpoint import read_model
from imgclf.testing.calibrated import calibrated_classifier, folder_images, save_classifier
from imgclf.testing.processes import start_serve, stop

SIZE = 75
FAST = ["num_workers=0", "batch_size=8"]


@pytest.fixture(scope="module", autouse=True)
def onnx_packages():
    for name in ("onnxruntime", "onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            require(False, f"the {name} package (pip install -e '.[onnx]')")


def calibrated_folder(folder: Path, root: Path, backbone: str, size: int) -> Path:
    images, labels, classes = folder_images(root, ["train"])
    model = calibrated_classifier(
        backbone_config(backbone), size, images, labels, len(classes), seed=seeded(0)
    )
    return save_classifier(model, classes, folder / "model.ckpt")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_digits_root) -> tuple[Path, subprocess.CompletedProcess]:
    """A model folder exported by ``python scripts/export.py``: (the folder, the finished process)."""
    folder = tmp_path_factory.mktemp("onnx_model")
    calibrated_folder(folder, small_digits_root, "inception_v3", SIZE)
    result = run_script(
        "export",
        f"ckpt_path={folder / 'model.ckpt'}",
        f"data.root={small_digits_root}",
        f"paths.log_dir={folder / 'logs'}",
        *FAST,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result


@pytest.fixture(scope="module")
def test_images(small_digits_root) -> list[Path]:
    return sorted((small_digits_root / "test").glob("*/*.png"))


def test_export_script_writes_a_checked_self_describing_file(exported):
    import onnxruntime

    folder, result = exported
    printed = {line.split(":")[0]: line for line in result.stdout.splitlines() if line[:1].isalpha()}
    assert printed["model"] == f"model: {folder / 'model.onnx'} (opset 20)"
    assert re.fullmatch(
        r"check: top-1 agreement 100\.00% with PyTorch fp32 on 18 val images, "
        r"max probability difference \d\.\de-\d\d: verified",
        printed["check"],
    ), printed["check"]
    assert not (folder / "model.int8.onnx").exists()

    # Read back with nothing but ONNX Runtime, as a user of the file would.
    session = onnxruntime.InferenceSession(folder / "model.onnx", providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    record = json.loads(meta["imgclf.record"])
    saved = read_model(folder / "model.ckpt")
    for key in ("format", "created", "classes", "preprocessing", "architecture", "hparams", "metrics"):
        assert record[key] == json.loads(json.dumps(saved[key])), key
    assert "state_dict" not in record
    check = json.loads(meta["imgclf.check"])
    assert check["verified"] is True and check["images"] == 18 and check["split"] == "val"
    assert check["max_probability_difference"] <= 1e-3
    assert meta["imgclf.precision"] == "32-true"
    (images,) = session.get_inputs()
    assert images.name == "images" and images.shape[1:] == [3, SIZE, SIZE]
    assert isinstance(images.shape[0], str), "the batch axis is dynamic"
    batch = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    assert session.run(None, {"images": batch})[0].shape == (3, 3)


def test_onnx_runtime_answers_as_pytorch(exported, test_images):
    from imgclf.inference.runtimes import OnnxPredictor

    folder, _ = exported
    torch_predictor = Predictor.from_file(folder / "model.ckpt", precision="fp32")
    onnx_predictor = OnnxPredictor.from_file(folder / "model.onnx")
    assert (onnx_predictor.runtime, onnx_predictor.precision) == ("onnx", "32-true")
    for name in ("classes", "preprocessing", "hparams", "backbone"):
        assert getattr(onnx_predictor, name) == getattr(torch_predictor, name), name
    batch = torch.stack([torch_predictor.load(path) for path in test_images])
    expected = torch_predictor.predict_batch(batch)
    answers = onnx_predictor.predict_batch(batch)
    assert answers.shape == expected.shape and answers.dtype == torch.float32
    assert torch.equal(answers.argmax(1), expected.argmax(1))
    assert (answers - expected).abs().max() < 1e-3  # the export's own max_probability_difference
    assert len(set(expected.argmax(1).tolist())) > 1, "the calibrated model tells classes apart"
    alone = onnx_predictor.predict_batch(batch[:1])  # another batch size: the axis is dynamic
    assert (alone[0] - answers[0]).abs().max() < 1e-5
    # as the server opens it: threads that sleep between batches, the same answers
    sleeping = OnnxPredictor.from_file(folder / "model.onnx", spin=False)
    options = sleeping.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert (sleeping.predict_batch(batch) - answers).abs().max() < 1e-6


def test_no_lightning_on_the_onnx_path(exported, test_images):
    folder, _ = exported
    code = textwrap.dedent(
        f"""
        import sys
        from imgclf.inference.runtimes import load_predictor
        predictor = load_predictor({str(folder)!r}, runtime="onnx")
        print(predictor.classify([{str(test_images[0])!r}]))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))
        assert not loaded, loaded
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def classify_script(folder: Path, runtime: str, *images: Path) -> subprocess.CompletedProcess:
    img = f"img=[{','.join(str(p) for p in images)}]" if len(images) > 1 else f"img={images[0]}"
    ckpt = f"ckpt_path={folder / 'model.ckpt'}"
    # fp32 both: this random network's answers are too fragile for bf16 (imgclf/testing/calibrated.py)
    return run_script("classify", ckpt, img, f"runtime={runtime}", "precision=fp32", timeout=300)


def test_classify_script_same_answers_with_onnx(exported, test_images, tmp_path):
    folder, _ = exported
    images = test_images[::6]  # one per class
    answers = {}
    for runtime in ("torch", "onnx"):
        result = classify_script(folder, runtime, *images)
        assert result.returncode == 0, result.stderr[-3000:]
        answers[runtime] = json.loads(result.stdout)
    assert list(answers["onnx"]) == list(answers["torch"]) == [str(p) for p in images]
    for path, expected in answers["torch"].items():
        got = answers["onnx"][path]
        assert list(got) == list(expected) == ["0", "1", "7"]
        assert got == pytest.approx(expected, abs=1e-3)

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    error = classify_script(folder, "onnx", broken)
    assert error.returncode == 2 and "Traceback" not in error.stderr
    assert error.stderr == (  # load_image's words, as with runtime=torch (tests/test_bad_input.py)
        f"error: {broken}: not an image of an accepted format; use a JPEG, PNG, GIF, WEBP, BMP or TIFF file\n"
    )


def test_eval_same_report_with_onnx(exported, small_digits_root, tmp_path):
    from imgclf.inference.evaluate import evaluate

    folder, _ = exported
    metrics = {}
    for runtime in ("torch", "onnx"):
        overrides = [
            f"ckpt_path={folder / 'model.ckpt'}",
            f"data.root={small_digits_root}",
            f"report_dir={tmp_path / runtime}",
            f"runtime={runtime}",
            "precision=fp32",
            "num_workers=0",
        ]
        metrics[runtime] = evaluate(compose("eval", overrides, output_dir=tmp_path / f"run-{runtime}"))
    torch_metrics, onnx_metrics = metrics["torch"], metrics["onnx"]
    assert list(onnx_metrics) == list(torch_metrics)
    assert (onnx_metrics["runtime"], torch_metrics["runtime"]) == ("onnx", "torch")
    assert onnx_metrics["model_file"] == str(folder / "model.onnx")
    assert onnx_metrics["accuracy"] == torch_metrics["accuracy"]
    assert onnx_metrics["confusion_matrix"] == torch_metrics["confusion_matrix"]
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted(
        p.name for p in (tmp_path / "torch").iterdir()
    )


def test_serve_with_onnx_runtime(exported, test_images, tmp_path):
    from imgclf.inference.runtimes import OnnxPredictor

    folder, _ = exported
    log_path = tmp_path / "server.log"
    process, url = start_serve(f"ckpt_path={folder / 'model.ckpt'}", "runtime=onnx", log_path=log_path)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            info = client.get("/info").json()
            assert (info["runtime"], info["precision"]) == ("onnx", "32-true")
            assert info["model_file"] == "model.onnx"  # the name only: /info shows no paths
            assert info["classes"] == ["0", "1", "7"] and info["hparams"]["image_size"] == SIZE

            predictor = OnnxPredictor.from_file(folder / "model.onnx")
            answer = client.post("/classify", files={"img": ("seven.png", test_images[-1].read_bytes())})
            assert answer.status_code == 200
            body = answer.json()
            assert list(body) == ["predictions", "success"] and body["success"] is True
            assert all(list(p) == ["label", "probability"] for p in body["predictions"])
            expected = predictor.ranked(predictor.predict_batch(predictor.load(test_images[-1])[None])[0])
            assert [p["label"] for p in body["predictions"]] == [p["label"] for p in expected]
            assert [p["probability"] for p in body["predictions"]] == pytest.approx(
                [p["probability"] for p in expected], abs=1e-6
            )
            bad = client.post("/classify", files={"img": ("x.png", b"not an image")})
            assert bad.status_code == 400 and bad.json()["success"] is False
            assert "not an image of an accepted format" in bad.json()["error"]
    finally:
        stop(process)
    assert "Traceback" not in log_path.read_text()


def copy_model(folder: Path, target: Path, *names: str) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.ckpt", *names):
        shutil.copy(folder / name, target / name)
    return target


def export_cfg(folder: Path, root: Path, tmp_path: Path, *overrides: str):
    return compose(
        "export",
        [f"ckpt_path={folder / 'model.ckpt'}", f"data.root={root}", *FAST, *overrides],
        output_dir=tmp_path / "run",
    )


def test_int8_kept_only_at_the_threshold(exported, small_digits_root, tmp_path, record_property):
    """int8 calibrated on 16 training images, against PyTorch fp32 on the 18 validation images.

    A random network's deep features do not survive int8 (trained ones do: docs/benchmarks.md), so
    its int8 answers agree with fp32 on well under all 18 images: ``min_agreement=1.0`` refuses the
    file (and removes an older one); the agreement it measured, as ``min_agreement``, keeps it (the
    same calibration gives the same int8 network), and ``runtime=auto`` then picks it.
    """
    from imgclf.inference.export import export

    folder = copy_model(exported[0], tmp_path / "model", "model.onnx")
    (folder / "model.int8.onnx").write_bytes((folder / "model.onnx").read_bytes())  # an older export
    settings = ["quantize=int8", "calibration_images=16"]
    result = export(export_cfg(folder, small_digits_root, tmp_path, *settings, "min_agreement=1.0"))
    int8 = result["int8"]
    assert int8["kept"] is False and int8["path"] is None
    assert not (folder / "model.int8.onnx").exists()
    agreement = int8["check"]["top1_agreement"]
    record_property("int8 top-1 agreement (random network)", agreement)
    # measured 44-72% over 3 seeds and both CPU kinds (benchmarks/quality_spread.py)
    assert agreement < 1.0 and int8["check"]["images"] == 18
    assert int8["message"].startswith(
        f"int8 refused: top-1 agreement {agreement:.2%} with PyTorch fp32 on 18 val images"
    )
    assert "below the 100% required; model.onnx stays the one to use" in int8["message"]
    assert "removed the older model.int8.onnx" in int8["message"]
    assert int8["check"]["quantization"] == {
        "per_channel": True,
        "reduce_range": False,
        "calibrate_method": "minmax",
        "format": "QDQ",
        "weights": "int8",
        "activations": "uint8",
        "calibration_images": 16,
    }
    assert result["onnx"]["check"]["verified"] is True
    assert choose(folder, "auto").path == folder / "model.onnx"

    kept = export(export_cfg(folder, small_digits_root, tmp_path, *settings, f"min_agreement={agreement}"))
    assert kept["int8"]["kept"] is True and kept["int8"]["check"]["top1_agreement"] == agreement
    assert kept["int8"]["path"] == str(folder / "model.int8.onnx")
    choice = choose(folder, "auto")
    assert (choice.runtime, choice.path, choice.onnx.precision) == (
        "onnx",
        folder / "model.int8.onnx",
        "int8",
    )
    assert (
        choice.onnx.check["verified"] is True
        and choice.onnx.check["quantization"]["calibration_images"] == 16
    )
    assert choose(folder, "onnx", "fp32").path == folder / "model.onnx"


def choose(folder: Path, runtime: str, precision: str = "auto"):
    from imgclf.inference.runtimes import choose_model

    return choose_model(folder / "model.ckpt", runtime, precision)


def rewrite_check(path: Path, **changes) -> None:
    """Rewrite an exported file's recorded check, as an export that measured otherwise would."""
    import onnx

    model = onnx.load(path)
    meta = {prop.key: prop.value for prop in model.metadata_props}
    meta["imgclf.check"] = json.dumps({**json.loads(meta["imgclf.check"]), **changes})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, path)


def test_runtime_choice(exported, tmp_path, caplog, record_property):
    from imgclf.inference.runtimes import choose_model
    from imgclf.models.checkpoint import export_model, load_model

    folder = copy_model(exported[0], tmp_path / "model", "model.onnx")
    assert choose(folder, "torch").runtime == "torch"
    assert choose(folder, "onnx").path == folder / "model.onnx"
    assert choose(folder, "auto", "fp32").path == folder / "model.onnx"
    auto = choose(folder, "auto")
    record_property(
        "onnx fp32 top-1 agreement", float(auto.reason.split("agreement ")[1].split("%")[0]) / 100
    )
    assert (auto.runtime, auto.path) == ("onnx", folder / "model.onnx")
    # 100% in every run: 3 seeds, AVX-512 and AVX2 kernels (benchmarks/quality_spread.py)
    assert auto.reason.startswith("model.onnx: top-1 agreement 100.00% with PyTorch fp32 on 18 val images")
    assert choose_model(folder, "onnx").path == folder / "model.onnx"  # a model folder will do
    direct = choose_model(folder / "model.onnx", "auto")  # and so will the file itself
    assert direct.runtime == "onnx" and direct.record()["classes"] == ["0", "1", "7"]
    with pytest.raises(ImgclfError, match="no exported model.int8.onnx in .*quantize=int8"):
        choose(folder, "onnx", "int8")
    with pytest.raises(ImgclfError, match="precision=int8 runs the exported model.int8.onnx"):
        choose(folder, "torch", "int8")
    with pytest.raises(ImgclfError, match="runtime=onnx runs int8 or fp32 files"):
        choose(folder, "onnx", "bf16")
    with pytest.raises(ImgclfError, match="runtime='tensorrt'"):
        choose(folder, "tensorrt")

    rewrite_check(folder / "model.onnx", verified=False, top1_agreement=0.5)
    assert "did not pass its export check (top-1 agreement 50.00%" in choose(folder, "auto", "fp32").reason
    with caplog.at_level("WARNING", logger="imgclf.inference.runtimes"):
        assert choose(folder, "onnx").path == folder / "model.onnx"
    assert "runtime=onnx uses it all the same" in caplog.text

    model, record = load_model(folder / "model.ckpt")  # retrained: another model.ckpt
    export_model(
        model, record["classes"], folder / "model.ckpt", hparams=record["hparams"], metrics={"x": 1.0}
    )
    stale = choose(folder, "auto", "fp32")
    assert stale.runtime == "torch" and "model.onnx was exported from another model.ckpt" in stale.reason
    with pytest.raises(ImgclfError, match="exported from another model.ckpt.*scripts/export.py"):
        choose(folder, "onnx")
    (folder / "model.onnx").unlink()
    with pytest.raises(
        ImgclfError, match="no exported model.int8.onnx or model.onnx in .*scripts/export.py`"
    ):
        choose(folder, "onnx")
    assert choose(folder, "auto").runtime == "torch"


def test_missing_onnxruntime_is_a_clear_error(
    exported, test_images, small_digits_root, tmp_path, monkeypatch
):
    from imgclf.inference.export import export
    from imgclf.inference.runtimes import load_predictor

    folder, _ = exported
    # Where onnxruntime is not installed (a shadow package that fails to import stands in for it):
    shadow = tmp_path / "no_onnxruntime" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'onnxruntime'\")\n")
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    ckpt, img = f"ckpt_path={folder / 'model.ckpt'}", f"img={test_images[0]}"
    result = run_script("classify", ckpt, img, "runtime=onnx", env={"PYTHONPATH": path}, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (
        "error: runtime=onnx needs the onnxruntime package, which is not installed; "
        "install imgclf's onnx extra: `pip install -e '.[onnx]'`\n"
    )
    # The same in this process: a None entry in sys.modules makes the import fail.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert load_predictor(folder, "auto").runtime == "torch"  # model.onnx is there, but cannot run
    with pytest.raises(
        ImgclfError, match=r"^exporting needs the onnxruntime package.*pip install -e '\.\[onnx\]'"
    ):
        export(export_cfg(folder, small_digits_root, tmp_path))


@pytest.mark.parametrize(
    "backbone", ["resnet50", "efficientnet_v2_s", "convnext_tiny", "mobilenet_v3_large", "vit_b_16"]
)
def test_every_backbone_exports(backbone, small_digits_root, tmp_path, test_images):
    """Inception v3 is the module's model; each other backbone exports and answers as in PyTorch."""
    from imgclf.inference.export import export
    from imgclf.inference.runtimes import OnnxPredictor

    folder = tmp_path / backbone
    calibrated_folder(folder, small_digits_root, backbone, 64)
    result = export(export_cfg(folder, small_digits_root, tmp_path))
    assert result["onnx"]["check"]["verified"] is True, result["onnx"]["check"]
    torch_predictor = Predictor.from_file(folder / "model.ckpt", precision="fp32")
    onnx_predictor = OnnxPredictor.from_file(folder / "model.onnx")
    assert onnx_predictor.backbone == backbone
    batch = torch.stack([torch_predictor.load(path) for path in test_images])
    expected, answers = torch_predictor.predict_batch(batch), onnx_predictor.predict_batch(batch)
    assert torch.equal(answers.argmax(1), expected.argmax(1))
    assert (answers - expected).abs().max() < 1e-3


def readme_snippet() -> str:
    """The plain ONNX Runtime example of the "Deploying" page (docs/deploying.md)."""
    deploying = (REPO_ROOT / "docs" / "deploying.md").read_text()
    assert deploying.startswith("# Deploying\n")
    blocks = re.findall(r"```python\n(.*?)```", deploying, flags=re.DOTALL)
    (snippet,) = [block for block in blocks if "onnxruntime" in block]
    return snippet


def test_readme_snippet_classifies_with_onnxruntime_alone(exported, small_digits_root, tmp_path):
    """docs/deploying.md's numpy + Pillow example, run as written, answers as imgclf does."""
    from imgclf.inference.runtimes import OnnxPredictor

    folder, _ = exported
    (tmp_path / "data" / "trained_model").mkdir(parents=True)
    shutil.copy(folder / "model.onnx", tmp_path / "data" / "trained_model" / "model.onnx")
    predictor = OnnxPredictor.from_file(folder / "model.onnx")
    digit = next((small_digits_root / "test" / "7").glob("*.png"))
    # At the resize size the resampling is the identity in both, so the answers must match (to the
    # snippet's 4 decimals). At another size PIL's bilinear filter and torchvision's differ by a
    # grey level here and there, which this random network magnifies: the top-1 must still match.
    side = predictor.preprocessing["resize"]
    for name, size, tolerance in (("exact", (side, side), 1e-4), ("photo", (150, 110), 0.15)):
        Image.open(digit).convert("RGB").resize(size).save(tmp_path / "photo.jpg", quality=95)
        code = (
            readme_snippet()
            + "import sys\nassert 'torch' not in sys.modules and 'imgclf' not in sys.modules\n"
        )
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        printed = ast.literal_eval(result.stdout)  # {label: probability rounded to 4 places}
        expected = predictor.classify([tmp_path / "photo.jpg"])[0]
        assert list(printed) == list(expected) == ["0", "1", "7"]
        assert max(printed, key=printed.get) == max(expected, key=expected.get), name
        assert printed == pytest.approx(expected, abs=tolerance), name


def test_export_bad_settings_are_clear_errors(exported, small_digits_root, tmp_path):
    from imgclf.inference.export import export

    folder, _ = exported
    for model, root, overrides, message in (
        (folder, small_digits_root, ["quantize=int4"], "quantize=int4; use quantize=int8"),
        (folder, small_digits_root, ["min_agreement=1.5"], "min_agreement=1.5: use a fraction"),
        (
            folder,
            small_digits_root,
            ["quantize=int8", "quantization.calibrate_method=guess"],
            "use one of minmax, entropy, percentile",
        ),
        (tmp_path / "none", small_digits_root, [], "no trained model at"),
        (folder, tmp_path / "nowhere", [], "dataset folder .*nowhere does not exist"),
    ):
        with pytest.raises(ImgclfError, match=message):
            export(export_cfg(model, root, tmp_path, *overrides))
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".onnx") == ["model.onnx"]
