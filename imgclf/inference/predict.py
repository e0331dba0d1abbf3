"""Inference: the one loop that runs a network over a dataset, and the predictor of a saved model.

:func:`run_network` serves evaluation, train.py's final accuracy, the feature store and the
review's backbone features. :class:`Predictor` (a model file, its preprocessing and the precision
it runs in) serves eval.py, classify.py and the server, so that all three give the same answer.
:class:`PredictorBase` is what it shares with the ONNX Runtime predictor (:mod:`imgclf.inference.runtimes`):
decoding, pixels and the shape of the answers, so that only what runs the network differs.
Nothing here imports Lightning.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from imgclf.data.images import load_image
from imgclf.data.transforms import eval_transform
from imgclf.errors import ImgclfError
from imgclf.hardware import autocast_dtype, resolve_precision
from imgclf.models.checkpoint import load_model
from imgclf.models.classifier import ImageClassifier

log = logging.getLogger(__name__)


def run_network(
    forward: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    description: str = "predicting",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``forward`` over the dataset's (images, target, index) items, in batches, with progress.

    Returns the outputs, targets and sample indices of the items that decoded (index >= 0).
    Items of shape [views, 3, H, W] (test-time augmentation) get their views' outputs averaged.
    The loader draws no numbers from the global random state.
    """
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator().manual_seed(0)
    )
    outputs, targets, indices = [], [], []
    # on stderr: stdout carries results (eval's summary, a benchmark's table)
    with Progress(transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=len(dataset))
        for images, target, index in loader:
            kept = index >= 0
            if kept.any():
                images = images[kept]
                if images.dim() == 5:
                    views = images.shape[1]
                    result = forward(images.flatten(0, 1)).unflatten(0, (-1, views)).mean(1)
                else:
                    result = forward(images)
                outputs.append(result.cpu())
                targets.append(target[kept])
                indices.append(index[kept])
            progress.advance(task, len(index))
    if not outputs:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(outputs), torch.cat(targets), torch.cat(indices)


def backbone_forward(
    network: torch.nn.Module, precision: str, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images -> the frozen ``network``'s pooled features, float16 on the CPU (the feature store's
    format), in channels-last and under autocast where ``precision`` asks for it."""
    dtype = autocast_dtype(precision)
    network.eval().to(device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return network(images).float().to(torch.float16).cpu()

    return forward


PRECISIONS = {
    "auto": None,
    "fp32": "32-true",
    "32-true": "32-true",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "16-mixed": "16-mixed",
}
# A bf16 answer only "differs" from fp32 where fp32 itself was clearly decided: smooth probe
# images sit near decision boundaries, where a 0.01 margin flipped harmless near-ties.
CONFIDENT_MARGIN = 0.2


def probe_images(size: int, count: int = 8) -> list[Image.Image]:
    """Smooth, deterministic pictures to compare precisions on when no real images are given."""
    generator = torch.Generator().manual_seed(0)
    images = []
    for _ in range(count):
        low = torch.rand(3, 8, 8, generator=generator)
        big = torch.nn.functional.interpolate(low[None], size=(size, size), mode="bicubic")[0]
        array = (big.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        images.append(Image.fromarray(array, mode="RGB"))
    return images


class PredictorBase:
    """A model ready to answer, whatever runs its network: class names, pixels and answers.

    Subclasses set ``precision`` and implement ``predict_batch``; ``runtime`` names what runs the
    network (``torch`` or ``onnx``).
    """

    runtime = ""

    def __init__(
        self,
        record: dict[str, Any],
        preprocessing: dict[str, Any],
        backbone: str,
        source: str | os.PathLike | None = None,
    ) -> None:
        self.record = record
        self.source = Path(source) if source else None
        self.classes: list[str] = list(record["classes"])
        self.preprocessing: dict[str, Any] = dict(preprocessing)
        self.hparams: dict[str, Any] = dict(record.get("hparams", {}))
        self.backbone = backbone
        self.transform = eval_transform(self.preprocessing)
        self.precision = "32-true"

    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised images [N, 3, H, W] -> class probabilities [N, K] (float32)."""
        raise NotImplementedError

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def load(self, source: str | os.PathLike | bytes) -> torch.Tensor:
        """Decode (raising ImageDecodeError on bad input) and preprocess one image."""
        return self.preprocess(load_image(source))

    def predict_dataset(
        self, dataset: Dataset, batch_size: int, num_workers: int, description: str = "predicting"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Probabilities, targets and sample indices of the dataset's decodable images."""
        return run_network(self.predict_batch, dataset, batch_size, num_workers, description)

    def as_dict(self, probabilities: torch.Tensor) -> dict[str, float]:
        """{label: probability} in the model's class order."""
        return {label: float(p) for label, p in zip(self.classes, probabilities.tolist())}

    def ranked(self, probabilities: torch.Tensor, top_k: int | None = None) -> list[dict[str, Any]]:
        """[{label, probability}] best first, optionally only the best ``top_k``."""
        order = torch.argsort(probabilities, descending=True)[: top_k or None]
        return [{"label": self.classes[i], "probability": float(probabilities[i])} for i in order]

    def classify(
        self, sources: Iterable[str | os.PathLike | bytes], batch_size: int = 16
    ) -> list[dict[str, float]]:
        tensors = [self.load(source) for source in sources]
        results = []
        for start in range(0, len(tensors), batch_size):
            probabilities = self.predict_batch(torch.stack(tensors[start : start + batch_size]))
            results.extend(self.as_dict(row) for row in probabilities)
        return results


class Predictor(PredictorBase):
    """A trained model run by PyTorch, ready to answer: preprocessing, precision and classes included."""

    runtime = "torch"

    def __init__(
        self,
        model: ImageClassifier,
        record: dict[str, Any],
        source: str | os.PathLike | None = None,
        precision: str = "auto",
        channels_last: bool = True,
        device: str = "cpu",
        check_images: Sequence[Image.Image] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ImgclfError(f"precision={precision!r}; use one of {', '.join(PRECISIONS)}")
        super().__init__(record, model.preprocessing, model.backbone_config["name"], source)
        self.device = torch.device(device)
        self.channels_last = channels_last
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format).eval()
        self.precision = PRECISIONS[precision] or resolve_precision("auto", self.device.type, "inference")
        if autocast_dtype(self.precision) is not None and precision == "auto":
            self._fall_back_if_inexact(check_images)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> Predictor:
        model, record = load_model(path)
        return cls(model, record, source=path, **kwargs)

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _fall_back_if_inexact(self, images: Sequence[Image.Image] | None) -> None:
        batch = torch.stack(
            [self.preprocess(im) for im in images or probe_images(self.preprocessing["crop"])]
        )
        fast = self.predict_batch(batch)
        chosen = self.precision
        self.precision = "32-true"
        exact = self.predict_batch(batch)
        top2 = exact.topk(min(2, exact.shape[1]), dim=1).values
        confident = (top2[:, 0] - top2[:, -1]) > CONFIDENT_MARGIN
        disagree = (fast.argmax(1) != exact.argmax(1)) & confident
        if disagree.any():
            log.warning(
                "%s top-1 differs from fp32 on %d of %d check images; using fp32",
                chosen,
                int(disagree.sum()),
                len(batch),
            )
        else:
            self.precision = chosen

    @torch.inference_mode()
    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised images [N, 3, H, W] -> class probabilities [N, K] (float32)."""
        batch = batch.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.model(batch)
        return torch.softmax(logits.float(), dim=1).cpu()
