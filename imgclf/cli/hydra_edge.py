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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from imgclf.errors import ImgclfError, user_error
from imgclf.process import exit_with

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
    exit_with(
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


def running(cfg: DictConfig) -> DictConfig:
    """The config of the running Hydra app (``@hydra.main`` hands it over without its ``hydra``
    node) with that node: what :func:`settings` and :func:`with_best_hparams` read."""
    from hydra.core.hydra_config import HydraConfig

    job = cfg.copy()
    with open_dict(job):
        job.hydra = HydraConfig.get()
    return job


def compose(
    config_name: str,
    overrides: Sequence[str],
    output_dir: str | Path | None = None,
    fix: str = "",
    what: str = "",
) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides`` (Hydra's compose API), as the command line
    would compose it, with its ``hydra`` node; ``output_dir`` is its run folder. For entry points
    that run several commands (the pipeline) or compose again (:func:`with_best_hparams`). A bad
    override is an :class:`ImgclfError` saying ``what`` does not compose, and ``fix``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    app = GlobalHydra.instance().is_initialized()  # inside a command: its own config search path
    try:
        with contextlib.nullcontext() if app else initialize_config_dir(config_dir=str(conf_dir())):
            cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    except HydraException as exc:
        what = what or f"the settings of conf/{config_name}.yaml ({' '.join(overrides)})"
        raise ImgclfError(
            f"{what} do not compose: {str(exc).splitlines()[0]}{'; ' + fix if fix else ''}"
        ) from None
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    return cfg


def with_best_hparams(job: DictConfig, command_line: Sequence[str]) -> DictConfig:
    """``job`` (a config with its ``hydra`` node) composed again with ``best_hparams.yaml``'s
    parameters before ``command_line``, which wins; ``job`` itself when the file does not apply."""
    from imgclf.tuning.best_hparams import best_hparams_overrides

    best = best_hparams_overrides(job, command_line, job.hydra.runtime.choices)
    if not best.applied:
        return job
    config_name = job.hydra.job.config_name
    cfg = compose(config_name, best.overrides + list(command_line), job.hydra.runtime.output_dir, best.fix)
    log.info("%s", best.describe(cfg.get("optimized_metric")))
    return cfg


def settings(job: DictConfig) -> DictConfig:
    """What a library function is handed: ``job`` without Hydra's node and every value resolved,
    the run folder (``${hydra:runtime.output_dir}``) included, so that no library code reads
    Hydra's state."""
    from hydra.core.hydra_config import HydraConfig

    cfg = job.copy()
    instance = HydraConfig.instance()
    saved = instance.cfg
    with open_dict(cfg):
        node = cfg.pop("hydra", None)
    if node is not None:  # ${hydra:...} reads the current Hydra config: make it this job's
        wrapper = OmegaConf.create({"hydra": node})
        instance.set_config(wrapper)
    try:
        OmegaConf.resolve(cfg)
    finally:
        instance.cfg = saved
    return cfg


def run(task: Callable[[DictConfig], Any], cfg: DictConfig, *, best_hparams: bool = False) -> Any:
    """Run ``task`` on the :func:`settings` of the running app's ``cfg`` (with
    ``best_hparams.yaml`` applied first when asked); an :class:`ImgclfError` exits with status 2
    and its message.

    In a multirun sweep the error propagates so that the sweeper records the failed trial.
    """
    from hydra.core.hydra_config import HydraConfig

    quiet_lightning_tips()
    try:
        job = running(cfg)
        if best_hparams:
            job = with_best_hparams(job, list(HydraConfig.get().overrides.task))
        return task(settings(job))
    except Exception as exc:
        error = user_error(exc)
        if error is None or in_multirun():
            raise
        exit_with(f"error: {error}")
