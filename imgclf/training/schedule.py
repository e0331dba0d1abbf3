"""The stages of a training run, each one Lightning fit that resumes from its own checkpoints.

- ``scratch`` (``model.pretrained=false``): the whole network trains on images.
- ``head``: the backbone frozen, the head trains on what the data module yields: the feature
  store's features (``features.cache=true``) or images.
- ``fine_tune`` (``model.fine_tune=true``): the backbone's top blocks unfreeze at
  ``lr x model.fine_tune_lr_factor``, on images, starting from the head's best epoch.

Every stage keeps its best epoch (by ``optimized_metric``) and its last one under
``paths.checkpoint_dir/<stage>/`` with Lightning's ``ModelCheckpoint`` (``conf/train.yaml``
``checkpoint``). The run's fingerprint (its settings and dataset files) travels in each
checkpoint, so a rerun of the same command on the same data resumes a stage only from a
checkpoint of the same run, and a finished stage costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint

from imgclf.config import build, build_all
from imgclf.hardware import resolve_precision
from imgclf.io import json_digest
from imgclf.training.finetune import StagedFineTuning
from imgclf.training.module import ClassifierModule

log = logging.getLogger(__name__)

# What the stages write under paths.checkpoint_dir (Lightning adds -v1, -v2 to clashing names)
OWN_FILES = ("last*.ckpt", "best-epoch*.ckpt")
RUN_KEY = "imgclf_run"


@dataclass(frozen=True)
class FitStage:
    name: str
    on_features: bool = False  # reads the feature store instead of images
    unfreeze: bool = False  # the backbone's fine_tune_blocks train (after the head stage)
    frozen: bool = True  # the backbone is frozen (False: the whole network trains)


def plan(cfg: DictConfig) -> list[FitStage]:
    if not cfg.model.pretrained:
        return [FitStage("scratch", frozen=False)]
    stages = [FitStage("head", on_features=bool(cfg.features.cache))]
    if cfg.model.fine_tune:
        stages.append(FitStage("fine_tune", unfreeze=True))
    return stages


def fingerprint(cfg: DictConfig, files: dict[str, Any]) -> str:
    """What makes an interrupted run resumable: the same data settings and files, model, trainer,
    feature store and seed."""
    relevant = {
        k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "trainer", "features")
    }
    relevant["trainer"].pop("default_root_dir", None)  # a new timestamped folder every run
    # "auto" is bf16 on one machine and fp32 on another: a run continues only in the same precision
    trainer = relevant["trainer"]
    trainer["precision"] = resolve_precision(trainer.get("precision"), trainer.get("accelerator"))
    relevant["seed"] = cfg.seed
    relevant["files"] = files
    return json_digest(relevant)


class RunIdentity(Callback):
    """Writes the run's fingerprint into every checkpoint."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint[RUN_KEY] = self.fingerprint


def saved_fingerprint(path: Path) -> str | None:
    try:  # mapped, not read: an image stage's checkpoint holds the whole network
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(RUN_KEY)
    except Exception:  # a damaged or foreign file is not a resume point
        return None


def remove_own_checkpoints(directory: Path) -> None:
    """The stages' own files, never the exported model or anything of the user's."""
    for pattern in OWN_FILES:
        for stale in list(directory.glob(pattern)):
            stale.unlink()


@dataclass
class FitResult:
    stage: FitStage
    score: float
    epoch: int
    path: str  # the best epoch's checkpoint

    def restore(self, module: ClassifierModule) -> bool:
        """Load this stage's best epoch into ``module``; False when its checkpoint holds the head
        alone (the backbone was frozen and left out), so the backbone is whatever ``module`` has."""
        checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
        return not checkpoint.get("backbone_left_out", False)


