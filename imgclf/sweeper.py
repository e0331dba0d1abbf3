"""Hydra's Optuna sweeper, made resumable and shareable.

``hydra.sweeper.n_trials`` is the number of trials the *study* should hold: rerunning an
interrupted sweep tops it up instead of starting over, and several processes (or machines) on
one storage URL share the work. The sampler is reseeded with the number of trials already in
the study, so a seeded sampler does not replay the random points it already tried. Trials that
crash are recorded as failed and the sweep goes on. At the end the best trials are shown and the
best parameters are written to ``${paths.model_dir}/best_hparams.yaml``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState
from rich import box
from rich.console import Console
from rich.table import Table

from imgclf.errors import ImgclfError
from imgclf.tune import BEST_HPARAMS, write_best_hparams

log = logging.getLogger(__name__)
OWNER = "imgclf_owner"
_MISSING = object()


def parse_search_space(lines: list[str], config: DictConfig) -> tuple[dict, dict, list]:
    """Distributions, fixed values and fixed overrides; a bad entry is named before any trial."""
    groups = set(OmegaConf.select(config, "hydra.runtime.choices", default={}) or {})
    for line in lines:
        key = line.split("=", 1)[0].lstrip("+~")
        if key in groups:
            continue
        try:
            create_params_from_overrides([line])
        except Exception as exc:  # Hydra's parser and Optuna's distributions raise various types
            raise ImgclfError(f"search space entry {line!r} is invalid: {exc}") from None
        if OmegaConf.select(config, key, default=_MISSING) is _MISSING and not line.startswith("+"):
            raise ImgclfError(
                f"search space entry {line!r}: {key} is not a config key of train.py "
                "(see `python scripts/train.py --cfg job`)"
            )
    return create_params_from_overrides(lines)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphaned_trials(study: optuna.Study) -> int:
    """RUNNING trials left by a killed sweep on this machine are marked failed."""
    host = socket.gethostname()
    orphaned = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = str(trial.user_attrs.get(OWNER, "")).rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL)
            orphaned += 1
    return orphaned


def trial_counts(study: optuna.Study) -> Counter:
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def storage_url(storage: Any) -> Any:
    """Create the folder of a SQLite file so that the first sweep just works."""
    if isinstance(storage, str) and storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return storage


def open_study(name: str | None, storage: Any, directions: list[str], attempts: int = 5) -> optuna.Study:
    """Create or load the study. Processes starting together on a new database race to create
    its tables; the loser retries and finds them made."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(1, attempts + 1):
        try:
            return optuna.create_study(
                study_name=name, storage=storage_url(storage), directions=directions, load_if_exists=True
            )
        except SQLAlchemyError as exc:
            if attempt == attempts:
                raise ImgclfError(f"cannot open the study in {storage}: {exc}") from None
            log.info("Storage busy (%s); retrying", type(exc).__name__)
            time.sleep(0.5 + random.random())


