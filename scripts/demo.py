"""make demo: build the digits dataset, train on ImageNet features, evaluate on test, classify one image.

Each step is the real command a user would type, run as a subprocess and shown first.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from imgclf.data.demo import make_digits_dataset  # noqa: E402
from imgclf.errors import ImgclfError  # noqa: E402
from imgclf.models.backbones import fetch_weights  # noqa: E402

BACKBONE = OmegaConf.to_container(
    OmegaConf.load(ROOT / "conf" / "model" / "backbone" / "efficientnet_lite0.yaml")
)


def step(*args: str) -> None:
    command = [sys.executable, *args]
    print(f"\n$ python {shlex.join(args)}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def main() -> None:
    started = time.time()
    counts = make_digits_dataset(ROOT / "data" / "digits")
    print(f"digits dataset in data/digits: {counts}")
    try:
        weights = fetch_weights(BACKBONE, allow_download=False)
    except ImgclfError as exc:  # the package is a dependency: only a broken install lacks it
        print(f"{exc}\nTraining Inception v3 from scratch instead.")
        step("scripts/train.py", "+experiment=digits")
    else:
        print(
            f"ImageNet weights: EfficientNet-Lite0 from the installed package {BACKBONE['weights']} "
            f"({weights}). The head trains on the frozen backbone's stored features, then its top "
            "blocks fine-tune on images."
        )
        step("scripts/train.py", "+experiment=digits_pretrained")
    model_dir = "paths.model_dir=data/trained_model_digits"
    step("scripts/eval.py", "split=test", "data.root=data/digits", model_dir)
    sample = sorted((ROOT / "data" / "digits" / "test" / "7").glob("*.png"))[0]
    step("scripts/classify.py", f"img={sample.relative_to(ROOT)}", model_dir)
    print(f"\ndemo finished in {time.time() - started:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
