"""Shared fixtures. In CI (CI=true) a missing browser or server fails the test instead of skipping."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from imgclf.testing import IN_CI, REPO_ROOT, backbone_config, backbone_names, require  # noqa: F401


def pytest_report_header(config) -> str:
    """Learned results (accuracy, agreement) depend on the CPU's kernels and precision."""
    from imgclf.hardware import describe_machine

    return describe_machine()


def seeded(default: int) -> int:
    """A test's fixed seed, or ``IMGCLF_TEST_SEED`` when set: benchmarks/quality_spread.py reruns
    the tests that assert a learned quality (accuracy, agreement, recall) under other seeds and
    precisions, to measure the spread their thresholds rest on."""
    value = os.environ.get("IMGCLF_TEST_SEED")
    return default if value is None else int(value)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("IMGCLF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    require(Path(path).exists(), f"Chromium ({path})")
    return path


def launch_chromium(playwright, path: str):
    """Debian's Chromium, headless, as root in a container (no sandbox), quiet on the network."""
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-quic",
        "--disable-sync",
    ]
    return playwright.chromium.launch(executable_path=path, headless=True, args=args)


def compose(config_name: str, overrides: list[str] | None = None, output_dir: Path | None = None):
    """Compose a real config from conf/ as the scripts do, with ``${hydra:...}`` resolvable."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf")):
        cfg = hydra_compose(config_name, overrides=overrides or [], return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    return cfg


# Small enough for a 2-core CI machine, big enough to learn: the network sees 75 px images.
FAST_TRAIN = [
    "model.pretrained=false",
    "model.optimizer.lr=1e-3",
    "data.image_size=75",
    "data.augment=false",
    "data.num_workers=0",
    "data.batch_size=16",
    "callbacks=none",
    "logger=none",
    f"seed={seeded(42)}",
]


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """All ten digit classes, 1,797 real images split 60/20/20."""
    from imgclf.data.demo import make_digits_dataset

    root = tmp_path_factory.mktemp("digits") / "dataset"
    make_digits_dataset(root, size=32)
    return root


@pytest.fixture(scope="session")
def small_digits_root(tmp_path_factory) -> Path:
    """Three digit classes, 30 images each (18 train, 6 val, 6 test)."""
    from imgclf.data.demo import make_digits_dataset

    root = tmp_path_factory.mktemp("small_digits") / "dataset"
    make_digits_dataset(root, size=32, labels=(0, 1, 7), per_class=30)
    return root


def train_model(data_root: Path, model_dir: Path, extra: list[str] | None = None) -> Path:
    from imgclf.training.train import train

    overrides = FAST_TRAIN + [f"data.root={data_root}", f"paths.model_dir={model_dir}"] + (extra or [])
    train(compose("train", overrides, output_dir=model_dir / "run"))
    return model_dir / "model.ckpt"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, small_digits_root) -> Path:
    """A real model.ckpt trained briefly on ``small_digits_root`` (classes 0, 1, 7)."""
    model_dir = tmp_path_factory.mktemp("tiny_model")
    return train_model(small_digits_root, model_dir, ["trainer.max_epochs=2"])


def search_spaces_env() -> dict[str, str]:
    """The environment for a script to find ``tests/search_spaces.py`` (a custom_search_space)."""
    path = [str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH")]
    return {"PYTHONPATH": os.pathsep.join(p for p in path if p)}


def run_script(script: str, *overrides: str, timeout: int = 900, env: dict | None = None):
    """Run ``scripts/<script>.py`` as a user would, from the repo root."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, f"scripts/{script}.py", *overrides],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory, digits_root):
    """The demo's ``scripts/train.py +experiment=digits_pretrained`` on all ten classes, head only
    (on EfficientNet-Lite0's stored ImageNet features: seconds), with more epochs for the head in
    place of the fine-tuning stage: (model dir, the finished process)."""
    model_dir = tmp_path_factory.mktemp("digits_model")
    result = run_script(
        "train",
        "+experiment=digits_pretrained",
        "model.fine_tune=false",
        "trainer.max_epochs=10",
        f"data.root={digits_root}",
        f"paths.model_dir={model_dir}",
        f"paths.cache_dir={model_dir / 'cache'}",
        f"seed={seeded(42)}",
        f"paths.log_dir={model_dir / 'logs'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result
