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


def run(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task``; an :class:`ImgclfError` exits with status 2 and its message.

    In a multirun sweep the error propagates so that the sweeper records the failed trial.
    """
    try:
        return task(cfg)
    except ImgclfError as exc:
        if in_multirun():
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
