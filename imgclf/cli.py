"""What the thin scripts share: user errors become one line on stderr, not a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from omegaconf import DictConfig

from imgclf.errors import ImgclfError

log = logging.getLogger("imgclf")


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().mode.name == "MULTIRUN"
    except ValueError:
        return False


class _NoAdverts(logging.Filter):
    """Lightning logs two product tips per trainer: every stage of every sweep trial."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_lightning_tips() -> None:
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _NoAdverts) for f in logger.filters):
        logger.addFilter(_NoAdverts())


def run(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task``; an :class:`ImgclfError` exits with status 2 and its message.

    In a multirun sweep the error propagates so that the sweeper records the failed trial.
    """
    quiet_lightning_tips()
    try:
        return task(cfg)
    except ImgclfError as exc:
        if in_multirun():
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
