"""Every backbone the project offers, through every path: config, scratch, stored features with
local "pretrained" weights, staged fine-tuning, the model file, classify.py and the server."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import httpx
import pytest
import pytorch_lightning as pl
import timm
import torch
from conftest import FAST_TRAIN, backbone_config, backbone_names, compose, run_script
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import get_model_builder, get_weight

from imgclf.config import build
from imgclf.errors import ImgclfError
from imgclf.models.backbones import default_image_size, fetch_weights, preprocessing
from imgclf.models.checkpoint import read_model
from imgclf.testing.processes import start_serve, stop
from imgclf.training.finetune import StagedFineTuning
from imgclf.training.module import ClassifierModule
from imgclf.training.train import train

# The smallest size that works for each (Inception v3 needs 75 px), to keep CI short.
SIZES = {
    "inception_v3": 75,
    "resnet50": 64,
    "efficientnet_v2_s": 64,
    "convnext_tiny": 64,
    "mobilenet_v3_large": 64,
    "vit_b_16": 64,
    "efficientnet_lite0": 64,  # timm's tf_efficientnet_lite0, the weights of an installed package
    "timm": 64,  # timm's zoo; its default name, convnext_nano
}
BACKBONES = sorted(SIZES)
# The server rebuilds a model file's network with the code classify.py uses (checked for every
# backbone above); it is started for one of each library, as a server start costs two processes.
SERVED = {"inception_v3", "efficientnet_lite0"}


def test_every_backbone_has_a_config():
    assert backbone_names() == BACKBONES


@pytest.fixture(scope="module")
def imagenet_state_dicts(tmp_path_factory) -> dict[str, Path]:
    """Each network's state dict in its library's ImageNet layout (classifier included), as a
    downloaded weights file would be; random values, except EfficientNet-Lite0's, whose real
    weights are installed. Inception v3's own random initialisation gives pooled features beyond
    float16 (the feature store refuses them); PyTorch's default initialisation
    (``init_weights=False``) gives small ones, as trained weights do."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {"efficientnet_lite0": fetch_weights(backbone_config("efficientnet_lite0"), allow_download=False)}
    torch.manual_seed(0)
    paths["timm"] = folder / "timm.pth"
    torch.save(timm.create_model(backbone_config("timm")["name"]).state_dict(), paths["timm"])
    for name in set(BACKBONES) - set(paths):
        torch.manual_seed(0)
        extra = {"init_weights": False} if name == "inception_v3" else {}
        network = get_model_builder(name)(weights=None, **extra)
        paths[name] = folder / f"{name}.pth"
        torch.save(network.state_dict(), paths[name])
    return paths


def overrides(name: str, root: Path, model_dir: Path, *extra: str) -> list[str]:
    return [
        *FAST_TRAIN,
        f"model/backbone={name}",
        f"data.image_size={SIZES[name]}",
        f"data.root={root}",
        f"paths.model_dir={model_dir}",
        "trainer.max_epochs=1",
        *extra,
    ]


@pytest.mark.parametrize("name", BACKBONES)
def test_builds_from_config_with_the_weights_pixels(tmp_path, name):
    spec = backbone_config(name)
    default = compose("train", [f"model/backbone={name}"], output_dir=tmp_path)
    if spec.get("library") == "timm":
        assert default.data.image_size == timm.models.get_pretrained_cfg(spec["name"]).input_size[-1]
    else:
        assert default.data.image_size == get_weight(spec["weights"]).transforms().crop_size[0]
    assert default.data.image_size == default_image_size(spec)
    size = SIZES[name]
    cfg = compose(
        "train",
        [f"model/backbone={name}", "model.pretrained=false", f"data.image_size={size}"],
        output_dir=tmp_path,
    )
    module = build(cfg.model, num_classes=3)
    assert module.model.preprocessing == preprocessing(spec, size)
    assert build(cfg.data).preprocessing == module.model.preprocessing  # one source for both
    with torch.no_grad():
        features = module.model.backbone.eval()(torch.randn(2, 3, size, size))
    assert features.shape == (2, module.model.backbone_config["feature_dim"])


