"""The training recipe beyond the original's: augmentation presets, MixUp/CutMix, label smoothing,
EMA of the weights, and the learning-rate finder, each through the real training command."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import FAST_TRAIN, compose, run_script
from PIL import Image

from imgclf.config import build
from imgclf.data.transforms import PRESETS, augment_preset, eval_transform, train_transform
from imgclf.errors import ImgclfError
from imgclf.models.backbones import preprocessing
from imgclf.testing import backbone_config
from imgclf.training.module import ClassifierModule, batch_mixing
from imgclf.training.train import steepest_fall

LITE0 = ["+experiment=digits_pretrained", "model.fine_tune=false", "data.num_workers=0"]


def photo(size: int = 96) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_augmentation_preset_makes_the_networks_pixels(preset):
    pixels = preprocessing(backbone_config("efficientnet_lite0"), 64)
    steps = {"rotation": 10, "translate": 0.1, "shear": 5, "zoom": [0.9, 1.1], "hflip": True, "vflip": False}
    augment = steps if preset == "original" else {"preset": preset}
    torch.manual_seed(0)
    augmented = train_transform(pixels, augment)(photo())
    plain = eval_transform(pixels)(photo())
    assert augmented.shape == plain.shape == (3, 64, 64) and augmented.dtype == torch.float32
    assert not torch.equal(augmented, plain), "the augmentation changed nothing"


def test_the_augment_setting_names_a_preset_or_says_which(tmp_path, small_digits_root):
    assert augment_preset(True) == "original" and augment_preset(False) is None
    assert augment_preset("trivial") == "trivial" and augment_preset("none") is None
    with pytest.raises(ImgclfError, match="data.augment='autoaugment': use original, trivial, randaugment"):
        augment_preset("autoaugment")
    # the original's parameters stay the data's augmentation as before: stored features keep their key
    cfg = compose("train", [f"data.root={small_digits_root}"], output_dir=tmp_path)
    assert build(cfg.data).augmentation == dict(cfg.data.augmentation)
    assert build(cfg.data, augment="trivial").augmentation == {"preset": "trivial"}
    assert build(cfg.data, augment=False).augmentation is None


def test_mixup_and_cutmix_blend_image_batches_with_soft_labels():
    assert batch_mixing(3, 0.0, 0.0) is None
    module = ClassifierModule(
        3, backbone_config("mobilenet_v3_large"), torch.optim.Adam, pretrained=False, mixup=0.4, cutmix=1.0
    )
    torch.manual_seed(0)
    images = torch.randn(8, 3, 64, 64)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mixed_loss, _, counted = module._step((images, targets), training=True)
    plain_loss, _, plain_targets = module._step((images, targets))
    assert torch.equal(plain_targets, targets) and not torch.isclose(mixed_loss, plain_loss)
    assert counted.shape == targets.shape  # each blend counted as its larger share
    features = torch.randn(8, int(module.model.backbone_config["feature_dim"]))
    _, _, feature_targets = module._step((features, targets), training=True)
    assert torch.equal(feature_targets, targets), "stored features are not blended"


def test_the_recipe_options_train_a_model_that_records_them(tmp_path, small_digits_root):
    model_dir = tmp_path / "model"
    result = run_script(
        "train",
        *FAST_TRAIN,
        f"data.root={small_digits_root}",
        f"paths.model_dir={model_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "model/backbone=mobilenet_v3_large",
        "data.augment=trivial",
        "model.mixup=0.4",
        "model.cutmix=1.0",
        "model.label_smoothing=0.1",
        "model.ema_decay=0.9",
        "trainer.max_epochs=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    hparams = torch.load(model_dir / "model.ckpt", weights_only=True)["hparams"]
    assert hparams["augment"] == "trivial" and hparams["mixup"] == 0.4 and hparams["cutmix"] == 1.0
    assert hparams["label_smoothing"] == 0.1 and hparams["ema_decay"] == 0.9
    assert "val accuracy: " in result.stdout


def test_blending_on_stored_features_says_it_needs_images(tmp_path, small_digits_root):
    result = run_script(
        "train",
        *LITE0,
        f"data.root={small_digits_root}",
        f"paths.model_dir={tmp_path / 'model'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "model.mixup=0.2",
        "trainer.max_epochs=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model.mixup / model.cutmix blend images: stage head trains on stored features" in result.stderr


def test_the_steepest_fall_is_found_per_decade_before_the_loss_blows_up():
    lrs = np.logspace(-7, 0, 100)
    decades = np.log10(lrs)
    # flat, then falling between 1e-4 and 1e-2 (fastest at 1e-3), then diverging
    losses = (
        2.3 - 1.2 / (1 + np.exp(-3 * (decades + 3))) + np.where(decades > -1.5, 10 ** (decades + 1.5) - 1, 0)
    )
    losses[:3] = 1.0  # the biased start of a smoothed loss
    suggestion = steepest_fall(lrs, losses)
    assert 10**-3.3 < suggestion < 10**-2.7
    assert steepest_fall(lrs, np.full(100, 2.3)) is None, "no fall: no suggestion"
    assert steepest_fall(lrs[:8], losses[:8]) is None, "too few steps"


def test_lr_find_reports_and_plots_and_auto_trains_with_it(tmp_path, small_digits_root):
    common = [
        *LITE0,
        f"data.root={small_digits_root}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    found = run_script("train", *common, f"paths.model_dir={tmp_path / 'found'}", "lr_find=true")
    assert found.returncode == 0, found.stderr[-3000:]
    suggestion = float(found.stdout.split("learning-rate finder: suggestion ")[1].split()[0])
    assert 1e-6 < suggestion < 1 and "model.optimizer.lr=auto" in found.stdout
    assert list((tmp_path / "logs").rglob("lr_find.png"))
    assert not (tmp_path / "found" / "model.ckpt").exists(), "lr_find=true answers, it does not train"

    auto = run_script(
        "train",
        *common,
        f"paths.model_dir={tmp_path / 'auto'}",
        "model.optimizer.lr=auto",
        "trainer.max_epochs=2",
    )
    assert auto.returncode == 0, auto.stderr[-3000:]
    used = torch.load(tmp_path / "auto" / "model.ckpt", weights_only=True)["hparams"]["optimizer"]["lr"]
    assert math.isclose(used, float(auto.stdout.split("suggestion ")[1].split()[0]), rel_tol=1e-2)
