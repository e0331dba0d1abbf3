"""Best hyperparameters: written by a sweep, applied by the next ``train.py``."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)

from imgclf.errors import ImgclfError
from imgclf.io import atomic_write_text

log = logging.getLogger(__name__)
_MISSING = object()

BEST_HPARAMS = "best_hparams.yaml"
HEADER = (
    "# Best hyperparameters of an imgclf Optuna sweep. `python scripts/train.py` applies them;\n"
    "# `python scripts/train.py use_best_hparams=false` trains with the defaults instead.\n"
)


def space_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be searched: Hydra's own settings and added (``+``) reserved keys such
    as ``_target_`` are not hyperparameters, and a study or file could name code through them."""
    name = bare_key(key)
    if name == "hydra" or name.startswith(("hydra.", "hydra/")):
        return "Hydra's own settings are not hyperparameters"
    if key.startswith("+") and any(part.startswith("_") for part in name.replace("/", ".").split(".")):
        return "a search space may not add a reserved key (_target_, _partial_, ...)"
    return None


def contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is one the sweep could have drawn from ``distribution``."""
    if isinstance(distribution, CategoricalDistribution):
        # by type too: 1 == True, and "1" would not become the 1 the sweep drew
        return any(type(choice) is type(value) and choice == value for choice in distribution.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if not distribution.low <= value <= distribution.high:
        return False
    if isinstance(distribution, IntDistribution):
        return isinstance(value, int) and (value - distribution.low) % distribution.step == 0
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        steps = (value - distribution.low) / distribution.step
        return abs(steps - round(steps)) < 1e-8
    return isinstance(distribution, FloatDistribution)


def outside_space(params: Mapping[str, Any], space: Mapping[str, BaseDistribution]) -> str | None:
    """What of ``params`` lies outside the search space ``space``, or None."""
    for key, value in params.items():
        if key not in space:
            return f"{key} is not a parameter of the search space ({', '.join(space) or 'empty'})"
        if not contains(space[key], value):
            return f"{key}={value!r} is outside its search space {space[key]}"
    return None


def write_best_hparams(
    path: str | Path, params: Mapping[str, Any], space: Mapping[str, BaseDistribution], **info: Any
) -> Path:
    """The best parameters and the search space they were drawn from, for the reader to check."""
    if problem := outside_space(params, space):
        raise ImgclfError(f"best parameters not written to {path}: {problem}")
    path = Path(path)
    recorded = {key: json.loads(distribution_to_json(d)) for key, d in space.items()}
    document = {**info, "params": dict(params), "space": recorded}
    atomic_write_text(path, HEADER + yaml.safe_dump(document, sort_keys=False))
    return path


def read_space(entries: Any, fail: Callable[[str], NoReturn]) -> dict[str, BaseDistribution]:
    if not isinstance(entries, dict) or not entries:
        fail("no search space recorded ('space'; files from before imgclf checked them have none)")
    space = {}
    for key, entry in entries.items():
        if problem := space_key_problem(str(key)):
            fail(f"{key} is refused: {problem}")
        try:
            space[key] = json_to_distribution(json.dumps(entry))
        except (TypeError, ValueError, KeyError) as exc:  # Optuna's checks of names and bounds
            fail(f"the search space of {key} is invalid ({exc})")
    return space


def read_best_hparams(path: str | Path) -> dict[str, Any]:
    """The file's contents, checked: parameters inside the search space recorded with them. An
    unreadable, partial or out-of-space file is an error, not a default."""
    path = Path(path)
    fix = f"rerun the sweep, fix or remove {path}, or pass use_best_hparams=false"

    def fail(problem: str) -> NoReturn:
        raise ImgclfError(f"{path}: {problem}; {fix}")

    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ImgclfError(f"{path} cannot be read ({str(exc).splitlines()[0]}); {fix}") from None
    if (
        not isinstance(document, dict)
        or not isinstance(document.get("params"), dict)
        or not document["params"]
    ):
        fail("no 'params' mapping of hyperparameters")
    for key, value in document["params"].items():
        if not isinstance(value, (int, float, str, bool)):
            fail(f"{key} has value {value!r}, not a number, string or bool")
    space = read_space(document.get("space"), fail)
    if problem := outside_space(document["params"], space):
        fail(problem)
    return document


def bare_key(key: str) -> str:
    """The key or group an override names: ``+a.b`` -> ``a.b``, ``model/backbone@x`` -> ``model/backbone``."""
    return key.lstrip("+~").split("@", 1)[0]


def override_value(value: Any) -> str:
    """A parameter's value as Hydra's override grammar reads it back unchanged."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    # Quoted, so that a string such as "1e-3" or "true" stays a string.
    text = str(value)
    return f"'{text}'" if "'" not in text else '"' + text.replace('"', '\\"') + '"'


