"""The inference runtimes side by side in one run: PyTorch, ONNX Runtime fp32 and int8, and served.

    python benchmarks/inference_runtimes.py [--data DIR] [--model model.ckpt] [--image-size 299]
                                            [--rounds 3] [--no-serve]

1. Data: real photos, ``train/`` and ``val/`` class folders: ``--data``, else the original tool's
   hockey photos beside the repository (``../shared/data/real-hockey``) when present, else
   scikit-learn's digits written out as images.
2. Model: ``--model`` (a trained ``model.ckpt``), else an Inception v3 at ``--image-size`` with
   random weights whose batch norm and last layer are calibrated on the training photos
   (imgclf/testing/calibrated.py), so that its classes differ. No download.
3. Export: ``model.onnx`` and ``model.int8.onnx`` (static, QDQ, per-channel int8 weights, uint8
   activations calibrated on ``--calibration-images`` training photos), with imgclf's export code
   and its default settings; the int8 file is measured whatever its agreement.
4. Top-1 agreement and largest probability difference of each runtime against PyTorch fp32 eager
   (the reference) on every validation photo.
5. Speed of the network alone (preprocessed batches in memory) at batch 1 and batch 8, the
   runtimes alternating in ``--rounds`` rounds so that a shared machine's drift hits them all.
6. Served: ``python serve.py runtime=onnx`` on the fastest ONNX file at concurrency 8 (JPEG uploads,
   the server's dynamic batching), alternating with the same work in process (decode, preprocess,
   one batch of 8), as benchmarks/serve_load.py does for PyTorch.

Prints the CPU's features first: the ratios depend on them (AVX2, AVX-512, VNNI, bf16, AMX).
Goals: the best runtime at least 3x PyTorch fp32 eager at batch 8 on an AVX2-only CPU, 4x with
VNNI or native bf16, at >= 99 % top-1 agreement; served throughput at concurrency 8 at least 0.85
of that runtime in process.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from imgclf.data.demo import make_digits_dataset
from imgclf.data.hashing import sha256_file
from imgclf.data.images import load_image
from imgclf.hardware import cpu_features, cpu_has_fast_bf16, describe_machine
from imgclf.inference.export import quantize_int8, split_dataset, to_onnx, with_metadata
from imgclf.inference.predict import Predictor, PredictorBase
from imgclf.inference.runtimes import INT8_NAME, ONNX_NAME, OnnxPredictor
from imgclf.models.checkpoint import load_model
from imgclf.testing import backbone_config
from imgclf.testing.calibrated import calibrated_classifier, folder_images, save_classifier
from imgclf.testing.processes import drive, start_serve, stop

REPO_ROOT = Path(__file__).resolve().parents[1]

HOCKEY = REPO_ROOT.parent / "shared" / "data" / "real-hockey"
BATCHES = (1, 8)
CONCURRENCY = 8


def dataset_root(args: argparse.Namespace, scratch: Path) -> Path:
    if args.data:
        return Path(args.data)
    if (HOCKEY / "train").is_dir() and (HOCKEY / "val").is_dir():
        return HOCKEY
    make_digits_dataset(scratch / "digits", size=64)
    return scratch / "digits"


def build_model(args: argparse.Namespace, root: Path, folder: Path) -> Path:
    """The model.ckpt to benchmark: ``--model``, or a calibrated random Inception v3."""
    if args.model:
        return Path(args.model)
    images, labels, classes = folder_images(root, ["train"])
    model = calibrated_classifier(
        backbone_config("inception_v3"), args.image_size, images, labels, len(classes), hidden_size=1024
    )
    return save_classifier(model, classes, folder / "model.ckpt")


def export_files(ckpt: Path, root: Path, calibration_images: int) -> tuple[bytes, bytes]:
    """model.onnx and model.int8.onnx written beside ``ckpt``, as scripts/export.py writes them."""
    model, record = load_model(ckpt)
    reference = Predictor(model, record, source=ckpt, precision="fp32", channels_last=False)
    source = sha256_file(ckpt)
    unchecked = {"verified": False, "note": "benchmark: measured below, not checked"}
    fp32 = with_metadata(to_onnx(model, model.image_size), record, source, "32-true", unchecked)
    calibration = split_dataset(reference, root, "train", calibration_images, seed=0)
    settings = {"per_channel": True, "reduce_range": False, "calibrate_method": "minmax"}
    int8 = with_metadata(quantize_int8(fp32, calibration, settings, 8, 0), record, source, "int8", unchecked)
    (ckpt.parent / ONNX_NAME).write_bytes(fp32)
    (ckpt.parent / INT8_NAME).write_bytes(int8)
    return fp32, int8


def runtimes(ckpt: Path, fp32: bytes, int8: bytes) -> dict[str, PredictorBase]:
    fast = "bf16" if cpu_has_fast_bf16() else "fp32"
    return {
        "PyTorch fp32 eager (reference)": Predictor.from_file(ckpt, precision="fp32", channels_last=False),
        f"PyTorch {fast}, channels-last": Predictor.from_file(ckpt, precision=fast, channels_last=True),
        "ONNX Runtime fp32": OnnxPredictor(fp32, source=ONNX_NAME),
        "ONNX Runtime int8": OnnxPredictor(int8, source=INT8_NAME),
    }


def agreement(predictors: dict[str, PredictorBase], root: Path) -> tuple[dict[str, tuple[float, float]], int]:
    """Top-1 agreement and largest probability difference with the reference on all val photos."""
    reference = next(iter(predictors.values()))
    dataset = split_dataset(reference, root, "val", None, seed=0)
    answers = {name: p.predict_dataset(dataset, 8, 0, name)[0] for name, p in predictors.items()}
    expected = next(iter(answers.values()))
    return {
        name: (
            float((found.argmax(1) == expected.argmax(1)).float().mean()),
            float((found - expected).abs().max()),
        )
        for name, found in answers.items()
    }, len(expected)


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def speeds(
    predictors: dict[str, PredictorBase], images: torch.Tensor, rounds: int
) -> dict[tuple[str, int], float]:
    """Images per second of the network alone, median over rounds, runtimes alternating."""
    seconds: dict[tuple[str, int], list[float]] = {}
    batches = {size: [images[i : i + size] for i in range(0, 8, size)] for size in BATCHES}
    for predictor in predictors.values():  # warm-up: first calls allocate and plan
        for size in BATCHES:
            predictor.predict_batch(batches[size][0])
    for round_number in range(rounds):
        print(f"speed: round {round_number + 1}/{rounds} ...", file=sys.stderr)
        for name, predictor in predictors.items():
            for size in BATCHES:
                elapsed = sum(timed(predictor.predict_batch, batch) for batch in batches[size])
                seconds.setdefault((name, size), []).append(elapsed / 8)
    return {key: 1 / statistics.median(values) for key, values in seconds.items()}


# --- served -------------------------------------------------------------------------------------


def jpeg_uploads(root: Path, count: int) -> list[bytes]:
    paths = sorted((root / "val").glob("*/*"))[:: max(1, len(list((root / "val").glob("*/*"))) // count)]
    uploads = []
    for path in paths[:count]:
        buffer = io.BytesIO()
        load_image(path).save(buffer, format="JPEG", quality=90)
        uploads.append(buffer.getvalue())
    return uploads


def in_process(predictor: PredictorBase, uploads: list[bytes]) -> float:
    """What the server's worker does with batches of 8: decode, preprocess, one model call each."""
    start = time.perf_counter()
    for i in range(0, len(uploads), 8):
        predictor.predict_batch(torch.stack([predictor.load(data) for data in uploads[i : i + 8]]))
    return len(uploads) / (time.perf_counter() - start)


