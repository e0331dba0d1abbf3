"""Staged training: head on a frozen backbone, then (optionally) the backbone's top blocks.

The blocks and the treatment of normalisation layers come from the backbone's description
(``model.backbone.fine_tune_blocks``, ``freeze_norm``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

# BatchNorm in every form (SyncBatchNorm under DDP with sync_batchnorm)
from imgclf.models.timm_backbones import BATCH_NORMS


def top_blocks(backbone: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    return [backbone.get_submodule(name) for name in names]


class StagedFineTuning(BaseFinetuning):
    """Backbone frozen, BatchNorm statistics frozen too (eval mode).

    From ``unfreeze_at_epoch`` (when given), ``blocks`` of the backbone become trainable at
    ``lr * lr_factor``, and the head's lr drops by the same factor. With ``freeze_norm`` their
    BatchNorm layers stay frozen: batches of 20 estimate statistics poorly.
    """

    def __init__(
        self,
        blocks: Sequence[str] = (),
        unfreeze_at_epoch: int | None = None,
        lr_factor: float = 0.1,
        freeze_norm: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = tuple(blocks)
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.lr_factor = lr_factor
        self.freeze_norm = freeze_norm

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.model.backbone, train_bn=False)

    def finetune_function(
        self, pl_module: pl.LightningModule, current_epoch: int, optimizer: Optimizer
    ) -> None:
        if self.unfreeze_at_epoch is None or current_epoch < self.unfreeze_at_epoch:
            return
        modules = top_blocks(pl_module.model.backbone, self.blocks)
        if current_epoch == self.unfreeze_at_epoch:
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
            self.unfreeze_and_add_param_group(
                modules, optimizer, lr=optimizer.param_groups[0]["lr"], train_bn=not self.freeze_norm
            )
        else:
            # Resumed past the unfreeze epoch: Lightning restored the blocks' param group into the
            # optimizer, but setup() froze the whole backbone again.
            self.make_trainable(modules)
        if self.freeze_norm:
            # make_trainable also flags BatchNorm layers trainable though they are not in the
            # optimizer: gradients computed for nothing, and statistics drifting in train mode.
            for module in self.flatten_modules(modules):
                if isinstance(module, BATCH_NORMS):
                    self.freeze_module(module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        # Lightning puts the whole module in train mode each epoch. Everything frozen goes back to
        # eval: BatchNorm keeps the ImageNet statistics it will predict with, and dropout or
        # stochastic depth in frozen blocks does not perturb the features the top blocks learn on.
        for module in pl_module.model.backbone.modules():
            parameters = list(module.parameters())
            if parameters and not any(p.requires_grad for p in parameters):
                module.eval()
