"""GPU checks: what CI (CPU only) cannot run, as one script for a machine with a CUDA GPU.

1. Inference, every backbone at its weights' own size, batch 64: fp32 against bf16 autocast +
   channels-last, images/s and the top-1 agreement of the two on the same random batch.
2. Training steps, Inception v3 at 299 px, batch 64, on batches in GPU memory: stage 1 (frozen
   backbone, head trained) and fine-tuning (everything trained), fp32 against bf16-mixed.
3. The real ``scripts/train.py`` on the digits: from scratch (``+experiment=digits trainer=gpu``),
   then the feature store with that run's backbone as the "pretrained" weights, on one process and
   under DDP on one GPU (``trainer=ddp trainer.devices=1``): wall time, validation accuracy, the
   feature pass's time, and whether the two runs built and reused one store.
4. ONNX Runtime's execution providers; with CUDA's, an exported model's throughput on it.

    python benchmarks/gpu.py [--quick] [--sections 1 2 3 4]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from imgclf.models.classifier import ImageClassifier
from imgclf.testing import backbone_config as backbone

ROOT = Path(__file__).resolve().parents[1]


BACKBONES = sorted(p.stem for p in (ROOT / "conf" / "model" / "backbone").glob("*.yaml"))  # every one offered


def timed(step, repeats: int) -> float:
    """Seconds per call of ``step`` after two warm-up calls, CUDA synchronised."""
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def inference(batch_size: int, repeats: int) -> None:
    print("\n## 1. Inference, batch %d, random weights\n" % batch_size)
    print("| backbone | px | fp32 img/s | bf16 + channels-last img/s | ratio | top-1 agreement |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in BACKBONES:
        torch.manual_seed(0)
        model = ImageClassifier(backbone(name), 10).cuda().eval()
        size = model.preprocessing["crop"]
        images = torch.randn(batch_size, 3, size, size, device="cuda")
        with torch.inference_mode():
            fp32 = timed(lambda: model(images), repeats)
            reference = model(images).argmax(1)
            model.to(memory_format=torch.channels_last)
            fast_images = images.contiguous(memory_format=torch.channels_last)

            def bf16_step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return model(fast_images)

            bf16 = timed(bf16_step, repeats)
            agreement = (bf16_step().argmax(1) == reference).float().mean().item()
        print(
            f"| {name} | {size} | {batch_size / fp32:.0f} | {batch_size / bf16:.0f} | "
            f"{fp32 / bf16:.2f}x | {agreement:.1%} |",
            flush=True,
        )


def training(batch_size: int, repeats: int) -> None:
    print(f"\n## 2. Training steps, inception_v3, 299 px, batch {batch_size}, batches in GPU memory\n")
    print("| step | fp32 img/s | bf16-mixed + channels-last img/s | ratio |")
    print("| --- | ---: | ---: | ---: |")
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, 299, 299, device="cuda")
    targets = torch.randint(0, 10, (batch_size,), device="cuda")
    for stage in ("stage 1 (frozen backbone)", "fine-tuning (all layers)"):
        rates = []
        for bf16 in (False, True):
            model = ImageClassifier(backbone("inception_v3"), 10).cuda()
            frozen = stage.startswith("stage 1")
            model.backbone.requires_grad_(not frozen)
            model.train()
            if frozen:
                model.backbone.eval()
            batch = images
            if bf16:
                model.to(memory_format=torch.channels_last)
                batch = images.contiguous(memory_format=torch.channels_last)
            optimizer = torch.optim.Adam(
                [p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True
            )

            def step():
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    loss = torch.nn.functional.cross_entropy(model(batch).float(), targets)
                loss.backward()
                optimizer.step()

            rates.append(batch_size / timed(step, repeats))
        print(f"| {stage} | {rates[0]:.0f} | {rates[1]:.0f} | {rates[1] / rates[0]:.2f}x |", flush=True)


def train_script(args: list[str], log: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "scripts/train.py", *args], cwd=ROOT, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    log.write_text(result.stdout + result.stderr)
    if result.returncode:
        return seconds, f"FAILED ({result.returncode}): {result.stderr.strip().splitlines()[-1][:300]}"
    accuracy = re.search(r"val accuracy: ([0-9.]+)", result.stdout)
    return seconds, f"val accuracy {accuracy.group(1) if accuracy else '?'}"


def end_to_end(out: Path) -> None:
    from imgclf.data.demo import make_digits_dataset

    print("\n## 3. scripts/train.py on the digits (1,078 training images)\n")
    print("| run | wall s (process start to exit) | result | feature store |")
    print("| --- | ---: | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "digits"
        make_digits_dataset(data, size=64)
        weights = tmp / "inception.pth"  # written after the first run: its trained backbone
        common = [f"data.root={data}", f"paths.log_dir={tmp / 'logs'}", "data.num_workers=8"]
        cached = [
            "model.pretrained=true",
            f"model.weights_path={weights}",
            "model.optimizer.lr=1e-3",
            "data.image_size=75",  # the size that backbone learnt at
            "data.augment=true",
            "features.views=4",
            f"paths.cache_dir={tmp / 'cache'}",
            "trainer.max_epochs=10",
        ]
        runs = [
            (
                "from scratch, +experiment=digits trainer=gpu (bf16-mixed)",
                ["+experiment=digits", "trainer=gpu"],
            ),
            (
                "from scratch, the same in fp32",
                ["+experiment=digits", "trainer=gpu", "trainer.precision=32-true"],
            ),
            ("feature store, one process (builds the store)", ["trainer=gpu", *cached]),
            (
                "feature store, DDP on one GPU (trainer=ddp devices=1)",
                ["trainer=ddp", "trainer.devices=1", *cached],
            ),
        ]
        for number, (label, extra) in enumerate(runs):
            log = out / f"train{number}.log"
            seconds, result = train_script(
                [*extra, *common, f"paths.model_dir={tmp / f'model{number}'}"], log
            )
            text = log.read_text()
            if number == 0 and (tmp / "model0" / "model.ckpt").is_file():
                state = torch.load(tmp / "model0" / "model.ckpt", weights_only=True)["state_dict"]
                backbone_state = {
                    k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
                }
                torch.save(backbone_state, weights)
            store = ""
            if "Computing backbone features once" in text:
                took = re.search(r"share of the feature pass took ([0-9.]+) s", text)
                store = f"built ({took.group(1) if took else '?'} s feature pass)"
            elif "Reusing the feature store" in text:
                store = "reused"
            print(f"| {label} | {seconds:.0f} | {result} | {store} |", flush=True)


def onnx_runtime(batch_size: int, repeats: int) -> None:
    print("\n## 4. ONNX Runtime\n")
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed")
        return
    providers = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}, providers: {', '.join(providers)}")
    if "CUDAExecutionProvider" not in providers:
        print("no CUDAExecutionProvider: the CUDA path of runtime=onnx cannot be measured here")
        return
    import numpy as np

    torch.manual_seed(0)
    model = ImageClassifier(backbone("inception_v3"), 10).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 299, 299),),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        )
        session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
        images = np.random.default_rng(0).standard_normal((batch_size, 3, 299, 299), dtype=np.float32)
        session.run(None, {"images": images})
        started = time.perf_counter()
        for _ in range(repeats):
            session.run(None, {"images": images})
        rate = batch_size * repeats / (time.perf_counter() - started)
    print(f"inception_v3 fp32 on CUDAExecutionProvider, batch {batch_size}: {rate:.0f} img/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for the train.py logs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run this on a machine with one")
    repeats = 5 if args.quick else 20
    torch.backends.cudnn.benchmark = True
    print(f"# gpu: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    sections = {
        1: lambda: inference(64, repeats),
        2: lambda: training(64, repeats),
        3: lambda: end_to_end(Path(args.out)),
        4: lambda: onnx_runtime(64, repeats),
    }
    for number in args.sections:
        sections[number]()


if __name__ == "__main__":
    main()