class FitRunner:
    """Builds each stage's trainer and callbacks from the config and runs its fit."""

    def __init__(self, cfg: DictConfig, loggers: Sequence[Any], files: dict[str, Any]) -> None:
        self.cfg = cfg
        self.loggers = list(loggers)
        self.fingerprint = fingerprint(cfg, files)
        self.directory = Path(cfg.paths.checkpoint_dir)
        self.is_global_zero = True

    def trainer(
        self, callbacks: list[Callback], on_features: bool, logged: bool = True, **settings: Any
    ) -> pl.Trainer:
        """The stage's trainer from ``cfg.trainer`` (``settings`` override its keys)."""
        trainer_cfg = {**OmegaConf.to_container(self.cfg.trainer, resolve=True), **settings}
        trainer_cfg["precision"] = resolve_precision(
            trainer_cfg.get("precision"), trainer_cfg.get("accelerator")
        )
        log.info(
            "Instantiating trainer <%s> (precision %s)", trainer_cfg["_target_"], trainer_cfg["precision"]
        )
        # The feature store's sampler splits batches between DDP ranks itself.
        return build(
            trainer_cfg,
            where="trainer",
            callbacks=callbacks,
            logger=(self.loggers or False) if logged else False,
            use_distributed_sampler=not on_features,
        )

    def fine_tuning(self, stage: FitStage, module: ClassifierModule) -> StagedFineTuning:
        """What freezes a frozen stage's backbone (and unfreezes its top blocks when fine-tuning)."""
        backbone = module.model.backbone_config
        return StagedFineTuning(
            blocks=backbone["fine_tune_blocks"],
            unfreeze_at_epoch=0 if stage.unfreeze else None,
            lr_factor=self.cfg.model.fine_tune_lr_factor,
            freeze_norm=backbone.get("freeze_norm", True),
        )

    def callbacks(self, stage: FitStage, module: ClassifierModule) -> list[Callback]:
        callbacks = build_all(self.cfg.get("callbacks"), "callback", "callbacks") + [
            RunIdentity(self.fingerprint)
        ]
        if stage.frozen:
            callbacks.append(self.fine_tuning(stage, module))
        if module.ema_decay is not None:
            callbacks.append(EMAWeightAveraging(decay=float(module.ema_decay)))
        if module.mix is not None and stage.on_features:
            log.warning(
                "model.mixup / model.cutmix blend images: stage %s trains on stored features, without "
                "them (features.cache=false trains the head on images, blended)",
                stage.name,
            )
        return callbacks

    def find_lr(self, stage: FitStage, module: ClassifierModule, datamodule: pl.LightningDataModule) -> Any:
        """Lightning's learning-rate finder on ``stage``: the loss over 100 steps of learning rates
        rising from 1e-7 to 1, whatever the epochs; the module comes back as it was."""
        from pytorch_lightning.tuner import Tuner

        # The finder replaces the trainer's callbacks with its own: a frozen stage's backbone is
        # frozen here, as the stage's fine-tuning callback freezes it when the fit starts.
        if stage.frozen:
            self.fine_tuning(stage, module).freeze_before_training(module)
        trainer = self.trainer([], stage.on_features, logged=False, max_epochs=-1)
        module.train()
        log.info("Stage %s: finding the learning rate (%s)", stage.name, describe(stage, module))
        return Tuner(trainer).lr_find(
            module, datamodule=datamodule, update_attr=False, min_lr=1e-7, max_lr=1.0
        )

    def resume_point(self, directory: Path) -> Path | None:
        last = directory / "last.ckpt"
        if self.cfg.get("resume", True) and last.is_file() and saved_fingerprint(last) == self.fingerprint:
            return last
        return None

    def fit(
        self, stage: FitStage, module: ClassifierModule, datamodule: pl.LightningDataModule
    ) -> FitResult | None:
        """Run the stage; ``None`` when it was only a ``fast_dev_run`` (nothing saved)."""
        directory = self.directory / stage.name
        checkpointing: ModelCheckpoint = build(
            self.cfg.checkpoint, where="checkpoint", dirpath=str(directory)
        )
        trainer = self.trainer(self.callbacks(stage, module) + [checkpointing], stage.on_features)
        self.is_global_zero = trainer.is_global_zero
        resume_from = self.resume_point(directory)
        if resume_from:
            log.info("Resuming the interrupted run: stage %s continues from %s", stage.name, resume_from)
        elif trainer.is_global_zero:
            remove_own_checkpoints(directory)
        trainer.strategy.barrier("stage start")
        log.info("Stage %s: %s", stage.name, describe(stage, module))
        module.train()  # the previous stage or the feature pass left parts in eval mode
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        self.last_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if trainer.fast_dev_run:
            return None
        best = checkpointing.best_model_path or checkpointing.last_model_path
        checkpoint = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
        score = float(checkpointing.best_model_score or 0.0)
        if not all(v.isfinite().all() for v in checkpoint["state_dict"].values() if v.is_floating_point()):
            # A NaN network still "scores" (every answer the first class): it must not win.
            log.warning(
                "Stage %s diverged: its best epoch has non-finite weights, so it cannot be chosen "
                "(lower model.optimizer.lr%s)",
                stage.name,
                " or model.fine_tune_lr_factor" if stage.unfreeze else "",
            )
            score = float("-inf")
        return FitResult(stage, score, int(checkpoint["epoch"]), best)

    def clean_up(self) -> None:
        """A sweep trial keeps nothing: its checkpoints would pile up trial by trial."""
        if self.is_global_zero:
            for stage_dir in self.directory.glob("*"):
                if stage_dir.is_dir():
                    remove_own_checkpoints(stage_dir)


def describe(stage: FitStage, module: ClassifierModule) -> str:
    backbone = module.model.backbone_config
    if not stage.frozen:
        return f"the whole {backbone['name']} trains from scratch on images"
    if stage.unfreeze:
        return f"{', '.join(backbone['fine_tune_blocks'])} unfrozen, on images"
    return f"head on the frozen {backbone['name']}'s {'stored features' if stage.on_features else 'images'}"