def running_job(path: Path) -> DictConfig:
    """Hydra's record of this run: config name, command-line overrides, group choices, config dir."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise ImgclfError(
            f"{path} can only be applied to a config Hydra composed (python scripts/train.py); "
            "pass use_best_hparams=false"
        )
    return HydraConfig.get()


def hydra_for(job: DictConfig) -> contextlib.AbstractContextManager:
    """Hydra's compose API: the running app's (scripts/train.py), or one on the run's config dir
    when ``train()`` is called as a library function on a composed config."""
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return contextlib.nullcontext()
    main = next(source for source in job.runtime.config_sources if source.provider == "main")
    if main.schema == "pkg":
        return initialize_config_module(config_module=main.path)
    return initialize_config_dir(config_dir=main.path)


def recompose(cfg: DictConfig, job: DictConfig, overrides: list[str], path: Path) -> DictConfig:
    """``cfg`` composed again with ``overrides`` placed before the command line's own.

    A config-group choice (``model/backbone: resnet50``) cannot be set on a composed config: the
    group's file decides several keys and may bring defaults of its own. Composing again is what
    the command line would have done; the command line's overrides come last, so they still win.
    """
    from hydra import compose
    from hydra.errors import HydraException

    task = list(job.overrides.task)
    given = cfg.copy()
    with open_dict(given):
        given.pop("hydra", None)
    fix = f"rerun the sweep, fix or remove {path}, or pass use_best_hparams=false"
    with hydra_for(job):
        try:
            # Composing from the command line must give back the config train() was handed; a
            # config changed after composition would silently lose those changes.
            if compose(job.job.config_name, task) != given:
                raise ImgclfError(
                    f"{path} cannot be applied: the config passed to train() is not the one "
                    f"{job.job.config_name!r} composes from this command line; pass use_best_hparams=false"
                )
            return compose(job.job.config_name, overrides + task)
        except HydraException as exc:
            raise ImgclfError(f"{path} cannot be applied: {str(exc).splitlines()[0]}; {fix}") from None


def apply_best_hparams(cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` with ``${paths.model_dir}/best_hparams.yaml`` applied, when it exists.

    Keys given on the command line win; config-group choices (``model/backbone``) apply too.
    """
    path = Path(cfg.paths.model_dir) / BEST_HPARAMS
    if not cfg.get("use_best_hparams", True) or not path.exists():
        return cfg
    document = read_best_hparams(path)
    job = running_job(path)
    explicit = {bare_key(o.split("=", 1)[0]) for o in job.overrides.task}
    groups = set(job.runtime.choices)
    overrides, applied = [], {}
    for key, value in document["params"].items():
        name = bare_key(key)
        known = name in groups or OmegaConf.select(cfg, name, default=_MISSING) is not _MISSING
        if not known and not key.startswith("+"):
            raise ImgclfError(
                f"{path}: {key} is not a config key or group of train.py; rerun the sweep, "
                "fix the file, or pass use_best_hparams=false"
            )
        if name in explicit:
            log.info("%s from the command line wins over %s", name, path)
            continue
        overrides.append(f"{key}={override_value(value)}")
        applied[key] = value
    if not applied:
        return cfg
    cfg = recompose(cfg, job, overrides, path)
    score = document.get("value")
    metric = document.get("metric", cfg.get("optimized_metric"))
    log.info(
        "Using the best hyperparameters from %s%s: %s (use_best_hparams=false trains with the defaults)",
        path,
        f", {metric} {score:.4f}" if isinstance(score, (int, float)) else "",
        ", ".join(f"{k}={v}" for k, v in applied.items()),
    )
    return cfg