class ResumableSweep(OptunaSweeperImpl):
    def __init__(self, sampler_config: DictConfig, **kwargs: Any) -> None:
        super().__init__(sampler=None, **kwargs)
        self.sampler_config = sampler_config

    def _sampler(self, offset: int) -> optuna.samplers.BaseSampler:
        config = OmegaConf.to_container(self.sampler_config, resolve=True)
        if config.get("seed") is not None:
            config["seed"] = int(config["seed"]) + offset
        return instantiate(config, _execution_whitelist_=["optuna.samplers.*"])

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._sweep(arguments)
        except ImgclfError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    def _sweep(self, arguments: list[str]) -> None:
        self._process_searchspace_config()
        distributions, fixed, fixed_overrides = parse_search_space(
            self._parse_sweeper_params_config() + list(arguments), self.config
        )
        for name in fixed:
            distributions.pop(name, None)
        directions = self._get_directions()
        study = open_study(self.study_name, self.storage, directions)
        study.sampler = self._sampler(offset=len(study.trials))
        orphaned = fail_orphaned_trials(study)
        counts = trial_counts(study)
        log.info(
            "Study %r in %s holds %d trials (%d complete, %d failed%s); target %d",
            study.study_name,
            self.storage,
            sum(counts.values()),
            counts[TrialState.COMPLETE],
            counts[TrialState.FAIL],
            f", {orphaned} interrupted marked failed" if orphaned else "",
            self.n_trials,
        )

        failures = 0
        while True:
            counts = trial_counts(study)
            remaining = self.n_trials - sum(
                counts[s] for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            )
            if remaining <= 0:
                break
            if failures >= 2 * self.n_trials:  # most of the space crashes: say so, don't spin
                log.error(
                    "Stopping: %d trials failed in this run; see their logs in %s", failures, self.sweep_dir
                )
                break
            trials = [study.ask() for _ in range(min(self.n_jobs, remaining))]
            for trial in trials:
                trial.set_user_attr(OWNER, _owner())
            overrides = self._configure_trials(trials, distributions, fixed, fixed_overrides)
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns):
                failures += not self._record(study, trial, ret)
        self._finish(study, directions)

    def _record(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> bool:
        try:
            value = float(ret.return_value)
            if not math.isfinite(value):
                raise ValueError(f"the trial returned {value}")
        except Exception as exc:  # whatever the trial raised: record it, keep sweeping
            study.tell(trial, state=TrialState.FAIL)
            log.warning("Trial %d failed: %s", trial.number, exc)
            return False
        study.tell(trial, value)
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
        )
        log.info("Trial %d: %s -> %s", trial.number, params, value)
        return True

    def _finish(self, study: optuna.Study, directions: list[str]) -> None:
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not complete:
            raise ImgclfError(
                f"no trial of study {study.study_name!r} completed; see the trial logs in {self.sweep_dir}"
            )
        reverse = directions[0] == "maximize"
        ranked = sorted(complete, key=lambda t: t.value, reverse=reverse)
        show_best_trials(ranked[:5], metric=str(self.config.get("optimized_metric", "value")))
        best = ranked[0]
        params = {**best.params}
        path = write_best_hparams(
            Path(self.config.paths.model_dir) / BEST_HPARAMS,
            params,
            metric=str(self.config.get("optimized_metric", "value")),
            value=float(best.value),
            trial=best.number,
            study=study.study_name,
            storage=str(self.storage),
            n_trials=len(study.trials),
        )
        counts = trial_counts(study)
        print(
            f"Study {study.study_name!r} now holds {len(study.trials)} trials "
            f"({counts[TrialState.COMPLETE]} complete, {counts[TrialState.FAIL]} failed). "
            f"Best {self.config.get('optimized_metric', 'value')} {best.value:.4f} (trial {best.number}); "
            f"parameters written to {path}"
        )
        OmegaConf.save(
            OmegaConf.create({"name": "optuna", "best_params": params, "best_value": best.value}),
            Path(self.sweep_dir) / "optimization_results.yaml",
        )


def show_best_trials(trials: list[optuna.trial.FrozenTrial], metric: str) -> None:
    names = sorted({k for t in trials for k in t.params})

    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value if value is not None else "")

    rows = [[str(t.number), f"{t.value:.4f}"] + [cell(t.params.get(n)) for n in names] for t in trials]
    # Short headers ("lr", "hidden_size"); on a narrow terminal the headers fold, the values never.
    headers = ["trial", metric] + [name.split(".")[-1] for name in names]
    table = Table(title=f"best trials by {metric}", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, header in enumerate(headers):
        widest = max((len(row[i]) for row in rows), default=1)
        table.add_column(header, justify="right" if i < 2 else "left", overflow="fold", min_width=widest)
    for row in rows:
        table.add_row(*row)
    # Piped to a file or a CI log there is no terminal width to respect: print the table whole.
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    console.print(table)


class ResumableOptunaSweeper(OptunaSweeper):
    """Drop-in for Hydra's OptunaSweeper (same config), built on :class:`ResumableSweep`."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None,
        params: DictConfig | None,
    ) -> None:
        self.sweeper = ResumableSweep(
            sampler_config=sampler,
            direction=direction,
            storage=storage,
            study_name=study_name,
            n_trials=n_trials,
            n_jobs=n_jobs,
            max_failure_rate=max_failure_rate,
            custom_search_space=custom_search_space,
            params=params,
        )
