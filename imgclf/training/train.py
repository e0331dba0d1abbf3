"""``train(cfg)``: data -> model -> staged fits -> the best epoch -> a self-describing model file.

The stages (:mod:`imgclf.training.schedule`): from scratch, the whole network trains on images; with ImageNet
weights the head trains on the frozen backbone (on its stored features when ``features.cache``),
then, with ``model.fine_tune``, the backbone's top blocks train too, and the better stage wins.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from imgclf.config import build, build_all
from imgclf.data.datamodule import ImageFolderDataModule
from imgclf.data.transforms import augment_preset
from imgclf.errors import ImgclfError
from imgclf.hardware import compute_device
from imgclf.inference.card import record_training, write_card
from imgclf.inference.metrics import interval
from imgclf.inference.predict import Predictor
from imgclf.io import atomic_write_json
from imgclf.models.backbones import fetch_weights
from imgclf.models.checkpoint import export_model
from imgclf.settings import typed
from imgclf.training.features import FeatureDataModule
from imgclf.training.module import ClassifierModule
from imgclf.training.schedule import FitResult, FitRunner, plan
from imgclf.training.settings import TrainSettings

log = logging.getLogger(__name__)


def check_weights_early(model_cfg: DictConfig) -> None:
    """Fail in seconds, before any data is read, when ImageNet weights cannot be had (a download,
    when allowed, happens here rather than after the dataset scan)."""
    if model_cfg.pretrained and not model_cfg.get("weights_path"):
        fetch_weights(model_cfg.backbone, model_cfg.get("allow_download", True))


def load_data(cfg: DictConfig) -> ImageFolderDataModule:
    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule: ImageFolderDataModule = build(cfg.data, where="data")
    classes = datamodule.scan()
    if len(classes) < 2:
        raise ImgclfError(
            f"{datamodule.root / 'train'} has one class ({classes[0]}); a classifier needs at least two"
        )
    counts = ", ".join(f"{name} {count}" for name, count in zip(classes, datamodule.class_counts()))
    log.info("Classes (%d), training images per class: %s", len(classes), counts)
    return datamodule


def accuracy(
    predictor: Predictor, datamodule: ImageFolderDataModule, split: str
) -> tuple[float, dict[str, Any]]:
    """The saved model's accuracy on a split, counted as ``eval.py`` counts it, and its interval."""
    probabilities, targets, _ = predictor.predict_dataset(
        datamodule.dataset(split), datamodule.batch_size, datamodule.num_workers, f"accuracy on {split}"
    )
    correct = int((probabilities.argmax(dim=1) == targets).sum())
    return correct / max(1, len(targets)), interval(correct, len(targets))


AUTO = "auto"


def wants_lr_finder(cfg: DictConfig) -> bool:
    """``lr_find=true`` (find, report, stop) or ``model.optimizer.lr=auto`` (find, then train)."""
    return bool(cfg.get("lr_find")) or cfg.model.optimizer.get("lr") == AUTO


def steepest_fall(lrs: Sequence[float], losses: Sequence[float], skip_begin: int = 10) -> float | None:
    """The learning rate where the (smoothed) loss falls fastest per decade of learning rate,
    before its minimum: Smith's rule. (Lightning's ``suggestion()`` takes the slope per unit of
    learning rate, which makes the flat start at 1e-6 look steep: on the digits' head it said
    2.8e-5 where the loss only starts to fall at 1e-4.)"""
    lr = np.asarray(lrs, dtype=float)
    loss = np.asarray(losses, dtype=float)
    finite = np.isfinite(loss) & (lr > 0)
    lr, loss = lr[finite], loss[finite]
    if len(loss) < skip_begin + 3:
        return None
    # the first steps are left out: the smoothed loss starts off biased
    lowest = skip_begin + int(np.argmin(loss[skip_begin:]))
    if lowest <= skip_begin + 1:
        return None
    slope = np.gradient(loss, np.log10(lr))[skip_begin:lowest]
    steepest = int(np.argmin(slope))
    return float(lr[skip_begin + steepest]) if slope[steepest] < 0 else None


def learning_rate(finder: Any, folder: Path) -> dict[str, Any]:
    """The finder's suggestion (:func:`steepest_fall`) and its plot, ``lr_find.png``."""
    from matplotlib.figure import Figure

    from imgclf.inference.eval_report import save_figure

    lrs, losses = finder.results["lr"], finder.results["loss"]
    suggestion = steepest_fall(lrs, losses)
    if suggestion is None:
        raise ImgclfError(
            "the learning-rate finder found no clear fall of the loss (too few images or steps?); "
            "give model.optimizer.lr=VALUE instead"
        )
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    axes.plot(lrs, losses)
    axes.axvline(suggestion, color="red", linestyle="--", label=f"suggestion {suggestion:.2e}")
    axes.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)")
    axes.set_title("Learning-rate finder: the steepest fall of the loss")
    axes.legend()
    folder.mkdir(parents=True, exist_ok=True)
    plot = save_figure(figure, folder / "lr_find.png")
    log.info("Learning-rate finder: suggestion %.3g (plot %s)", suggestion, plot)
    return {"suggestion": suggestion, "plot": str(plot)}


