"""Grad-CAM (imgclf.inference.explain): the heatmap finds the corner where the class lives, for every
backbone ``model/backbone=`` offers, in the evaluation report and over HTTP.

Each network learns "a bright square somewhere" (class 0) against "nothing" (class 1) from squares
at random places, without being told where; the heatmap of a picture with the square in the
top-right corner must peak in the top-right quadrant, and with it in the bottom-left, in the
bottom-left. Two corners that swap under a transpose and under both flips: a heatmap transposed,
flipped, shifted by a class token or made of gradients alone (uniform after global pooling) fails.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_report import eval_cfg

from imgclf.inference.evaluate import evaluate
from imgclf.inference.explain import crop_box, grad_cam, overlay, target_layer
from imgclf.models.classifier import ImageClassifier
from imgclf.testing import backbone_config, backbone_names
from imgclf.testing.processes import start_serve, stop

# the smallest sizes with a map of at least 4x4 cells (Inception v3's map is (size - 43) / 32)
IMAGE_SIZES = {"inception_v3": 171, "vit_b_16": 64}
DEFAULT_SIZE = 128
SQUARE = 2.5  # a bright square in normalised pixels, on a dark, faintly noisy background
EXAMPLES = 8


def background(size: int, generator: torch.Generator) -> torch.Tensor:
    return 0.1 * torch.randn(3, size, size, generator=generator)


def with_square(image: torch.Tensor, top: int, left: int) -> torch.Tensor:
    side = image.shape[-1] // 4
    image[:, top : top + side, left : left + side] = SQUARE
    return image


def square_anywhere(size: int, generator: torch.Generator) -> torch.Tensor:
    top, left = torch.randint(0, size - size // 4 + 1, (2,), generator=generator).tolist()
    return with_square(background(size, generator), top, left)


def calibrate_batch_norm(model: ImageClassifier, images: torch.Tensor) -> None:
    """BatchNorm statistics of these images, as training would leave them: at initialisation
    (mean 0, variance 1) activations grow layer after layer until they mean nothing."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over what it sees
        norm.train()
    with torch.no_grad():
        model.backbone(images)
    model.eval()


def fit_head(model: ImageClassifier, square: torch.Tensor, plain: torch.Tensor) -> None:
    """The one-layer head in closed form: class 0's logit grows along the difference of the two
    classes' mean pooled features (a linear discriminant), class 1's against it."""
    with torch.no_grad():
        with_feature, without = model.backbone(square).mean(0), model.backbone(plain).mean(0)
        direction, middle = with_feature - without, (with_feature + without) / 2
        linear = model.head.layers[-1]
        linear.weight.copy_(torch.stack([direction, -direction]))
        offset = direction @ middle
        linear.bias.copy_(torch.stack([-offset, offset]))


