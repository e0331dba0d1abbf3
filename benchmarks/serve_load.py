"""Load-test ``python serve.py`` against the in-process predictor, side by side in one run.

    python benchmarks/serve_load.py [--pairs 16] [--rounds 4] [--precision bf16] [--image-size 299]
                                    [--against REV]

1. Builds a realistic Inception v3 ``model.ckpt`` in a temporary folder: 299 px, random weights,
   batch norm and last layer calibrated so that it answers like a trained model (see
   :func:`calibrated_model`). No training, no download.
2. Starts the server on loopback with conf/serve.yaml's defaults, except ``precision`` (bf16 by
   default, the served path the goals are about; what ``precision=auto`` would pick is reported).
3. Drives it from a second process with a bounded number of requests, alternating with the
   benchmark process's own :class:`imgclf.inference.predict.Predictor` doing what the server's worker does
   (decode, preprocess, model) on the same uploads, because a shared machine drifts in speed:
   single requests against single images (concurrency 1), rounds of concurrency 8 against batches
   of the server's ``max_batch_size``; then concurrency 32 once.
4. Times the model alone in fp32 and in bf16 + channels-last on the same batches, with top-1s.

With ``--against REV`` a second server runs the code of git revision REV (say, before a change)
on the same model, and each measurement of this tree's server is followed by the same one of
that server, next to the same in-process measurement: a before/after comparison from one run.
Each server is paused (SIGSTOP to its process group) while the other is measured.

Prints a Markdown report and the goals: throughput at concurrency 8 >= 85 % of in-process, p50
at concurrency 1 within 25 ms of in-process single-image latency, bf16 + channels-last >= 2.5x
fp32 with equal top-1 answers, no failed request.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from imgclf.data.images import load_image
from imgclf.data.transforms import eval_transform
from imgclf.hardware import describe_machine
from imgclf.inference.predict import Predictor
from imgclf.models.checkpoint import export_model
from imgclf.models.classifier import ImageClassifier
from imgclf.testing.processes import drive, start_serve, stop

REPO_ROOT = Path(__file__).resolve().parents[1]
INCEPTION = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf/model/backbone/inception_v3.yaml"))

CONCURRENCY = (1, 8, 32)
BATCH_SIZE = 8  # conf/serve.yaml's max_batch_size, which the server runs with


def synthetic_photos(count: int, seed: int, size: tuple[int, int] = (500, 375)) -> list[Image.Image]:
    """Smooth colour fields with grain: JPEG-sized work for the decoder, varied for the model."""
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        low = torch.from_numpy(rng.random((1, 3, 6, 8), dtype=np.float32))
        smooth = torch.nn.functional.interpolate(low, size=size[::-1], mode="bicubic")[0]
        pixels = smooth.permute(1, 2, 0).numpy() * 255 + rng.normal(0, 12, (*size[::-1], 3))
        photos.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return photos


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@torch.no_grad()
def calibrated_model(image_size: int, uploads: list[bytes]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Random Inception v3 that answers like a trained one: one class per upload, with margin.

    Untrained batch norm (mean 0, variance 1) lets activations grow to ~1e10 and gives every image
    the same one-hot answer, which would make the bf16-vs-fp32 comparison meaningless. One pass in
    training mode sets the batch-norm statistics; the last layer then becomes a
    least-squares fit to the uploads' own features, so that upload ``i`` is class ``i`` by a clear
    margin, as a trained model is about the images it knows.
    """
    torch.manual_seed(0)
    model = ImageClassifier(INCEPTION, len(uploads), image_size=image_size)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration pass
    preprocessing = model.preprocessing
    transform = eval_transform(preprocessing)
    images = torch.stack([transform(load_image(data)) for data in uploads])
    model.train()(images)
    model.eval()
    last = model.head.layers[-1]
    hidden: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _m, inputs, _o: hidden.append(inputs[0]))
    model(images)
    hook.remove()
    # The smallest last layer that scores each upload 10 for its own class and 0 for the others.
    centred = hidden[0] - hidden[0].mean(0)
    targets = 10.0 * torch.eye(len(uploads))
    weight = torch.linalg.pinv(centred) @ targets
    last.weight.copy_(weight.T)
    last.bias.copy_(-hidden[0].mean(0) @ weight)
    return model, preprocessing


