"""Where Hydra meets the library: the commands' configs are found and composed here, and user errors
become one line on stderr, not a traceback.

Every command (``imgclf train``, ``python scripts/train.py``, ...) is a function decorated with
:func:`command`: Hydra composes ``conf/<name>.yaml`` with the command line once, and the library
function receives the composed config.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from imgclf.errors import ImgclfError, user_error

log = logging.getLogger("imgclf")


CONF_ENV = "IMGCLF_CONF_DIR"


def conf_dir() -> Path:
    """The configs: ``$IMGCLF_CONF_DIR``, else the clone's ``conf/`` beside the package (``pip
    install -e .``), else ``./conf`` (an installed package run from a folder holding the configs, as
    the Docker image does)."""
    candidates = [Path(os.environ[CONF_ENV])] if os.environ.get(CONF_ENV) else []
    return first_conf_dir(candidates + [Path(__file__).resolve().parents[2] / "conf", Path.cwd() / "conf"])


def first_conf_dir(candidates: list[Path]) -> Path:
    for folder in candidates:
        if (folder / "train.yaml").is_file():
            return folder.resolve()
    tried = ", ".join(str(folder) for folder in candidates)
    raise SystemExit(
        f"error: imgclf's configs (conf/train.yaml, ...) are not in {tried}; run from a clone "
        f"(pip install -e .), from a folder holding conf/, or set {CONF_ENV}"
    )


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
