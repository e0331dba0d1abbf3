"""Round 1's optional Optuna sweep, and each round's training."""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from typing import Any

from imgclf.composition import settings, with_best_hparams
from imgclf.errors import ImgclfError
from imgclf.pipeline.stages.stage import PipelineStage, Prepared, Ran, Record
from imgclf.pipeline.state import config_digest, digest, file_digest
from imgclf.process import stop_process_group
from imgclf.training.settings import TrainSettings
from imgclf.training.train import train
from imgclf.tuning.best_hparams import read_best_hparams

log = logging.getLogger(__name__)


class _Training(PipelineStage):
    def train_overrides(self) -> list[str]:
        return self.context.shared("train") + self.context.overrides("train")


class TuneStage(_Training):
    """The real multirun, ``imgclf train -m hparams_search=optuna``, in a process group of its own
    that ends with the stage; it writes best_hparams.yaml, which the train stages apply."""

    name = "tune"
    reruns_in_history = True

    def arguments(self) -> list[str]:
        return [
            "-m",
            "hparams_search=optuna",
            f"hydra.sweeper.n_trials={int(self.context.cfg.tune.n_trials)}",
            *self.train_overrides(),
            *self.context.overrides("tune"),
        ]

    def prepare(self) -> Prepared:
        context = self.context
        arguments = self.arguments()
        # Composed here so that a bad override fails now, not in the sweep.
        self.compose("train", [a for a in arguments if a != "-m"])

        def watch() -> dict[str, Any]:
            return {
                "dataset": context.dataset(),
                "best_hparams": file_digest(context.best_hparams, contents=True),
            }

        return Prepared(digest(arguments), watch, command=arguments)

    def run(self, prepared: Prepared, previous: Record | None, record: Record) -> Ran:
        command = [sys.executable, "-m", "imgclf", "train", *prepared.command]
        log.info("%s: $ imgclf %s", self.label, shlex.join(command[3:]))
        process = subprocess.Popen(command, start_new_session=True)
        try:
            code = process.wait()
        finally:
            stop_process_group(process)
        if code != 0:
            raise ImgclfError(
                f"the sweep (imgclf train -m hparams_search=optuna) ended with status {code}; "
                "its messages are above, and the same command continues its study"
            )
        document = read_best_hparams(self.context.best_hparams)
        result = {
            "value": document.get("value"),
            "params": document["params"],
            "trials": document.get("n_trials"),
        }
        outcome = f"best {document.get('metric', 'val/acc')} {document.get('value', float('nan')):.4f}"
        return Ran(result, outcome, document)


class TrainStage(_Training):
    """:func:`imgclf.training.train.train` on ``conf/train.yaml`` with the pipeline's backbone and
    seed, best_hparams.yaml applied as ``imgclf train`` applies it."""

    name = "train"

    def prepare(self) -> Prepared:
        context = self.context
        cfg = self.compose("train", self.train_overrides())

        def watch() -> dict[str, Any]:
            return {
                "dataset": context.dataset(),
                "best_hparams": file_digest(context.best_hparams, contents=True),
                "model": file_digest(context.model),
            }

        return Prepared(config_digest(cfg, ignore=("resume",)), watch, {"train": cfg})

    def run(self, prepared: Prepared, previous: Record | None, record: Record) -> Ran:
        cfg = prepared.configs["train"]
        inputs = ("dataset", "best_hparams")
        # Lightning's checkpoints are those of whatever ran last with these settings, perhaps on a
        # smaller dataset (a round ago): continue from them only when this very stage was cut short.
        resume = bool(
            cfg.resume
            and previous
            and previous["status"] == "started"
            and previous["config"] == prepared.digest
            and all(previous["before"].get(k) == record["before"][k] for k in inputs)
        )
        overrides = self.train_overrides()
        if not resume:
            overrides.append("resume=false")
            cfg = cfg.copy()
            cfg.resume = False  # a plain key: nothing interpolates it
        metrics = train(settings(with_best_hparams(cfg, overrides), TrainSettings))
        if "model" not in metrics:
            raise ImgclfError(
                "training saved no model; leave save_model and trainer.fast_dev_run as they are"
            )
        keys = ("train/acc", "val/acc", "best_epoch", "model", "backbone", "weights")
        result = {key: metrics[key] for key in keys if key in metrics}
        return Ran(result, f"val accuracy {metrics['val/acc']:.4f}", metrics)
