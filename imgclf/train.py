"""``train(cfg)``: data -> model -> Lightning fit -> best epoch -> self-describing model file.

Two ways to fit, same result:
- on images (from scratch, or whenever the feature cache is off): one Lightning fit, resumable
  after a kill from the last checkpoint;
- with ImageNet weights and ``features.cache=true``: stage 1 trains the head on cached backbone
  features (:mod:`imgclf.features`), stage 2 (``model.fine_tune``) fine-tunes on images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from imgclf.checkpoint import model_record, save_model
from imgclf.config import build, build_all
from imgclf.data import ImageFolderDataModule
from imgclf.errors import ImgclfError
from imgclf.evaluate import EvalImages, predict_split
from imgclf.features import FeatureDataModule, load_or_compute
from imgclf.finetune import StagedFineTuning
from imgclf.hardware import compute_device, resolve_precision
from imgclf.io import atomic_torch_save, atomic_write_json
from imgclf.model import imagenet_weights_available, missing_weights_message, preprocessing_for
from imgclf.module import ClassifierModule
from imgclf.predict import Predictor
from imgclf.tune import apply_best_hparams

log = logging.getLogger(__name__)


def run_fingerprint(cfg: DictConfig) -> str:
    """What makes an interrupted run resumable: same data, model, trainer, feature cache and seed."""
    keys = [k for k in ("data", "model", "trainer", "features") if k in cfg]
    relevant = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}
    relevant["trainer"].pop("default_root_dir", None)  # a new timestamped folder every run
    relevant["seed"] = cfg.seed
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# What train.py itself writes under paths.checkpoint_dir (Lightning adds -v1, -v2 to clashing names)
CHECKPOINT_PATTERNS = ("**/last*.ckpt", "**/best-epoch*.ckpt", "stage1_head.ckpt")


def remove_checkpoints(directory: Path) -> None:
    """train.py's own resume files, never the exported model or anything of the user's."""
    for pattern in CHECKPOINT_PATTERNS:
        for stale in list(directory.glob(pattern)):
            stale.unlink()


class RunState:
    """``train_state.json`` beside the checkpoints: do they belong to an unfinished run?"""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = directory
        self.path = directory.parent / "train_state.json"
        self.fingerprint = fingerprint

    def resume_path(self, last: Path | None = None) -> Path | None:
        """``last`` (default: ``last.ckpt`` in the checkpoint folder) when it belongs to this run."""
        last = last or self.directory / "last.ckpt"
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if (
            state.get("status") == "running"
            and state.get("fingerprint") == self.fingerprint
            and last.is_file()
        ):
            return last
        return None

    def start_fresh(self) -> None:
        remove_checkpoints(self.directory)
        self.mark("running")

    def mark(self, status: str) -> None:
        atomic_write_json(self.path, {"status": status, "fingerprint": self.fingerprint})


def check_weights_early(cfg: DictConfig) -> None:
    """Fail in seconds, before any data is read, when ImageNet weights cannot be had."""
    model_cfg = cfg.model
    if not model_cfg.pretrained or model_cfg.get("weights_path"):
        return
    if not imagenet_weights_available() and not model_cfg.get("allow_download", True):
        raise ImgclfError(missing_weights_message("not in the torch cache and downloads are off"))


def build_trainer(
    cfg: DictConfig, callbacks: list[Callback], loggers: list[Any], max_epochs: int
) -> pl.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg.get("precision"), trainer_cfg.get("accelerator"))
    trainer_cfg["max_epochs"] = max_epochs
    if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        # Lightning would add its own, writing the whole network (~90 MB) after every epoch.
        trainer_cfg["enable_checkpointing"] = False
    log.info("Instantiating trainer <%s> (precision %s)", trainer_cfg["_target_"], trainer_cfg["precision"])
    return build(trainer_cfg, callbacks=callbacks, logger=loggers or False)


def best_checkpoint(directory: Path) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=directory,
        filename="best-epoch{epoch:02d}",
        auto_insert_metric_name=False,
        monitor="val/acc",
        mode="max",
        save_top_k=1,
        save_last=True,
    )


class BestHead(Callback):
    """The best epoch's head weights, kept in memory.

    Stage 1 on cached features only trains the head: writing the whole network (frozen backbone
    included, ~90 MB) to disk every epoch, as ModelCheckpoint does, would cost more than the epoch.
    """

    def __init__(self, monitor: str = "val/acc") -> None:
        self.monitor = monitor
        self.score = float("-inf")
        self.epoch = -1
        self.state: dict[str, torch.Tensor] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or score is None or float(score) <= self.score:
            return
        self.score, self.epoch = float(score), trainer.current_epoch
        self.state = {k: v.detach().clone() for k, v in pl_module.model.head.state_dict().items()}

    def restore(self, module: ClassifierModule) -> dict[str, Any]:
        module.model.head.load_state_dict(self.state)
        return {"epoch": self.epoch, "val/acc": self.score}

    def save(self, path: Path) -> None:
        """Kept on disk while stage 2 runs, so that an interrupted stage 2 can resume."""
        atomic_torch_save({"state": self.state, "score": self.score, "epoch": self.epoch}, path)

    @classmethod
    def load(cls, path: Path) -> BestHead:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        best = cls()
        best.state, best.score, best.epoch = saved["state"], float(saved["score"]), int(saved["epoch"])
        return best


def wiring_checked(trainer: pl.Trainer) -> dict[str, Any]:
    """fast_dev_run: one batch each way ran; report its metrics, save nothing."""
    log.info("fast_dev_run: the wiring works; no model saved")
    return {"fast_dev_run": True, **{k: float(v) for k, v in trainer.callback_metrics.items()}}


def restore(module: ClassifierModule, checkpointing: ModelCheckpoint) -> dict[str, Any]:
    best = torch.load(
        checkpointing.best_model_path or checkpointing.last_model_path, map_location="cpu", weights_only=False
    )
    module.load_state_dict(best["state_dict"])
    return {"epoch": int(best["epoch"]), "val/acc": float(checkpointing.best_model_score or 0.0)}


def fit_on_images(
    cfg, module, datamodule, loggers, checkpoint_dir: Path, epochs: int, fine_tune: bool
) -> dict[str, Any] | None:
    callbacks = build_all(cfg.get("callbacks"), "callback")
    if cfg.model.pretrained:
        callbacks.append(
            StagedFineTuning(
                unfreeze_at_epoch=epochs if fine_tune else None,
                blocks=cfg.model.fine_tune_blocks,
                lr_factor=cfg.model.fine_tune_lr_factor,
            )
        )
    checkpointing = best_checkpoint(checkpoint_dir)
    trainer = build_trainer(cfg, callbacks + [checkpointing], loggers, epochs * (2 if fine_tune else 1))
    state = RunState(checkpoint_dir, run_fingerprint(cfg))
    resume_from = state.resume_path() if cfg.get("resume", True) else None
    if trainer.is_global_zero:
        if resume_from:
            log.info("Resuming the interrupted run from %s", resume_from)
        else:
            state.start_fresh()
    trainer.strategy.barrier()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    if not trainer.is_global_zero:
        return None
    if trainer.fast_dev_run:
        return wiring_checked(trainer)
    state.mark("done")
    return restore(module, checkpointing)


def fit_with_feature_cache(
    cfg, module, datamodule, loggers, checkpoint_dir: Path, epochs: int, fine_tune: bool
) -> dict[str, Any] | None:
    state = RunState(checkpoint_dir, run_fingerprint(cfg))
    stage1_file = checkpoint_dir / "stage1_head.ckpt"
    stage2_dir = checkpoint_dir / "stage2"
    resume_from = None
    if fine_tune and cfg.get("resume", True) and stage1_file.is_file():
        resume_from = state.resume_path(stage2_dir / "last.ckpt")
    if resume_from:
        stage1 = BestHead.load(stage1_file)
        log.info(
            "Resuming the interrupted run: stage 1 had finished (val/acc %.4f), stage 2 continues from %s",
            stage1.score,
            resume_from,
        )
    else:
        # Stage 1 from cached features takes seconds: it is rerun rather than resumed.
        state.start_fresh()
        precision = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"))
        features = load_or_compute(
            module.model,
            datamodule,
            cfg.model,
            cfg.paths.cache_dir,
            cfg.features.views,
            precision,
            compute_device(cfg.trainer.get("accelerator")),
        )
        module.inputs = "features"
        stage1 = BestHead()
        callbacks = build_all(cfg.get("callbacks"), "callback") + [StagedFineTuning(), stage1]
        trainer = build_trainer(cfg, callbacks, loggers, epochs)
        trainer.fit(module, datamodule=FeatureDataModule(features, datamodule.batch_size))
        module.inputs = "images"
        if trainer.fast_dev_run:
            return wiring_checked(trainer)
        if fine_tune:
            stage1.save(stage1_file)
    best = stage1.restore(module)
    if fine_tune:
        best = fine_tune_on_images(cfg, module, datamodule, loggers, stage2_dir, epochs, stage1, resume_from)
    state.mark("done")
    return best


def fine_tune_on_images(
    cfg,
    module,
    datamodule,
    loggers,
    stage2_dir: Path,
    epochs: int,
    stage1: BestHead,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Stage 2 after a cached stage 1; keeps whichever stage validated better."""
    log.info(
        "Stage 2: fine-tuning %s at lr x %s",
        ", ".join(cfg.model.fine_tune_blocks),
        cfg.model.fine_tune_lr_factor,
    )
    stage2 = best_checkpoint(stage2_dir)
    callbacks = build_all(cfg.get("callbacks"), "callback") + [
        StagedFineTuning(
            unfreeze_at_epoch=0, blocks=cfg.model.fine_tune_blocks, lr_factor=cfg.model.fine_tune_lr_factor
        ),
        stage2,
    ]
    build_trainer(cfg, callbacks, loggers, epochs).fit(module, datamodule=datamodule, ckpt_path=resume_from)
    if (stage2.best_model_score or 0.0) > stage1.score:
        best = restore(module, stage2)
        best["epoch"] += epochs
        return best
    return stage1.restore(module)


