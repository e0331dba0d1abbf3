"""A ``hydra.sweeper.custom_search_space`` for the sweep tests: Optuna's define-by-run API."""

from __future__ import annotations

import optuna
from omegaconf import DictConfig


def batch_size(cfg: DictConfig, trial: optuna.Trial) -> None:
    trial.suggest_categorical("data.batch_size", [8, 16])
