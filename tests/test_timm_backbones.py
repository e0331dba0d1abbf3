"""timm backbones: EfficientNet-Lite0's packaged ImageNet weights mapped onto timm's network and
checked against ImageNet itself, timm's zoo loaded from a local file as an offline user would, the
fine-tuning rule across families, and the errors when weights cannot be had."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
from conftest import REPO_ROOT, backbone_config, compose
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_images
from timm.data import ImageNetInfo

from imgclf.config import build
from imgclf.data.transforms import eval_transform
from imgclf.errors import ImgclfError
from imgclf.models.backbones import fetch_weights
from imgclf.models.classifier import ImageClassifier
from imgclf.models.timm_backbones import top_blocks_rule, translate_efficientnet_lite

LITE0 = backbone_config("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_file() -> str:
    return str(fetch_weights(LITE0, allow_download=False))


@pytest.fixture(scope="module")
def lite0_state(lite0_file) -> dict[str, torch.Tensor]:
    return torch.load(lite0_file, map_location="cpu", weights_only=True)


def imagenet_top1(network: torch.nn.Module, preprocessing: dict, image: Image.Image) -> tuple[str, float]:
    classifier = ImageNetInfo()
    with torch.no_grad():
        probabilities = network.eval()(eval_transform(preprocessing)(image).unsqueeze(0)).softmax(1)[0]
    p, index = probabilities.max(0)
    return classifier.index_to_description(int(index)), float(p)


def test_packaged_weights_see_imagenet_as_imagenet(lite0_file, lite0_state):
    """The package's weights through imgclf's mapping and imgclf's own pixels (timm's
    pretrained_cfg, the model's preprocessing) name scikit-learn's photos as ImageNet does: a
    wrong tensor, a swapped BatchNorm or the wrong normalisation would not."""
    model = ImageClassifier.pretrained(LITE0, 2, weights_path=lite0_file)
    assert model.preprocessing == {
        "resize": 256,
        "crop": 224,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
    }
    # the ImageNet classifier the backbone left out, put back on top of it
    network = torch.nn.Sequential(model.backbone, torch.nn.Linear(1280, 1000))
    network[1].load_state_dict({"weight": lite0_state["_fc.weight"], "bias": lite0_state["_fc.bias"]})
    china, flower = (Image.fromarray(array) for array in load_sample_images().images)
    label, p = imagenet_top1(network, model.preprocessing, china)
    assert label == "palace" and p > 0.2, (label, p)
    label, p = imagenet_top1(network, model.preprocessing, flower)
    assert label == "daisy" and p > 0.2, (label, p)


def test_the_default_config_finds_the_packaged_weights_offline(tmp_path):
    cfg = compose(
        "train", ["model/backbone=efficientnet_lite0", "model.allow_download=false"], output_dir=tmp_path
    )
    module = build(cfg.model, num_classes=3)
    assert module.weights_source.endswith("efficientnet-lite0-57934424.pth")
    assert cfg.data.image_size == 224
    assert build(cfg.data).preprocessing == module.model.preprocessing
    assert module.model.backbone_config["timm_version"] == timm.__version__


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s.__setitem__("_blocks.3._bn1.weight", torch.zeros(7)), r"_blocks\.3\._bn1\.weight -> "),
        (lambda s: s.pop("_blocks.15._project_conv.weight"), "unset"),
        (lambda s: s.__setitem__("_blocks.3._se_reduce.weight", torch.zeros(1)), "no counterpart"),
        (lambda s: s.__setitem__("_blocks.16._bn1.weight", torch.zeros(1)), "beyond the network's 16 blocks"),
    ],
)
def test_a_mapping_that_does_not_fit_fails_loudly(lite0_state, damage, message):
    state = dict(lite0_state)
    damage(state)
    network = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    with pytest.raises(ImgclfError, match=message):
        translate_efficientnet_lite(state, network)


def test_translation_is_total_and_shape_checked(lite0_state):
    network = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    translated = translate_efficientnet_lite(lite0_state, network)
    assert set(translated) == set(network.state_dict())
    # every tensor of the file except the ImageNet classifier lands once
    assert len(translated) == len(lite0_state) - 2


@pytest.mark.parametrize(
    "name, blocks, freeze_norm",
    [
        ("tf_efficientnet_lite0", ["blocks.5", "blocks.6", "conv_head", "bn2"], True),
        ("convnext_nano", ["stages.2", "stages.3", "head"], False),
        ("vit_small_patch16_224", ["blocks.10", "blocks.11", "norm"], False),
        ("resnet50", ["layer3", "layer4"], True),
    ],
)
def test_the_fine_tuning_rule_across_families(tmp_path, name, blocks, freeze_norm):
    cfg = compose(
        "train",
        [
            "model/backbone=timm",
            f"model.backbone.name={name}",
            "model.pretrained=false",
            "data.image_size=64",
        ],
        output_dir=tmp_path,
    )
    module = build(cfg.model, num_classes=3)
    resolved = module.model.backbone_config
    assert resolved["fine_tune_blocks"] == blocks
    assert resolved["freeze_norm"] is freeze_norm
    assert resolved["fine_tune_blocks"] == top_blocks_rule(module.model.backbone)
    with torch.no_grad():
        features = module.model.backbone.eval()(torch.randn(1, 3, 64, 64))
    assert features.shape == (1, resolved["feature_dim"])
    # the explicit list of efficientnet_lite0.yaml is the rule's answer
    if name == "tf_efficientnet_lite0":
        assert LITE0["fine_tune_blocks"] == blocks


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_from_a_local_file(tmp_path, suffix):
    """Offline, timm's zoo loads from the file a user saved (the hub's model.safetensors, or a
    torch.save'd state dict), through timm's own loading: the weights are the file's, the ImageNet
    classifier is dropped, a vision transformer's position embeddings follow data.image_size."""
    torch.manual_seed(0)
    reference = timm.create_model("vit_small_patch16_224")  # 224 px, the ImageNet classifier
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(reference.state_dict(), str(path))
    else:
        torch.save(reference.state_dict(), path)
    cfg = compose(
        "train",
        [
            "model/backbone=timm",
            "model.backbone.name=vit_small_patch16_224",
            f"model.weights_path={path}",
            "data.image_size=64",
        ],
        output_dir=tmp_path,
    )
    module = build(cfg.model, num_classes=3)
    loaded = module.model.backbone.state_dict()
    assert torch.equal(loaded["blocks.11.mlp.fc2.weight"], reference.state_dict()["blocks.11.mlp.fc2.weight"])
    assert loaded["pos_embed"].shape[1] == 1 + (64 // 16) ** 2  # resampled from 14 x 14
    assert not any(k.startswith("head.") for k in loaded)
    assert module.model.backbone_config["feature_dim"] == 384


def test_a_file_of_another_network_is_refused(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(path))
    cfg = compose(
        "train",
        ["model/backbone=timm", "model.backbone.name=convnext_nano", f"model.weights_path={path}"],
        output_dir=tmp_path,
    )
    with pytest.raises(ImgclfError, match="does not match timm's convnext_nano"):
        build(cfg.model, num_classes=3)


def test_an_unknown_timm_name_says_how_to_list_them(tmp_path):
    cfg = compose("train", ["model/backbone=timm", "model.backbone.name=convnext_nanoo"], output_dir=tmp_path)
    with pytest.raises(ImgclfError, match="not a timm model; list them"):
        build(cfg.model, num_classes=3)


@pytest.mark.parametrize("allow_download", ["false", "true"])
def test_no_hub_weights_offline_is_one_clear_error(tmp_path, allow_download):
    """train.py with timm hub weights on a machine without the hub: the command's own one-line
    error that names model.weights_path and model.pretrained=false, before any data is read."""
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),  # an empty cache
        "HF_HUB_OFFLINE": "1",  # what a machine without the hub sees, quickly
    }
    result = subprocess.run(
        [
            sys.executable,
            "scripts/train.py",
            "model/backbone=timm",
            "model.backbone.name=convnext_nano",
            f"model.allow_download={allow_download}",
            f"data.root={tmp_path / 'no-data'}",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert "ImageNet weights for timm's convnext_nano are not available" in error
    assert "model.weights_path=" in error and "model.pretrained=false" in error
    assert "Traceback" not in result.stderr
