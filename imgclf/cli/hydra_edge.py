"""The commands as Hydra apps: each composes its config once, hands the library function its
settings (:mod:`imgclf.composition`), and a user error becomes one line on stderr, not a traceback.

Every command (``imgclf train``, ``python scripts/train.py``, ...) is a function decorated with
:func:`command`: Hydra composes ``conf/<name>.yaml`` with the command line once, and the library
function receives the composed config checked against its settings class (:mod:`imgclf.settings`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from imgclf.composition import conf_dir, running, settings, with_best_hparams
from imgclf.errors import user_error
from imgclf.process import exit_with
from imgclf.settings import Schema

log = logging.getLogger("imgclf")


def command(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``@hydra.main`` on ``conf/<config_name>.yaml``, found by :func:`conf_dir` when the command
    starts (not when this module is imported)."""
    import hydra

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def main() -> Any:
            return hydra.main(config_path=str(conf_dir()), config_name=config_name)(task)()

        return main

    return decorate


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().mode.name == "MULTIRUN"
    except ValueError:
        return False


LIGHTNING_INFO = "pytorch_lightning.utilities.rank_zero"  # the logger of Lightning's rank_zero_info


class _NoAdverts(logging.Filter):
    """Drop Lightning's product tip, and nothing else it logs.

    pytorch_lightning (2.6) logs it with ``rank_zero_info`` for every Trainer, so for every stage of
    every sweep trial: ``trainer/connectors/logger_connector/logger_connector.py``,
    ``_LoggerConnector.configure_logger``, "💡 Tip: For seamless cloud logging ... litlogger ...",
    unless a ``LitLogger`` is among the trainer's loggers (``logger=False`` gets it too). No
    environment variable or Trainer argument guards it, and a ``LitLogger`` is lightning.ai's cloud
    service, which this project does not use; raising the logger's level would also hide its other
    INFO lines (the devices a fit uses, why it stopped). So the filter matches the record by the
    Lightning function that logs it and the tip's opening.

    Lightning's other tip (``trainer/connectors/callback_connector.py``,
    ``_CallbackConnector._maybe_show_litmodels_tip``) needs no filter: it is logged only when the
    Trainer adds its default ``ModelCheckpoint``, and the fit's Trainer gets the project's own
    (``training/schedule.py``). tests/test_library_contracts.py fails when Lightning stops logging
    the tip (then remove this filter) or logs it, or another, from elsewhere.
    """

    EMITTER = ("logger_connector", "configure_logger")

    def filter(self, record: logging.LogRecord) -> bool:
        emitter = (record.module, record.funcName)
        return not (emitter == self.EMITTER and str(record.msg).startswith("💡 Tip"))


def quiet_lightning_tips() -> None:
    logger = logging.getLogger(LIGHTNING_INFO)
    if not any(isinstance(f, _NoAdverts) for f in logger.filters):
        logger.addFilter(_NoAdverts())


def run(
    task: Callable[[Any], Any],
    cfg: DictConfig,
    schema: type[Schema] | None = None,
    *,
    best_hparams: bool = False,
) -> Any:
    """Run ``task`` on the :func:`settings` of the running app's ``cfg`` (with
    ``best_hparams.yaml`` applied first when asked), checked against ``schema``, the settings class
    of ``task``, when given; an :class:`ImgclfError` exits with status 2 and its message.

    In a multirun sweep the error propagates so that the sweeper records the failed trial.
    """
    from hydra.core.hydra_config import HydraConfig

    quiet_lightning_tips()
    try:
        job = running(cfg)
        if best_hparams:
            job = with_best_hparams(job, list(HydraConfig.get().overrides.task))
        return task(settings(job, schema))
    except Exception as exc:
        error = user_error(exc)
        if error is None or in_multirun():
            raise
        exit_with(f"error: {error}")
