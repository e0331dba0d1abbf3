"""make demo: build the digits dataset, train, evaluate on test, classify one image.

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

from imgclf.backbones import weights_file  # noqa: E402
from imgclf.demo import make_digits_dataset  # noqa: E402

BACKBONE = OmegaConf.load(ROOT / "conf" / "model" / "backbone" / "inception_v3.yaml")


def step(*args: str) -> None:
    command = [sys.executable, *args]
    print(f"\n$ python {shlex.join(args)}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def main() -> None:
    started = time.time()
    counts = make_digits_dataset(ROOT / "data" / "digits")
    print(f"digits dataset in data/digits: {counts}")
    weights = weights_file(BACKBONE)
    if weights.is_file():
        print(f"ImageNet weights found ({weights}): training the head on a frozen backbone.")
        model = ["model.pretrained=true", "model.optimizer.lr=1e-3", "data.image_size=150"]
    else:
        print(
            f"No ImageNet weights in {weights.parent} (this machine is offline): "
            "training Inception v3 from scratch instead. With the weights, transfer learning "
            "is faster and more accurate."
        )
        model = ["model.pretrained=false"]
    step("scripts/train.py", "+experiment=digits", *model)
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
