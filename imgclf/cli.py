"""What the thin scripts share: user errors become one line on stderr, not a traceback."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

from omegaconf import DictConfig

from imgclf.errors import ImgclfError, user_error

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
    except Exception as exc:
        error = user_error(exc)
        if error is None or in_multirun():
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def exits_cleanly(interrupted: type[BaseException]) -> Iterator[None]:
    """For the long, resumable jobs (scrape, pipeline): one line on stderr and a status instead of
    a traceback. ``interrupted`` (raised on SIGINT or SIGTERM once the job has stopped cleanly, and
    carrying ``signum``) exits with 128 + signum, an :class:`ImgclfError` with 2, a Ctrl+C before
    the job began with 130."""
    try:
        yield
    except interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        sys.exit(128 + exc.signum)
    except ImgclfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # before the job's own handlers were installed: nothing to undo
        print("interrupted; run the same command again to continue", file=sys.stderr)
        sys.exit(130)