def train_top_blocks(model: ImageClassifier, size: int, generator: torch.Generator, steps: int = 10) -> None:
    """A few steps of the fine-tuning stage (the backbone's fine_tune_blocks and the head).

    A vision transformer at random initialisation mixes every token with every other in each of
    its twelve attention layers, so that no token is still about its own patch at the top: that
    locality is learnt. Convolutional networks are local by construction.
    """
    model.requires_grad_(False)
    for block in model.backbone_config["fine_tune_blocks"]:
        model.backbone.get_submodule(block).requires_grad_(True)
    model.head.requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    labels = torch.tensor([0] * EXAMPLES + [1] * EXAMPLES)
    model.train()
    for _ in range(steps):
        images = [square_anywhere(size, generator) for _ in range(EXAMPLES)]
        images += [background(size, generator) for _ in range(EXAMPLES)]
        loss = torch.nn.functional.cross_entropy(model(torch.stack(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False)


def corner_detector(name: str, size: int, generator: torch.Generator) -> ImageClassifier:
    """The backbone with weights that tell a bright square from none, wherever it is.

    Scratch weights (BatchNorm calibrated) and a head fitted in closed form; EfficientNet-Lite0 with
    its ImageNet weights, which install with imgclf (with scratch weights its squeeze-and-excite
    gates spread one square's effect over the whole map); the vision transformer fine-tuned.
    """
    backbone = backbone_config(name)
    if name == "efficientnet_lite0":
        model = ImageClassifier.pretrained(backbone, 2, {"num_layers": 0}, size, allow_download=False)
    else:
        model = ImageClassifier(backbone, 2, {"num_layers": 0}, size)
    model.eval().requires_grad_(False)
    square = torch.stack([square_anywhere(size, generator) for _ in range(EXAMPLES)])
    plain = torch.stack([background(size, generator) for _ in range(EXAMPLES)])
    if name == "vit_b_16":
        train_top_blocks(model, size, generator)
        return model
    if name != "efficientnet_lite0":
        calibrate_batch_norm(model, torch.cat([square, plain]))
    fit_head(model, square, plain)
    return model


def quadrant(heatmap: torch.Tensor) -> tuple[str, str]:
    row, column = divmod(int(heatmap.argmax()), heatmap.shape[1])
    half = heatmap.shape[0] / 2
    return ("top" if row < half else "bottom", "left" if column < half else "right")


@pytest.mark.parametrize("name", backbone_names())
def test_the_heatmap_peaks_where_the_class_lives(name):
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(1)
    size = IMAGE_SIZES.get(name, DEFAULT_SIZE)
    model = corner_detector(name, size, generator)
    edge = size - size // 4
    top_right = with_square(background(size, generator), 0, edge)
    bottom_left = with_square(background(size, generator), edge, 0)
    images = torch.stack([top_right, bottom_left])
    with torch.no_grad():
        logits = model(torch.cat([images, background(size, generator)[None]]))
    margin = logits[:, 0] - logits[:, 1]
    assert (margin[:2] > margin[2]).all(), "the network does not see the square: the test would prove nothing"

    heatmaps, classes = grad_cam(model, images, torch.tensor([0, 0]))

    assert classes.tolist() == [0, 0]
    assert heatmaps.shape == (2, size, size) and heatmaps.dtype == torch.float32
    assert float(heatmaps.min()) >= 0 and float(heatmaps.amax(dim=(1, 2)).min()) == pytest.approx(1.0)
    assert quadrant(heatmaps[0]) == ("top", "right"), target_layer(model)[0]
    assert quadrant(heatmaps[1]) == ("bottom", "left"), target_layer(model)[0]


def test_the_overlay_covers_what_the_model_saw_at_the_image_size():
    """A wide image: the model sees the centre square of its resized short side; the heatmap is
    painted there and nowhere else, and the overlay has the image's own size."""
    preprocessing = {"resize": 80, "crop": 64}
    assert crop_box((200, 100), preprocessing) == pytest.approx((60.0, 10.0, 140.0, 90.0))
    gray = Image.new("RGB", (200, 100), (128, 128, 128))
    painted = np.asarray(overlay(gray, torch.ones(64, 64), preprocessing)).astype(int)
    assert painted.shape == (100, 200, 3)
    changed = (painted != 128).any(axis=2)
    assert changed[15:85, 65:135].all()
    assert not changed[:, :55].any() and not changed[:, 145:].any() and not changed[:5].any()


def test_the_report_shows_the_top_losses_with_their_heatmaps(tiny_model, small_digits_root, tmp_path):
    metrics = evaluate(eval_cfg(tiny_model, small_digits_root, tmp_path / "r", "top_losses=5"))
    assert metrics["explanations"] == {
        "file": "top_losses_cam.png",
        "method": "grad-cam",
        "layer": "Mixed_7c",
        "class": "predicted",
    }
    written = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert written["explanations"] == metrics["explanations"]
    with Image.open(tmp_path / "r" / "top_losses_cam.png") as sheet:
        assert sheet.format == "PNG" and min(sheet.size) > 200
    with Image.open(tmp_path / "r" / "top_losses.png") as plain:
        assert plain.size == sheet.size  # the same grid, the same titles

    quiet = evaluate(eval_cfg(tiny_model, small_digits_root, tmp_path / "q", "top_losses=5", "explain=false"))
    assert "explanations" not in quiet and not (tmp_path / "q" / "top_losses_cam.png").exists()


def test_an_onnx_server_answers_explain_with_a_clear_400():
    from starlette.datastructures import FormData

    from imgclf.inference.runtimes import ModelChoice
    from imgclf.serving.app import ClassifierAPI, Rejection
    from imgclf.serving.lifecycle import ServingState

    api = ClassifierAPI(ModelChoice("onnx", Path("model.onnx"), "test"), ServingState(1, 1, 1))
    api.predictor = SimpleNamespace(runtime="onnx")
    rejected = api.decode_request(FormData([("explain", "true")]))
    assert isinstance(rejected, Rejection)
    assert "runtime=torch" in rejected.error and "model.onnx" in rejected.error
    assert "explain" in api.decode_request(FormData([("explain", "maybe")])).error


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("explain_serve") / "server.log"
    process, url = start_serve(f"ckpt_path={tiny_model}", "runtime=torch", log_path=log_path)
    try:
        yield url
    finally:
        stop(process)


def test_the_server_explains_when_asked_and_answers_as_before_when_not(server, small_digits_root):
    photo = Image.open(next((small_digits_root / "test" / "7").glob("*.png"))).convert("RGB").resize((90, 60))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    upload = {"img": ("photo.png", buffer.getvalue())}
    with httpx.Client(base_url=server, timeout=120) as client:
        plain = client.post("/classify", files=upload)
        explained = client.post("/classify", params={"explain": "true"}, files=upload)
        bad = client.post("/classify", params={"explain": "yes please"}, files=upload)

    assert plain.status_code == 200 and list(plain.json()) == ["predictions", "success"]
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert list(body) == ["predictions", "explanation", "success"]
    assert body["predictions"] == plain.json()["predictions"]
    assert list(body["explanation"]) == ["class", "png_base64"]
    assert body["explanation"]["class"] == body["predictions"][0]["label"]
    with Image.open(io.BytesIO(base64.b64decode(body["explanation"]["png_base64"]))) as picture:
        assert picture.format == "PNG" and picture.size == photo.size
    assert bad.status_code == 400 and "explain" in bad.json()["error"]
