"""Staged training: head on a frozen backbone, then (optionally) the top blocks at a lower lr."""

from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer


class StagedFineTuning(BaseFinetuning):
    """Stage 1: backbone frozen, BatchNorm statistics frozen too (eval mode).

    Stage 2 (from ``unfreeze_at_epoch``, when given): ``blocks`` of the backbone become
    trainable at ``lr * lr_factor``, and the head's lr drops by the same factor. Their BatchNorm
    layers stay frozen: batches of 20 give poor statistics.
    """

    def __init__(
        self,
        unfreeze_at_epoch: int | None = None,
        blocks: Sequence[str] = ("Mixed_7a", "Mixed_7b", "Mixed_7c"),
        lr_factor: float = 0.1,
    ) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.blocks = tuple(blocks)
        self.lr_factor = lr_factor

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.model.backbone, train_bn=False)

    def finetune_function(
        self, pl_module: pl.LightningModule, current_epoch: int, optimizer: Optimizer
    ) -> None:
        if self.unfreeze_at_epoch is None or current_epoch < self.unfreeze_at_epoch:
            return
        backbone = pl_module.model.backbone
        modules = [getattr(backbone, name) for name in self.blocks]
        if current_epoch == self.unfreeze_at_epoch:
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
            self.unfreeze_and_add_param_group(
                modules, optimizer, lr=optimizer.param_groups[0]["lr"], train_bn=False
            )
        else:
            # Resumed past the unfreeze epoch: Lightning restored the blocks' param group into the
            # optimizer, but setup() froze the whole backbone again.
            self.make_trainable(modules)
        # make_trainable also flags the BatchNorm layers trainable though they are not in the
        # optimizer: gradients computed for nothing, and on_train_epoch_start below would leave
        # them free to switch to train mode (statistics drifting with every batch). Undo that.
        for module in self.flatten_modules(modules):
            if isinstance(module, _BatchNorm):
                self.freeze_module(module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        # Lightning puts the whole module in train mode each epoch; frozen parts go back to eval
        # so that BatchNorm uses its ImageNet statistics, as it will at prediction time.
        backbone = pl_module.model.backbone
        if not any(p.requires_grad for p in backbone.parameters()):
            backbone.eval()
            return
        for module in backbone.modules():
            if isinstance(module, _BatchNorm) and not module.weight.requires_grad:
                module.eval()

