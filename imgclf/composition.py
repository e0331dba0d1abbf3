"""Where Hydra meets the library: the configs are found (:func:`conf_dir`) and composed
(:func:`compose`, :func:`with_best_hparams`), and a library function is handed :func:`settings`:
resolved values, no Hydra state, checked against the function's settings class. Used by the
commands (:mod:`imgclf.cli`) and by the pipeline, which composes each stage's command."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from imgclf.errors import ImgclfError
from imgclf.process import exit_with
from imgclf.settings import Schema, typed

log = logging.getLogger(__name__)

CONF_ENV = "IMGCLF_CONF_DIR"


def conf_dir() -> Path:
    """The configs: ``$IMGCLF_CONF_DIR``, else the clone's ``conf/`` beside the package (``pip
    install -e .``), else ``./conf`` (an installed package run from a folder holding the configs, as
    the Docker image does)."""
    candidates = [Path(os.environ[CONF_ENV])] if os.environ.get(CONF_ENV) else []
    return first_conf_dir(candidates + [Path(__file__).resolve().parents[1] / "conf", Path.cwd() / "conf"])


def first_conf_dir(candidates: list[Path]) -> Path:
    for folder in candidates:
        if (folder / "train.yaml").is_file():
            return folder.resolve()
    tried = ", ".join(str(folder) for folder in candidates)
    exit_with(
        f"error: imgclf's configs (conf/train.yaml, ...) are not in {tried}; run from a clone "
        f"(pip install -e .), from a folder holding conf/, or set {CONF_ENV}"
    )


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


def settings(job: DictConfig, schema: type[Schema] | None = None) -> Any:
    """What a library function is handed: ``job`` without Hydra's node and every value resolved,
    the run folder (``${hydra:runtime.output_dir}``) included, so that no library code reads
    Hydra's state; checked against the library's ``schema`` when given (:func:`imgclf.settings.typed`)."""
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
    return cfg if schema is None else typed(cfg, schema)