def accuracy(predictor: Predictor, datamodule: ImageFolderDataModule, split: str) -> float:
    """The saved model's accuracy on a split, counted as ``eval.py`` counts it."""
    samples = datamodule.listings[split].samples(datamodule.classes)
    dataset = EvalImages(samples, predictor.transform, predictor.preprocessing["crop"])
    probabilities, targets, _ = predict_split(
        predictor, dataset, datamodule.batch_size, datamodule.num_workers, f"accuracy on {split}"
    )
    return float((probabilities.argmax(axis=1) == targets).mean())


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the classifier described by ``cfg``; returns train/val accuracy of the best epoch."""
    cfg = apply_best_hparams(cfg)
    check_weights_early(cfg)
    pl.seed_everything(cfg.seed, workers=True)

    preprocessing = preprocessing_for(cfg.data.image_size)
    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule: ImageFolderDataModule = build(cfg.data, preprocessing=preprocessing)
    classes = datamodule.scan()
    if len(classes) < 2:
        raise ImgclfError(
            f"{datamodule.root / 'train'} has one class ({classes[0]}); a classifier needs at least two"
        )
    log.info(
        "Classes (%d): %s; training images per class: %s",
        len(classes),
        ", ".join(classes),
        datamodule.class_counts(),
    )

    pretrained = bool(cfg.model.pretrained)
    if not pretrained:
        log.warning(
            "Training from scratch (model.pretrained=false): the whole network trains, "
            "expect lower accuracy than with ImageNet weights"
        )
    if cfg.model.fine_tune and not pretrained:
        log.info("model.fine_tune ignored: without pretrained weights the whole network trains anyway")
    log.info("Instantiating model <%s>", cfg.model._target_)
    module: ClassifierModule = build(
        cfg.model, num_classes=len(classes), class_counts=datamodule.class_counts()
    )

    epochs = int(cfg.trainer.max_epochs)
    fine_tune = pretrained and bool(cfg.model.fine_tune)
    loggers = build_all(cfg.get("logger"), "logger")
    checkpoint_dir = Path(cfg.paths.checkpoint_dir)
    # The cache is built by one process; DDP runs extract features on every rank instead.
    single_process = str(cfg.trainer.get("devices", 1)) == "1" and int(cfg.trainer.get("num_nodes", 1)) == 1
    use_cache = pretrained and cfg.features.cache and single_process
    fit = fit_with_feature_cache if use_cache else fit_on_images
    best = fit(cfg, module, datamodule, loggers, checkpoint_dir, epochs, fine_tune)
    if best is None:  # another DDP rank: rank 0 reports and saves
        return {}
    if best.get("fast_dev_run"):
        return best

    metrics = {"val/acc": best["val/acc"], "best_epoch": best["epoch"]}
    hparams = OmegaConf.to_container(cfg.model, resolve=True)
    hparams.update(
        {
            "image_size": int(cfg.data.image_size),
            "batch_size": int(cfg.data.batch_size),
            "augment": bool(cfg.data.augment),
            "max_epochs": epochs,
            "seed": int(cfg.seed),
        }
    )
    if not cfg.get("save_model", True):  # a sweep trial: the checkpoint's val/acc is the answer
        # ... and its checkpoints (two copies of the network, ~200 MB) would pile up trial by trial
        remove_checkpoints(checkpoint_dir)
        print(f"val accuracy: {metrics['val/acc']:.4f} (best epoch {metrics['best_epoch']})")
        return metrics

    predictor = Predictor(
        module.model,
        {"classes": classes, "preprocessing": preprocessing},
        device=str(compute_device(cfg.trainer.get("accelerator"))),
    )
    metrics["train/acc"] = accuracy(predictor, datamodule, "train")
    metrics["val/acc"] = accuracy(predictor, datamodule, "val")
    path = save_model(
        model_record(module.model, classes, preprocessing, hparams, metrics),
        Path(cfg.paths.model_dir) / "model.ckpt",
    )
    log.info("Saved the model to %s", path)
    print(f"model: {path}")
    print(f"train accuracy: {metrics['train/acc']:.4f}")
    print(f"val accuracy: {metrics['val/acc']:.4f} (best epoch {metrics['best_epoch']})")
    return metrics
