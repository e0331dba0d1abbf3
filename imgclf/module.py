"""The LightningModule: loss, metrics and optimiser around :class:`InceptionClassifier`."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from imgclf.model import build_classifier


def fused_if_available(
    factory: Callable[..., torch.optim.Optimizer], params: list[torch.Tensor], clips_gradients: bool = False
) -> Callable[..., torch.optim.Optimizer]:
    """The optimiser's fused kernel (one pass over all parameters) unless the config chose.

    PyTorch's default on the CPU is a Python loop over parameter tensors: for a 2048x1024 head it
    costs more than the forward and backward passes together. Left alone: optimisers without a
    fused kernel, an explicit ``fused``/``foreach`` in the config, parameters off CPU and CUDA,
    and gradient clipping (Lightning cannot unscale fp16 gradients of a fused optimiser).
    """
    func = getattr(factory, "func", factory)
    chosen = getattr(factory, "keywords", None) or {}
    try:
        accepts = "fused" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return factory
    usable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if accepts and usable and not clips_gradients and not {"fused", "foreach"} & set(chosen):
        return functools.partial(factory, fused=True)
    return factory


def inverse_frequency_weights(counts: Sequence[int]) -> torch.Tensor:
    """w_c = N / (K * n_c): a balanced dataset gets weights of 1."""
    counts_t = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
    return counts_t.sum() / (len(counts) * counts_t)


class ClassifierModule(pl.LightningModule):
    def __init__(
        self,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        head: dict[str, Any] | None = None,
        pretrained: bool = True,
        weights_path: str | None = None,
        allow_download: bool = True,
        fine_tune: bool = False,
        fine_tune_lr_factor: float = 0.1,
        fine_tune_blocks: Sequence[str] = ("Mixed_7a", "Mixed_7b", "Mixed_7c"),
        class_weighting: bool = False,
        class_counts: Sequence[int] | None = None,
        channels_last: bool = True,
        backbone: str = "inception_v3",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.model = build_classifier(num_classes, dict(head or {}), pretrained, weights_path, allow_download)
        weights = None
        if class_weighting and class_counts is not None:
            weights = inverse_frequency_weights(class_counts)
        self.criterion = nn.CrossEntropyLoss(weight=weights)
        self.channels_last = channels_last
        # "features": batches hold cached backbone features and only the head runs
        self.inputs = "images"
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.inputs == "features":
            return self.model.head(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits.float(), targets)
        return loss, logits.argmax(dim=1), targets

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, preds, targets = self._step(batch)
        self.train_acc(preds, targets)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, preds, targets = self._step(batch)
        self.val_acc(preds, targets)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, preds, targets = self._step(batch)
        self.test_acc(preds, targets)
        self.log("test/loss", loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            # BaseFinetuning freezes before this runs; the head is always trainable, so this
            # only happens for a misconfigured model.
            raise RuntimeError("no trainable parameters")
        clips = bool(self._trainer is not None and self._trainer.gradient_clip_val)
        return fused_if_available(self.optimizer_factory, params, clips)(params=params)