def write_model(folder: Path, image_size: int, uploads: list[bytes]) -> Path:
    model, preprocessing = calibrated_model(image_size, uploads)
    classes = [f"photo_{i:02d}" for i in range(len(uploads))]
    hparams = {"note": "benchmark model: random weights, calibrated", "image_size": image_size}
    return export_model(model, classes, folder / "model.ckpt", hparams)


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def batches_of(uploads: list[bytes]) -> list[list[bytes]]:
    return [uploads[i : i + BATCH_SIZE] for i in range(0, len(uploads), BATCH_SIZE)]


def classify_uploads(predictor: Predictor, uploads: list[bytes]) -> torch.Tensor:
    """What the server's worker does with a batch: decode, preprocess, one model call."""
    return predictor.predict_batch(torch.stack([predictor.load(data) for data in uploads]))


def in_process_throughput(predictor: Predictor, uploads: list[bytes]) -> float:
    batches = batches_of(uploads)
    return len(uploads) / sum(timed(classify_uploads, predictor, batch) for batch in batches)


# --- the server ----------------------------------------------------------------------------------


def checkout(revision: str, folder: Path) -> Path:
    """The files of git ``revision`` of this repository, in ``folder``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", revision],
        capture_output=True,
        check=True,
    ).stdout
    folder.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


# --- bf16 + channels-last against fp32 -----------------------------------------------------------


def precision_comparison(ckpt: Path, uploads: list[bytes], runs: int) -> list[dict[str, Any]]:
    """Model time for the same batches under each precision, alternating, with top-1 answers."""
    variants = [
        ("fp32, NCHW (reference)", "fp32", False),
        ("fp32, channels-last", "fp32", True),
        ("bf16 autocast, channels-last (served)", "bf16", True),
    ]
    rows = []
    for name, precision, channels_last in variants:
        predictor = Predictor.from_file(ckpt, precision=precision, channels_last=channels_last)
        batches = [torch.stack([predictor.load(data) for data in batch]) for batch in batches_of(uploads)]
        probabilities = torch.cat([predictor.predict_batch(batch) for batch in batches])  # also warms up
        rows.append(
            {
                "name": name,
                "predictor": predictor,
                "batches": batches,
                "probabilities": probabilities,
                "top1": probabilities.argmax(1),
                "times": [],
            }
        )
    for _ in range(runs):
        for row in rows:
            for batch in row["batches"]:
                row["times"].append(timed(row["predictor"].predict_batch, batch))
    for row in rows:
        row["seconds"] = statistics.median(row.pop("times"))
        del row["predictor"], row["batches"]
    return rows


# --- report --------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summary(load: dict[str, Any]) -> dict[str, float]:
    latencies = load["latencies"]
    return {
        "throughput": len(latencies) / load["wall"],
        "p50": percentile(latencies, 50) * 1000,
        "p95": percentile(latencies, 95) * 1000,
        "batch": statistics.mean(load["batch_sizes"] or [0]),
        "errors": len(load["errors"]),
    }


def latency_table(pairs: list[dict[str, float]]) -> tuple[list[str], float]:
    in_process = statistics.median(pair["in_process_ms"] for pair in pairs)
    served = statistics.median(pair["server_ms"] for pair in pairs)
    gap = statistics.median(pair["server_ms"] - pair["in_process_ms"] for pair in pairs)
    lines = [
        "| concurrency 1, paired | in-process, 1 image ms | server ms | gap ms |",
        "|---|---|---|---|",
        f"| median of {len(pairs)} pairs | {in_process:.0f} | {served:.0f} | {gap:+.0f} |",
    ]
    return lines, gap


def throughput_table(rounds: list[dict[str, Any]]) -> tuple[list[str], float]:
    lines = [
        (
            f"| concurrency 8, round | in-process, batches of {BATCH_SIZE} img/s | server img/s "
            "| server / in-process | mean batch |"
        ),
        "|---|---|---|---|---|",
    ]
    for number, entry in enumerate(rounds, 1):
        served = summary(entry["load"])
        entry["share"] = served["throughput"] / entry["throughput"]
        lines.append(
            f"| {number} | {entry['throughput']:.2f} | {served['throughput']:.2f} "
            f"| {entry['share']:.0%} | {served['batch']:.1f} |"
        )
    share = statistics.median(entry["share"] for entry in rounds)
    lines.append(f"| median | | | {share:.0%} | |")
    return lines, share


def load_table(loads: dict[int, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| concurrency | requests | failed | img/s | p50 ms | p95 ms | mean batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for concurrency, runs in loads.items():
        pooled = {
            "latencies": [x for run in runs for x in run["latencies"]],
            "batch_sizes": [x for run in runs for x in run["batch_sizes"]],
            "errors": [x for run in runs for x in run["errors"]],
            "wall": sum(run["wall"] for run in runs),
        }
        stats = summary(pooled)
        lines.append(
            f"| {concurrency} | {sum(run['requests'] for run in runs)} | {stats['errors']} "
            f"| {stats['throughput']:.2f} | {stats['p50']:.0f} | {stats['p95']:.0f} "
            f"| {stats['batch']:.1f} |"
        )
    return lines


def precision_table(precisions: list[dict[str, Any]]) -> tuple[list[str], float, bool]:
    fp32, served = precisions[0], precisions[-1]
    own_class = int((fp32["top1"] == torch.arange(len(fp32["top1"]))).sum())
    lines = [
        (
            f"| model only, batch of {BATCH_SIZE} | s/batch | speed-up vs fp32 "
            "| top-1 equal to fp32 | max abs. probability difference |"
        ),
        "|---|---|---|---|---|",
    ]
    for row in precisions:
        same = int((row["top1"] == fp32["top1"]).sum())
        difference = (row["probabilities"] - fp32["probabilities"]).abs().max()
        lines.append(
            f"| {row['name']} | {row['seconds']:.2f} | {fp32['seconds'] / row['seconds']:.2f}x "
            f"| {same}/{len(row['top1'])} | {difference:.1e} |"
        )
    lines.append(f"\nfp32 names each upload's own class for {own_class}/{len(fp32['top1'])} of them.")
    return lines, fp32["seconds"] / served["seconds"], bool((served["top1"] == fp32["top1"]).all())


def goal_lines(share: float, gap: float, speedup: float, same_top1: bool, failed: int) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    top1 = "equal" if same_top1 else "DIFFERENT"
    return [
        "Goals:",
        f"- throughput at concurrency 8 = {share:.0%} of in-process (goal >= 85 %): "
        + verdict(share >= 0.85),
        f"- p50 at concurrency 1 = in-process single image {gap:+.0f} ms (goal <= +25 ms): "
        + verdict(gap <= 25),
        f"- bf16 + channels-last = {speedup:.2f}x fp32, top-1 {top1} (goal >= 2.5x, equal): "
        + verdict(speedup >= 2.5 and same_top1),
        f"- failed requests: {failed} (goal 0): {verdict(failed == 0)}",
    ]


def report(args, served: str, auto: str, pairs, rounds, loads, precisions) -> str:
    per_pair, gap = latency_table(pairs)
    per_round, share = throughput_table(rounds)
    per_precision, speedup, same_top1 = precision_table(precisions)
    failed = sum(len(run["errors"]) for runs in loads.values() for run in runs)
    classes = len(precisions[0]["top1"])
    header = (
        f"Model: Inception v3, {args.image_size} px, {classes} classes, random calibrated weights. "
        f"Server and in-process predictor run {served}, max_batch_size {BATCH_SIZE}; "
        f"{describe_machine()}. "
        f"precision=auto would choose {auto} for this model (it checks on synthetic probe images)."
    )
    sections = [
        [header],
        [
            "In-process and server measurements alternate (a shared machine drifts in speed):",
            "one request against one in-process image at concurrency 1, rounds at concurrency 8.",
        ],
        per_pair,
        per_round,
        ["All server requests:"],
        load_table(loads),
        per_precision,
        goal_lines(share, gap, speedup, same_top1, failed),
    ]
    return "\n\n".join("\n".join(section) for section in sections)


def paused(servers: list[dict[str, Any]], active: dict[str, Any]):
    """Pause every server but ``active`` (all of them for ``None``), so that only one runs."""
    for server in servers:
        if len(servers) > 1:
            os.killpg(server["process"].pid, signal.SIGCONT if server is active else signal.SIGSTOP)


def measure(args, predictor: Predictor, uploads: list[bytes], client, servers: list[dict[str, Any]]):
    """Alternate in-process work with the same work through each server; results per server."""
    for server in servers:
        server.update(loads={c: [] for c in CONCURRENCY}, pairs=[], rounds=[])
    print(f"concurrency 1: {args.pairs} pairs ...", file=sys.stderr)
    for index in range(args.pairs):
        upload = [uploads[index % len(uploads)]]
        paused(servers, None)
        in_process_ms = 1000 * timed(classify_uploads, predictor, upload)
        for server in servers:
            paused(servers, server)
            load = client.submit(drive, server["url"], upload, 1, 1).result()
            server["loads"][1].append(load)
            if load["latencies"]:
                pair = {"in_process_ms": in_process_ms, "server_ms": 1000 * load["latencies"][0]}
                server["pairs"].append(pair)
    for number in range(1, args.rounds + 1):
        print(f"concurrency 8: round {number}/{args.rounds} ...", file=sys.stderr)
        paused(servers, None)
        throughput = in_process_throughput(predictor, uploads)
        for server in servers:
            paused(servers, server)
            load = client.submit(drive, server["url"], uploads, 8, 4 * len(uploads)).result()
            server["loads"][8].append(load)
            server["rounds"].append({"throughput": throughput, "load": load})
    print("concurrency 32 ...", file=sys.stderr)
    for server in servers:
        paused(servers, server)
        server["loads"][32].append(client.submit(drive, server["url"], uploads, 32, 2 * 32).result())
    for server in servers:
        paused(servers, server)  # running again, to be stopped


def comparison(server: dict[str, Any]) -> str:
    """The concurrency tables and the serving goals for the ``--against`` server."""
    per_pair, gap = latency_table(server["pairs"])
    per_round, share = throughput_table(server["rounds"])
    failed = sum(len(run["errors"]) for runs in server["loads"].values() for run in runs)
    goals = goal_lines(share, gap, 0.0, True, failed)
    goals = [line for line in goals if "bf16" not in line]  # one model comparison, above
    sections = [
        [f"Against {server['name']}, measured in the same pairs and rounds:"],
        per_pair,
        per_round,
        ["All its requests:"],
        load_table(server["loads"]),
        goals,
    ]
    return "\n\n".join("\n".join(section) for section in sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--pairs", type=int, default=16, help="single requests at concurrency 1")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of 64 requests at concurrency 8")
    parser.add_argument("--precision", default="bf16", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--against", metavar="REV", help="also measure a server running git revision REV")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve_load_") as folder:
        folder = Path(folder)
        print("building the benchmark model ...", file=sys.stderr)
        uploads = [jpeg(photo) for photo in synthetic_photos(2 * BATCH_SIZE, seed=1)]
        ckpt = write_model(folder, args.image_size, uploads)
        auto_precision = Predictor.from_file(ckpt).precision
        predictor = Predictor.from_file(ckpt, precision=args.precision)  # as the server's worker
        classify_uploads(predictor, uploads[:BATCH_SIZE])  # warm-up

        roots = [("this tree", REPO_ROOT)]
        if args.against:
            roots.append((args.against, checkout(args.against, folder / "against")))
        servers = []
        try:
            for number, (name, root) in enumerate(roots):
                # another revision's server imports that revision's package, not the installed one
                env = {"PYTHONPATH": str(root)} if root != REPO_ROOT else None
                try:
                    process, url = start_serve(
                        f"ckpt_path={ckpt}",
                        f"precision={args.precision}",
                        log_path=folder / f"server{number}.log",
                        root=root,
                        env=env,
                        timeout=300,
                    )
                except RuntimeError as exc:
                    raise SystemExit(str(exc)) from None
                servers.append({"name": name, "url": url, "process": process})
            # the HTTP client runs in a process of its own, out of the in-process measurement's way
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as client:
                for server in servers:
                    client.submit(drive, server["url"], uploads, 2, 4).result()  # warm-up
                measure(args, predictor, uploads, client, servers)
        finally:
            for server in servers:
                os.killpg(server["process"].pid, signal.SIGCONT)
                stop(server["process"])
        ours = servers[0]
        pairs, rounds, loads = ours["pairs"], ours["rounds"], ours["loads"]

        print("bf16 against fp32 ...", file=sys.stderr)
        precisions = precision_comparison(ckpt, uploads, runs=2)
        print(report(args, predictor.precision, auto_precision, pairs, rounds, loads, precisions))
        for server in servers[1:]:
            print("\n" + comparison(server))
        for server in servers:
            for concurrency, runs in server["loads"].items():
                for error in [e for run in runs for e in run["errors"]][:3]:
                    print(f"{server['name']} failed at concurrency {concurrency}: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