@pytest.mark.parametrize("name", BACKBONES)
def test_fine_tuning_unfreezes_exactly_the_named_blocks(name, imagenet_state_dicts):
    size = SIZES[name]
    module = ClassifierModule(
        3,
        backbone_config(name),
        functools.partial(torch.optim.SGD, lr=0.5),
        image_size=size,
        weights_path=str(imagenet_state_dicts[name]),
    )
    spec = module.model.backbone_config  # timm's `auto` blocks, resolved
    before = {k: v.clone() for k, v in module.model.backbone.state_dict().items()}
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(6, 3, size, size), torch.arange(6) % 3)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        callbacks=[StagedFineTuning(spec["fine_tune_blocks"], 0, 1.0, spec["freeze_norm"])],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=6))
    after = module.model.backbone.state_dict()
    blocks = tuple(f"{block}." for block in spec["fine_tune_blocks"])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all(k.startswith(blocks) for k in changed), sorted(
        changed - {k for k in changed if k.startswith(blocks)}
    )
    if spec["freeze_norm"]:  # BatchNorm statistics stay ImageNet's
        assert not any(k.endswith(("running_mean", "running_var")) for k in changed)
    trainable = {n for n, p in module.model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(blocks) for n in trainable)


def serve_once(model: Path, image: Path, log_path: Path) -> dict:
    """Start serve.py on ``model``, POST ``image``, stop it; the JSON answer."""
    process, url = start_serve(f"ckpt_path={model}", "precision=fp32", log_path=log_path)
    try:
        with open(image, "rb") as handle:
            answer = httpx.post(f"{url}/classify", files={"img": handle}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()
    finally:
        stop(process)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_every_path_works(tmp_path, name, small_digits_root, imagenet_state_dicts):
    # from scratch, on images: every parameter trains (two steps; the model is saved below)
    scratch_run = overrides(
        name,
        small_digits_root,
        tmp_path / "scratch",
        "+trainer.limit_train_batches=2",
        "save_model=false",
    )
    scratch = train(compose("train", scratch_run, output_dir=tmp_path))
    assert 0 <= scratch["val/acc"] <= 1 and scratch["best_epoch"] == 0
    # the head on stored features of the "pretrained" backbone, then the top blocks on images
    model_dir = tmp_path / "pretrained"
    pretrained = overrides(
        name,
        small_digits_root,
        model_dir,
        "model.pretrained=true",
        f"model.weights_path={imagenet_state_dicts[name]}",
        "model.fine_tune=true",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    train(compose("train", pretrained, output_dir=tmp_path / "run"))
    store = next((tmp_path / "cache").iterdir())
    record = read_model(model_dir / "model.ckpt")  # weights_only
    backbone = record["architecture"]["backbone"]
    assert json.loads((store / "meta.json").read_text())["splits"]["train"]["dim"] == backbone["feature_dim"]
    assert backbone["name"] == backbone_config(name)["name"]
    if backbone.get("library") == "timm":  # the model file says which timm built it
        assert backbone["timm_version"] == timm.__version__
    assert record["preprocessing"]["crop"] == SIZES[name]
    image = sorted((small_digits_root / "test" / "7").glob("*.png"))[0]
    classified = run_script("classify", f"img={image}", f"paths.model_dir={model_dir}", "precision=fp32")
    assert classified.returncode == 0, classified.stderr[-2000:]
    probabilities = json.loads(classified.stdout)
    assert list(probabilities) == ["0", "1", "7"]
    if name not in SERVED:
        return
    served = serve_once(model_dir / "model.ckpt", image, tmp_path / "serve.log")
    assert {p["label"]: p["probability"] for p in served["predictions"]} == pytest.approx(
        probabilities, abs=1e-6
    )


def test_a_size_the_network_cannot_take_is_refused(tmp_path):
    cfg = compose(
        "train",
        ["model/backbone=vit_b_16", "model.pretrained=false", "data.image_size=100"],
        output_dir=tmp_path,
    )
    with pytest.raises(ImgclfError, match="vit_b_16 needs a multiple of 16, e.g. 96"):
        build(cfg.model, num_classes=3)
    cfg = compose(
        "train",
        ["model/backbone=resnet50", "model.pretrained=false", "data.image_size=16"],
        output_dir=tmp_path,
    )
    with pytest.raises(ImgclfError, match="too small for resnet50; use at least 32"):
        build(cfg.model, num_classes=3)
