"""The LightningModule: loss, metrics, optimiser and schedule around :class:`ImageClassifier`.

Its batches are (inputs, targets[, sample indices]) where the inputs are images or, when the
data module reads the feature store, the frozen backbone's pooled features: the network itself
tells the two apart, so one module trains every stage. Items with a negative sample index (an
image that failed to decode) are left out of the loss and the metrics.

While the backbone is frozen its weights are the pretrained ones, so checkpoints leave them out
(a head is megabytes, a backbone up to hundreds) and loading puts the module's own back.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from imgclf.models.backbones import fetch_weights
from imgclf.models.classifier import ImageClassifier

BACKBONE_KEYS = "model.backbone."


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


def batch_mixing(num_classes: int, mixup: float, cutmix: float) -> Callable[..., Any] | None:
    """torchvision's MixUp and/or CutMix with Beta(alpha, alpha) (0: off), one of them per batch
    when both are on; None when neither is."""
    chosen = [
        kind(alpha=alpha, num_classes=num_classes)
        for kind, alpha in ((v2.MixUp, mixup), (v2.CutMix, cutmix))
        if alpha > 0
    ]
    if not chosen:
        return None
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)


class ClassifierModule(pl.LightningModule):
    def __init__(
        self,
        num_classes: int,
        backbone: Mapping[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        head: Mapping[str, Any] | None = None,
        image_size: int | None = None,
        pretrained: bool = True,
        weights_path: str | None = None,
        allow_download: bool = True,
        fine_tune: bool = False,
        fine_tune_lr_factor: float = 0.1,
        class_weighting: bool = False,
        class_counts: Sequence[int] | None = None,
        channels_last: bool = True,
        label_smoothing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # the ImageNet weights file: what the feature store's key hashes
        self.weights_source = (
            str(weights_path or fetch_weights(backbone, allow_download)) if pretrained else None
        )
        if self.weights_source:
            self.model = ImageClassifier.pretrained(
                backbone, num_classes, head, image_size, self.weights_source
            )
        else:
            self.model = ImageClassifier(backbone, num_classes, head, image_size)
        weights = inverse_frequency_weights(class_counts) if class_weighting and class_counts else None
        self.criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=float(label_smoothing))
        self.mix = batch_mixing(num_classes, float(mixup), float(cutmix))
        self.ema_decay = ema_decay  # the stages' EMAWeightAveraging callback reads it
        self.channels_last = channels_last
        # Whether this fit clips gradients: setup() asks its trainer. Outside a fit (the throughput
        # benchmark calls configure_optimizers() itself) nothing clips.
        self.gradients_clipped = False
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, stage: str) -> None:
        # Lightning calls setup() with the trainer attached and before configure_optimizers(), so
        # the public `trainer` property (which raises on a module outside a fit) can be read here.
        self.gradients_clipped = bool(self.trainer.gradient_clip_val)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return self.model(inputs)

    def _step(
        self, batch: Sequence[torch.Tensor], training: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, targets = batch[0], batch[1]
        if len(batch) > 2:  # drop images that failed to decode
            kept = batch[2] >= 0
            inputs, targets = inputs[kept], targets[kept]
        labels: torch.Tensor = targets
        if training and self.mix is not None and inputs.dim() == 4 and len(targets) > 1:
            inputs, labels = self.mix(inputs, targets)  # images and soft labels blended in pairs
            targets = labels.argmax(dim=1)  # what train/acc counts: each blend's larger share
        logits = self(inputs)
        return self.criterion(logits.float(), labels), logits.argmax(dim=1), targets

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, preds, targets = self._step(batch, training=True)
        self.train_acc(preds, targets)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, preds, targets = self._step(batch)
        self.val_acc(preds, targets)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            # BaseFinetuning freezes before this runs; the head is always trainable, so this
            # only happens for a misconfigured model.
            raise RuntimeError("no trainable parameters")
        optimizer = fused_if_available(self.optimizer_factory, params, self.gradients_clipped)(params=params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.per_step_schedule(optimizer)}

    def per_step_schedule(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The configured schedule over this fit's steps.

        A schedule that needs the run's length (OneCycleLR's ``total_steps``, CosineAnnealingLR's
        ``T_max``) or its peak (``max_lr``) gets them from the trainer and the optimiser's lr, so
        that the config names only its shape.
        """
        factory = self.scheduler_factory
        accepts = inspect.signature(getattr(factory, "func", factory)).parameters
        given = getattr(factory, "keywords", None) or {}
        filled: dict[str, Any] = {}
        for name in ("total_steps", "T_max"):
            if name in accepts and name not in given:
                filled[name] = int(self.trainer.estimated_stepping_batches)
        if "max_lr" in accepts and "max_lr" not in given:
            filled["max_lr"] = [group["lr"] for group in optimizer.param_groups]
        return {"scheduler": factory(optimizer, **filled), "interval": "step"}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model.backbone_frozen():
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith(BACKBONE_KEYS)}
            checkpoint["backbone_left_out"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("backbone_left_out"):
            own = {k: v for k, v in self.state_dict().items() if k.startswith(BACKBONE_KEYS)}
            checkpoint["state_dict"] = {**own, **checkpoint["state_dict"]}