def served(ckpt: Path, precision: str, predictor: PredictorBase, root: Path, rounds: int, scratch: Path):
    uploads = jpeg_uploads(root, 16)
    try:
        process, url = start_serve(
            f"ckpt_path={ckpt}",
            "runtime=onnx",
            f"precision={precision}",
            "access_log=false",
            log_path=scratch / "server.log",
            timeout=300,
        )
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    shares, rows = [], []
    try:
        drive(url, uploads, CONCURRENCY, 16)  # warm-up
        in_process(predictor, uploads[:8])
        for round_number in range(rounds):
            print(f"served: round {round_number + 1}/{rounds} ...", file=sys.stderr)
            work = 4 * uploads  # the same requests both ways, long enough to time
            local = in_process(predictor, work)
            load = drive(url, uploads, CONCURRENCY, len(work))
            remote = len(work) / load["wall"]
            shares.append(remote / local)
            rows.append((local, remote, len(load["errors"]), statistics.mean(load["batch_sizes"] or [0])))
    finally:
        stop(process)
    return rows, statistics.median(shares)


# --- report -------------------------------------------------------------------------------------


def speed_table(predictors, speed, agree) -> list[str]:
    base = {size: speed[(next(iter(predictors)), size)] for size in BATCHES}
    lines = [
        "| runtime | batch 1 img/s | vs ref. | batch 8 img/s | vs ref. | top-1 agreement | max prob. diff. |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in predictors:
        top1, difference = agree[name]
        cells = " | ".join(f"{speed[(name, s)]:.2f} | {speed[(name, s)] / base[s]:.2f}x" for s in BATCHES)
        lines.append(f"| {name} | {cells} | {top1:.2%} | {difference:.1e} |")
    best = max(predictors, key=lambda name: speed[(name, 8)])
    ratio = speed[(best, 8)] / base[8]
    goal = 4.0 if cpu_features()["VNNI"] or cpu_has_fast_bf16() else 3.0
    verdict = "met" if ratio >= goal and agree[best][0] >= 0.99 else "NOT met"
    lines.append(
        f"\nbest at batch 8: {best}, {ratio:.2f}x PyTorch fp32 eager at {agree[best][0]:.2%} top-1 "
        f"agreement (goal: >= {goal:.0f}x on this CPU at >= 99 %): {verdict}"
    )
    return lines


def served_table(precision: str, rows, share: float) -> list[str]:
    lines = [
        f"served: python serve.py runtime=onnx precision={precision}, concurrency {CONCURRENCY}, JPEGs\n",
        "| round | in process img/s | served img/s | served / in process | failed | mean batch |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for number, (local, remote, failures, batch) in enumerate(rows, 1):
        lines.append(
            f"| {number} | {local:.2f} | {remote:.2f} | {remote / local:.0%} | {failures} | {batch:.1f} |"
        )
    verdict = "met" if share >= 0.85 else "NOT met"
    lines.append(f"\nserved throughput = {share:.0%} of in process (median; goal >= 85 %): {verdict}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset root with train/ and val/ class folders")
    parser.add_argument("--model", help="a trained model.ckpt (default: calibrated random Inception v3)")
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-serve", action="store_true", help="skip the served measurement")
    args = parser.parse_args()

    import onnxruntime

    print(f"# inference_runtimes: {describe_machine()}")
    print(f"# onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory(prefix="inference_runtimes_") as scratch:
        scratch = Path(scratch)
        root = dataset_root(args, scratch)
        print("building and exporting the model ...", file=sys.stderr)
        ckpt = build_model(args, root, scratch)
        if args.model:  # export beside a copy: the user's folder is left as it was
            (scratch / "model.ckpt").write_bytes(ckpt.read_bytes())
            ckpt = scratch / "model.ckpt"
        fp32, int8 = export_files(ckpt, root, args.calibration_images)
        predictors = runtimes(ckpt, fp32, int8)
        print("agreement on the validation photos ...", file=sys.stderr)
        agree, count = agreement(predictors, root)
        reference = next(iter(predictors.values()))
        images = torch.stack([reference.load(path) for path in sorted((root / "val").glob("*/*"))[:8]])
        speed = speeds(predictors, images, args.rounds)

        model = f"trained model {args.model}" if args.model else "Inception v3, random calibrated weights"
        print(
            f"\n{model}, {reference.preprocessing['crop']} px, {len(reference.classes)} classes; data {root}"
        )
        print(
            f"agreement: all {count} validation photos; speed: the network alone, "
            f"median of {args.rounds} rounds\n"
        )
        print("\n".join(speed_table(predictors, speed, agree)))
        if not args.no_serve:
            fastest = max((n for n in predictors if n.startswith("ONNX")), key=lambda n: speed[(n, 8)])
            precision = "int8" if fastest.endswith("int8") else "fp32"
            rows, share = served(ckpt, precision, predictors[fastest], root, args.rounds, scratch)
            print("\n" + "\n".join(served_table(precision, rows, share)))


if __name__ == "__main__":
    main()
