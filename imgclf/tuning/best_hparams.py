"""Best hyperparameters: written by a sweep, applied by the next ``train.py``.

The file is data: its parameters are checked against the search space recorded with them, and they
reach a config only as overrides that the entry point composes (:func:`imgclf.composition.with_best_hparams`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)

from imgclf.config import override
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


@dataclass
class BestHparams:
    """What ``best_hparams.yaml`` adds to a command line: ``overrides`` to compose before the
    command line's own (which win), the parameters they set (``applied``) and the file's record."""

    path: Path
    overrides: list[str] = field(default_factory=list)
    applied: dict[str, Any] = field(default_factory=dict)
    document: dict[str, Any] = field(default_factory=dict)

    @property
    def fix(self) -> str:
        return f"rerun the sweep, fix or remove {self.path}, or pass use_best_hparams=false"

    def describe(self, metric: str | None) -> str:
        score = self.document.get("value")
        metric = self.document.get("metric", metric)
        return (
            f"Using the best hyperparameters from {self.path}"
            + (f", {metric} {score:.4f}" if isinstance(score, (int, float)) else "")
            + ": "
            + ", ".join(f"{k}={v}" for k, v in self.applied.items())
            + " (use_best_hparams=false trains with the defaults)"
        )


def best_hparams_overrides(
    cfg: DictConfig, command_line: Sequence[str], groups: Iterable[str]
) -> BestHparams:
    """The overrides ``${paths.model_dir}/best_hparams.yaml`` adds to ``command_line`` for the
    config ``cfg`` it composed (``groups``: the config groups it chose from), none when the file is
    absent or ``use_best_hparams=false``.

    A config-group choice (``model/backbone: resnet50``) cannot be set on a composed config: the
    group's file decides several keys and may bring defaults of its own. So the entry point composes
    again, these overrides first and the command line after them, as the user would have typed it:
    keys the command line gives win.
    """
    path = Path(cfg.paths.model_dir) / BEST_HPARAMS
    best = BestHparams(path)
    if not cfg.get("use_best_hparams", True) or not path.exists():
        return best
    best.document = read_best_hparams(path)
    explicit = {bare_key(o.split("=", 1)[0]) for o in command_line}
    groups = set(groups)
    for key, value in best.document["params"].items():
        name = bare_key(key)
        known = name in groups or OmegaConf.select(cfg, name, default=_MISSING) is not _MISSING
        if not known and not key.startswith("+"):
            raise ImgclfError(f"{path}: {key} is not a config key or group of train.py; {best.fix}")
        if name in explicit:
            log.info("%s from the command line wins over %s", name, path)
            continue
        best.overrides.append(override(key, value))
        best.applied[key] = value
    return best
