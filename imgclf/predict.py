"""Inference on a saved model: the one predictor behind eval.py, classify.py and the server."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image

from imgclf.checkpoint import load_model
from imgclf.hardware import autocast_dtype, resolve_precision
from imgclf.images import load_image
from imgclf.model import InceptionClassifier
from imgclf.transforms import eval_transform

log = logging.getLogger(__name__)

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


class Predictor:
    def __init__(
        self,
        model: InceptionClassifier,
        record: dict[str, Any],
        source: str | os.PathLike | None = None,
        precision: str = "auto",
        channels_last: bool = True,
        device: str = "cpu",
        check_images: Sequence[Image.Image] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; use one of {', '.join(PRECISIONS)}")
        self.record = record
        self.source = Path(source) if source else None
        self.classes: list[str] = list(record["classes"])
        self.preprocessing: dict[str, Any] = dict(record["preprocessing"])
        self.hparams: dict[str, Any] = dict(record.get("hparams", {}))
        self.transform = eval_transform(self.preprocessing)
        self.device = torch.device(device)
        self.channels_last = channels_last
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format).eval()
        resolved = PRECISIONS[precision] or resolve_precision("auto", self.device.type)
        self.precision = resolved
        if autocast_dtype(resolved) is not None and precision == "auto":
            self._fall_back_if_inexact(check_images)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> "Predictor":
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

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def load(self, source: str | os.PathLike | bytes) -> torch.Tensor:
        """Decode (raising ImageDecodeError on bad input) and preprocess one image."""
        return self.preprocess(load_image(source))

    @torch.inference_mode()
    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised images [N, 3, H, W] -> class probabilities [N, K] (float32)."""
        batch = batch.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.model(batch)
        return torch.softmax(logits.float(), dim=1).cpu()

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
