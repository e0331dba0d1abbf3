"""Best hyperparameters: written by a sweep, applied by the next ``train.py``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from imgclf.errors import ImgclfError
from imgclf.io import atomic_write_text

log = logging.getLogger(__name__)

BEST_HPARAMS = "best_hparams.yaml"
HEADER = (
    "# Best hyperparameters of an imgclf Optuna sweep. `python scripts/train.py` applies them;\n"
    "# `python scripts/train.py use_best_hparams=false` trains with the defaults instead.\n"
)


def write_best_hparams(path: str | Path, params: dict[str, Any], **info: Any) -> Path:
    path = Path(path)
    document = {**info, "params": dict(params)}
    atomic_write_text(path, HEADER + yaml.safe_dump(document, sort_keys=False))
    return path


def read_best_hparams(path: str | Path) -> dict[str, Any]:
    """The file's contents, checked; an unreadable or partial file is an error, not a default."""
    path = Path(path)
    fix = f"rerun the sweep, fix or remove {path}, or pass use_best_hparams=false"
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ImgclfError(f"{path} cannot be read ({str(exc).splitlines()[0]}); {fix}") from None
    if (
        not isinstance(document, dict)
        or not isinstance(document.get("params"), dict)
        or not document["params"]
    ):
        raise ImgclfError(f"{path} has no 'params' mapping of hyperparameters; {fix}")
    for key, value in document["params"].items():
        if not isinstance(value, (int, float, str, bool)):
            raise ImgclfError(f"{path}: {key} has value {value!r}, not a number, string or bool; {fix}")
    return document


def command_line_keys() -> set[str]:
    """Keys the user set on this command line: they win over the sweep's."""
    from hydra.core.hydra_config import HydraConfig

    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides}


def apply_best_hparams(cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` with ``${paths.model_dir}/best_hparams.yaml`` applied, when it exists."""
    path = Path(cfg.paths.model_dir) / BEST_HPARAMS
    if not cfg.get("use_best_hparams", True) or not path.exists():
        return cfg
    document = read_best_hparams(path)
    explicit = command_line_keys()
    cfg = cfg.copy()
    applied = {}
    for key, value in document["params"].items():
        if OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
            raise ImgclfError(
                f"{path}: {key} is not a config key of train.py; rerun the sweep, "
                "fix the file, or pass use_best_hparams=false"
            )
        if key in explicit:
            log.info("%s=%s from the command line wins over %s", key, OmegaConf.select(cfg, key), path)
            continue
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, merge=False)
        applied[key] = value
    score = document.get("value")
    score_text = (
        f", {document.get('metric', 'val/acc')} {score:.4f}" if isinstance(score, (int, float)) else ""
    )
    print(
        f"Using the best hyperparameters from {path}{score_text}: "
        + ", ".join(f"{k}={v}" for k, v in applied.items())
        + " (use_best_hparams=false trains with the defaults)"
    )
    return cfg