def train(cfg: Any) -> dict[str, Any]:
    """Fit the classifier described by ``cfg`` (conf/train.yaml as composed by the entry point,
    which applied best_hparams.yaml; checked against :class:`TrainSettings` unless it is one);
    returns the best epoch's metrics."""
    cfg = typed(cfg, TrainSettings)
    check_weights_early(cfg.model)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = load_data(cfg)
    if not cfg.model.pretrained:
        log.warning(
            "Training from scratch (model.pretrained=false): expect lower accuracy than with ImageNet weights"
        )
    log.info("Instantiating model <%s>", cfg.model._target_)
    module: ClassifierModule = build(
        cfg.model, where="model", num_classes=len(datamodule.classes), class_counts=datamodule.class_counts()
    )
    log.info("Backbone %s, ImageNet weights: %s", *weights_used(module).values())
    runner = FitRunner(cfg, build_all(cfg.get("logger"), "logger", "logger"), datamodule.files())
    results: list[FitResult] = []
    lr_found: dict[str, Any] | None = None
    epochs_before = 0
    frozen_backbone: dict[str, torch.Tensor] | None = None
    for stage in plan(cfg):
        if stage.unfreeze:  # fine-tuning starts from the head's best epoch
            results[-1].restore(module)
            frozen_backbone = copy.deepcopy(module.model.backbone.state_dict())
        data = datamodule
        if stage.on_features:
            data = FeatureDataModule(
                datamodule,
                cfg.paths.cache_dir,
                cfg.features.views,
                module.weights_source,
                cfg.seed,
                cfg.features.chunk_size,
            )
        if not results and wants_lr_finder(cfg):
            if cfg.model.optimizer.get("lr") == AUTO:  # the finder sets the lr of every step it takes
                module.optimizer_factory = functools.partial(module.optimizer_factory, lr=1e-7)
            found = learning_rate(runner.find_lr(stage, module, data), Path(cfg.paths.output_dir))
            if cfg.model.optimizer.get("lr") != AUTO:  # lr_find=true: the answer, not a model
                return {"lr_find": found}
            module.optimizer_factory = functools.partial(module.optimizer_factory, lr=found["suggestion"])
            lr_found = found
        result = runner.fit(stage, module, data)
        if result is None:
            log.info("fast_dev_run: the wiring works; no model saved")
            return {"fast_dev_run": True, **runner.last_metrics}
        result.epoch += epochs_before
        epochs_before += int(cfg.trainer.max_epochs)
        results.append(result)
    best = max(results, key=lambda r: r.score)  # the earlier stage wins a tie
    if best.score == float("-inf"):
        raise ImgclfError("training diverged (non-finite weights); lower model.optimizer.lr and rerun")
    if not best.restore(module) and frozen_backbone is not None:
        # The head's checkpoint holds the head alone: its backbone is the one before fine-tuning.
        module.model.backbone.load_state_dict(frozen_backbone)
    if not runner.is_global_zero:  # another DDP rank: rank 0 reports and saves
        return {}
    metrics: dict[str, Any] = {cfg.optimized_metric: best.score, "best_epoch": best.epoch}
    if lr_found:
        metrics["lr_find"] = lr_found
    if not cfg.get("save_model", True):  # a sweep trial: the metric is the answer
        runner.clean_up()
        return metrics

    predictor = Predictor(
        module.model, {"classes": datamodule.classes}, device=str(compute_device(cfg.trainer.accelerator))
    )
    metrics["train/acc"], _ = accuracy(predictor, datamodule, "train")
    metrics["val/acc"], metrics["val/acc_interval"] = accuracy(predictor, datamodule, "val")
    if datamodule.val_split:
        atomic_write_json(Path(cfg.paths.output_dir) / "val_split.json", datamodule.val_split)
    path = export_model(
        module.model,
        datamodule.classes,
        Path(cfg.paths.model_dir) / "model.ckpt",
        hparams=hyperparameters(cfg, module),
        metrics=metrics,
        val_split=datamodule.val_split,
    )
    log.info("Saved the model to %s", path)
    record_training(path.parent, datamodule.root)
    card = write_card(path.parent)
    if card is not None:
        log.info("Wrote its model card, %s", card)
    return {**metrics, "model": str(path), **weights_used(module)}


def weights_used(module: ClassifierModule) -> dict[str, str]:
    """Which backbone and which ImageNet weights the model was trained from, for the summaries."""
    backbone = module.model.backbone_config
    return {"backbone": str(backbone["name"]), "weights": module.weights_source or "none (from scratch)"}


def hyperparameters(cfg: DictConfig, module: ClassifierModule) -> dict[str, Any]:
    """What the model file records of how it was trained."""
    hparams = OmegaConf.to_container(cfg.model, resolve=True)
    hparams["backbone"] = module.model.backbone_config["name"]
    lr = (getattr(module.optimizer_factory, "keywords", None) or {}).get("lr")
    if lr is not None:  # the learning rate used: the finder's when the config said auto
        hparams["optimizer"]["lr"] = lr
    hparams.update(
        {
            "image_size": module.model.image_size,
            "batch_size": int(cfg.data.batch_size),
            "augment": augment_preset(cfg.data.augment) or "none",
            "max_epochs": int(cfg.trainer.max_epochs),
            "seed": int(cfg.seed),
        }
    )
    return hparams
