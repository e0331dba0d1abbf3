"""A Hydra sweeper on Optuna's public API: resumable, shareable between machines, crash-tolerant.

It reads the configuration of Hydra's Optuna sweeper (``hydra.sweeper.sampler``, ``direction``,
``storage``, ``study_name``, ``n_trials``, ``n_jobs``, ``max_failure_rate``,
``custom_search_space``, ``params``) plus three keys of its own for interrupted trials.

``n_trials`` is the number of trials the *study* should hold: rerunning an interrupted sweep tops
it up instead of starting over, and several processes (or machines) on one storage URL share the
work. The sampler is reseeded with the number of trials already in the study, so a seeded sampler
does not replay the points it already tried. Trials that crash are recorded as failed and the
sweep goes on. Every running trial has a heartbeat in the storage; a trial whose process was
killed, on any machine, stops beating, and the next sweep on that study fails it once its last
heartbeat is ``grace_period`` seconds old and queues it again (``max_retry`` times). At the end
the best trials are shown and the best parameters written to ``${paths.model_dir}/best_hparams.yaml``
with the search space they were drawn from; a trial the sweep's own space could not have drawn
(another space's, or one crafted in a shared study) is left out with a warning.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import math
import os
import random
import re
import site
import socket
import sys
import sysconfig
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from hydra_plugins.hydra_optuna_sweeper.config import Direction, OptunaSweeperConf
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState
from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from imgclf.config import build, override
from imgclf.errors import ImgclfError
from imgclf.tuning.best_hparams import (
    BEST_HPARAMS,
    bare_key,
    outside_space,
    space_key_problem,
    write_best_hparams,
)

log = logging.getLogger(__name__)
OWNER = "imgclf_owner"
_MISSING = object()
OWN_CODE = "it must name a function of your own code (as search_spaces.batch_size, on PYTHONPATH)"


def check_custom_search_space(name: str) -> None:
    """``custom_search_space`` names a function of the user's own code: a module found outside the
    Python installation (its standard library and installed packages), checked before anything is
    imported, so that a config file cannot make the sweep import, and run, one of theirs."""
    top = name.split(".", 1)[0]
    if "." not in name or not top.isidentifier():
        raise ImgclfError(
            f"hydra.sweeper.custom_search_space={name} is not module.function; name a function of "
            "your own module (on PYTHONPATH), as search_spaces.batch_size"
        )
    try:
        spec = importlib.util.find_spec(top)  # a top-level module: found, not run
    except (ImportError, ValueError):
        spec = None
    origin = getattr(spec, "origin", None)
    if spec is None or not origin:
        raise ImgclfError(
            f"hydra.sweeper.custom_search_space={name}: no module {top} on the path "
            "(PYTHONPATH or the working directory)"
        )
    if origin in ("built-in", "frozen"):
        raise ImgclfError(f"hydra.sweeper.custom_search_space={name} names a built-in module; {OWN_CODE}")
    libraries = ("stdlib", "platstdlib", "purelib", "platlib")
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in libraries}
    installed |= {Path(p).resolve() for p in site.getsitepackages() + [site.getusersitepackages()]}
    ours = Path(__file__).resolve().parents[1]  # the imgclf package
    where = Path(origin).resolve()
    if where.is_relative_to(ours) or where.is_relative_to(ours.parent / "scripts"):
        raise ImgclfError(f"hydra.sweeper.custom_search_space={name} names imgclf's own code; {OWN_CODE}")
    if any(where.is_relative_to(folder) for folder in installed):
        raise ImgclfError(
            f"hydra.sweeper.custom_search_space={name} names a module of the Python installation "
            f"({where}); {OWN_CODE}"
        )


@dataclass
class ResumableOptunaSweeperConf(OptunaSweeperConf):
    """Hydra's Optuna sweeper settings, plus how interrupted trials are found and rerun."""

    _target_: str = "imgclf.tuning.sweeper.ResumableOptunaSweeper"
    # a running trial writes a heartbeat to the storage this often (seconds)
    heartbeat_interval: int = 10
    # a RUNNING trial whose last heartbeat is older than this (seconds) was interrupted
    grace_period: int = 30
    # an interrupted trial is queued again this many times at most
    max_retry: int = 1


# This module is loaded when Hydra starts (it is a plugin entry point), before any config is
# composed, so `override /hydra/sweeper: imgclf_optuna` finds this schema.
ConfigStore.instance().store(
    group="hydra/sweeper", name="imgclf_optuna", node=ResumableOptunaSweeperConf, provider="imgclf"
)


@dataclass
class SearchSpace:
    """What each trial gets: sampled parameters, fixed overrides and deletions (``~key``)."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)
    deletions: list[str] = field(default_factory=list)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        return (
            [override(key, value) for key, value in params.items()]
            + [f"{key}={value}" for key, value in self.fixed.items()]
            + self.deletions
        )


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of a Hydra sweep: choice, range or (int/log-tagged) interval."""
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if not values:
            raise ValueError("the range holds no value")
        steps = {b - a for a, b in zip(values, values[1:])} if all(type(v) is int for v in values) else None
        if steps is not None and len(steps) <= 1:
            return IntDistribution(min(values), max(values), step=abs(steps.pop()) if steps else 1)
        return CategoricalDistribution(values)  # float ranges: their values, in their order
    if override.is_interval_sweep():
        interval = override.value()
        log_scale = "log" in interval.tags
        if isinstance(interval.start, int) and isinstance(interval.end, int):
            return IntDistribution(interval.start, interval.end, log=log_scale)
        return FloatDistribution(interval.start, interval.end, log=log_scale)
    raise ValueError("only choice(), range() and interval() sweeps can be searched")


def parse_search_space(
    lines: list[str], config: DictConfig, group_options: Callable[[str], list[str]]
) -> SearchSpace:
    """Hydra sweep overrides as a search space; a bad entry is named before any trial runs.

    Config-group choices (``logger=choice(csv,none)``, ``model/backbone=choice(...)``) are
    categorical parameters like any other. A later entry for a key replaces an earlier one, so the
    command line wins over ``hydra.sweeper.params``.
    """
    groups = set(OmegaConf.select(config, "hydra.runtime.choices", default={}) or {})
    parser = OverridesParser.create()
    space = SearchSpace()
    for line in lines:
        try:
            override = parser.parse_override(line)
        except Exception as exc:  # Hydra's grammar errors come in several types
            raise ImgclfError(f"search space entry {line!r} is invalid: {exc}") from None
        if override.is_delete():
            space.deletions.append(line)
            continue
        name = bare_key(override.get_key_element())
        if name in groups:
            if override.is_interval_sweep():
                raise ImgclfError(
                    f"search space entry {line!r}: config group {name} takes choice() of its options"
                )
            options = [*group_options(name), "null"]  # null leaves the group out
            swept = override.is_sweep_override()
            for value in override.sweep_string_iterator() if swept else [override.get_value_element_as_str()]:
                if value not in options:
                    raise ImgclfError(
                        f"search space entry {line!r}: {value} is not an option of config group {name} "
                        f"(options: {', '.join(options[:-1])})"
                    )
        elif (
            not (override.is_add() or override.is_force_add())
            and OmegaConf.select(config, name, default=_MISSING) is _MISSING
        ):
            raise ImgclfError(
                f"search space entry {line!r}: {name} is not a config key of train.py "
                "(see `python scripts/train.py --cfg job`)"
            )
        key = override.get_key_element()
        for earlier in [k for k in (*space.distributions, *space.fixed) if bare_key(k) == name and k != key]:
            space.distributions.pop(earlier, None)
            space.fixed.pop(earlier, None)
        if not override.is_sweep_override():
            space.distributions.pop(key, None)
            space.fixed[key] = override.get_value_element_as_str()
            continue
        space.fixed.pop(key, None)
        if problem := space_key_problem(key):
            raise ImgclfError(f"search space entry {line!r}: {problem}")
        try:
            # a key searched again keeps its place: the seeded sampler draws in this order
            space.distributions[key] = distribution(override)
        except (ValueError, TypeError) as exc:  # Optuna refuses empty or reversed bounds
            raise ImgclfError(f"search space entry {line!r} is invalid: {exc}") from None
    return space


def owner() -> str:
    """Which machine and process ran a trial, for people reading the study."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_counts(study: optuna.Study) -> Counter:
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def masked(url: str | None) -> str:
    """A storage URL as logs and files may show it: without its password."""
    if url is None:
        return "memory"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy reads: hide where a password would sit
        return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)


def storage_url(url: str) -> str:
    """Create the folder of a SQLite file so that the first sweep just works."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


# The warnings Optuna gives about the heartbeat API this sweeper uses on purpose, as
# warnings.filterwarnings matches them (category, and a regular expression matched at the start of
# the message); each is silenced only around the call that gives it, any other warning shows.
# RDBStorage(heartbeat_interval=...) (optuna/_experimental.py, warn_experimental_argument):
EXPERIMENTAL_HEARTBEAT = (ExperimentalWarning, r"Argument ``heartbeat_interval`` is an experimental feature")
# RetryHeartbeatStaleTrialCallback() and fail_stale_trials() (experimental_class, experimental_func):
EXPERIMENTAL_RETRY = (ExperimentalWarning, r"RetryHeartbeatStaleTrialCallback is experimental")
EXPERIMENTAL_FAIL_STALE = (ExperimentalWarning, r"([\w.]+\.)?fail_stale_trials is experimental")
# Study.ask() on a storage that beats, outside Study.optimize (optuna/study/study.py): Heartbeat
# beats for the trials this sweeper asks for, as Study.optimize would.
ASKED_OUTSIDE_OPTIMIZE = (UserWarning, r"Heartbeat of storage is supposed to be used with Study\.optimize")


@contextlib.contextmanager
def expected_warnings(*expected: tuple[type[Warning], str]) -> Iterator[None]:
    """Ignore the ``expected`` warnings (category, message pattern) of the calls inside."""
    with warnings.catch_warnings():
        for category, message in expected:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def open_study(
    name: str | None,
    url: str | None,
    direction: str,
    heartbeat_interval: int,
    grace_period: int,
    max_retry: int,
    attempts: int = 5,
) -> tuple[optuna.Study, RDBStorage | None]:
    """Create or load the study, its storage beating for running trials (none in memory).

    Processes starting together on a new database race to create its tables; the loser retries
    and finds them made.
    """
    attempt = 1
    while True:
        try:
            storage = None
            if url is not None:
                with expected_warnings(EXPERIMENTAL_HEARTBEAT, EXPERIMENTAL_RETRY):
                    storage = RDBStorage(
                        storage_url(url),
                        heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period,
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                    )
            study = optuna.create_study(
                study_name=name, storage=storage, direction=direction, load_if_exists=True
            )
            return study, storage
        except ImportError as exc:  # no driver for the URL's database
            raise ImgclfError(
                f"cannot open the study in {masked(url)}: {exc} (PostgreSQL: pip install -e '.[postgres]')"
            ) from None
        except ArgumentError as exc:
            raise ImgclfError(f"hydra.sweeper.storage {masked(url)!r} is not a database URL: {exc}") from None
        except SQLAlchemyError as exc:
            if attempt == attempts:
                raise ImgclfError(f"cannot open the study in {masked(url)}: {exc}") from None
            log.info("Storage busy (%s); retrying", type(exc).__name__)
            time.sleep(0.5 + random.random())
            attempt += 1


def fail_interrupted_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose heartbeat went stale (their process was killed, wherever it
    ran); the storage's callback queues them again. Returns their numbers."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    with expected_warnings(EXPERIMENTAL_FAIL_STALE):
        fail_stale_trials(study)
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return sorted(t.number for t in failed if t.number in running)


class Heartbeat:
    """Record the heartbeats of this sweep's running trials, in a thread, while it runs: the one
    place the sweeper works below Optuna's study API.

    Optuna beats only inside ``Study.optimize``, for the one trial it runs
    (``optuna/study/_optimize.py``, ``_run_trial``, through the private
    ``optuna.storages._heartbeat.get_heartbeat_thread``); no public helper beats for a trial from
    ``Study.ask``. This sweeper hands batches of asked trials to Hydra's launcher, so it beats for
    them itself through the storage's heartbeat methods (``RDBStorage.record_heartbeat``,
    ``get_heartbeat_interval``), naming each trial by its storage id (``get_study_id_from_name``,
    ``get_trial_id_from_study_id_trial_number``: a ``Study`` and a ``Trial`` keep their ids
    private). Failing the trials whose beat went stale and queueing them again stay Optuna's
    (:func:`fail_interrupted_trials`).

    :meth:`ask` records a trial's first beat at once: a trial without any is never found stale.
    Leaving stops the thread without waiting for the next beat.
    """

    def __init__(self, storage: RDBStorage | None, study: optuna.Study) -> None:
        self.storage = storage
        self.study_id = None if storage is None else storage.get_study_id_from_name(study.study_name)
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def record(self, trial_id: int) -> None:
        assert self.storage is not None
        try:
            self.storage.record_heartbeat(trial_id)
        except Exception as exc:  # a busy or unreachable database: keep the trial running
            log.warning("Could not record a heartbeat (%s); the next beat tries again", exc)

    def ask(self, study: optuna.Study, distributions: dict[str, BaseDistribution]) -> optuna.Trial:
        """``study.ask(distributions)``, the trial beating from now until :meth:`forget`."""
        with expected_warnings(ASKED_OUTSIDE_OPTIMIZE):
            trial = study.ask(distributions)
        if self.storage is not None:
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            self.record(trial_id)
            with self.lock:
                self.trial_ids.add(trial_id)
        return trial

    def forget(self) -> None:
        with self.lock:
            self.trial_ids.clear()

    def run(self, interval: float) -> None:
        while not self.stop.wait(interval):
            with self.lock:
                trial_ids = sorted(self.trial_ids)
            for trial_id in trial_ids:
                self.record(trial_id)

    def __enter__(self) -> Heartbeat:
        if self.storage is not None:
            interval = self.storage.get_heartbeat_interval()
            self.thread = threading.Thread(target=self.run, args=(interval,), name="heartbeat", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


# The samplers a sweep config may name (not GridSampler: it needs the space up front).
SAMPLERS: dict[str, type] = {
    f"optuna.samplers.{name}": getattr(optuna.samplers, name)
    for name in ("TPESampler", "GPSampler", "RandomSampler", "CmaEsSampler", "QMCSampler")
}


def make_sampler(config: DictConfig, offset: int) -> optuna.samplers.BaseSampler:
    """The configured sampler, its seed moved on by ``offset`` (the trials already in the study)."""
    settings = OmegaConf.to_container(config, resolve=True)
    if settings.get("seed") is not None:
        settings["seed"] = int(settings["seed"]) + offset
    try:
        return build(settings, SAMPLERS, "hydra.sweeper.sampler")
    except ImgclfError:
        raise
    except Exception as exc:  # Hydra wraps a bad argument in its own exception
        raise ImgclfError(f"hydra.sweeper.sampler cannot be built: {exc}") from None


class ResumableOptunaSweeper(Sweeper):
    """Hydra sweeper plugin: Optuna's ask-and-tell loop around Hydra's launcher."""

    def __init__(
        self,
        sampler: DictConfig,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None,
        params: DictConfig | None,
        heartbeat_interval: int,
        grace_period: int,
        max_retry: int,
    ) -> None:
        self.sampler_config = sampler
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.custom_search_space = custom_search_space
        self.params = params or {}
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.max_retry = max_retry
        # the sweep's own search space: parameters and their distributions (run() fills it)
        self.space: dict[str, BaseDistribution] = {}
        self.swept: list[str] = []  # the keys every trial of it holds (not custom_search_space's)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = config.hydra.sweep.dir
        self.metric = str(config.get("optimized_metric", "value"))
        self.job_idx = 0

    def sweep(self, arguments: list[str]) -> None:
        # Hydra calls the sweeper as the entry point of a multirun: user errors end here.
        try:
            self.run(arguments)
        except ImgclfError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    def check_settings(self) -> str:
        """The one direction; bad settings are refused before the storage is touched."""
        directions = self.direction if isinstance(self.direction, (list, tuple)) else [self.direction]
        directions = [str(d.name if isinstance(d, Direction) else d) for d in directions]
        if len(directions) != 1 or directions[0] not in ("maximize", "minimize"):
            raise ImgclfError(
                f"hydra.sweeper.direction {directions} is not supported: train.py returns one metric "
                f"({self.metric}), so give maximize or minimize"
            )
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ImgclfError(f"hydra.sweeper.max_failure_rate {self.max_failure_rate} is not in [0, 1]")
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise ImgclfError(
                f"hydra.sweeper.heartbeat_interval ({self.heartbeat_interval}) must be at least 1 and "
                f"hydra.sweeper.grace_period ({self.grace_period}) longer, or running trials look "
                "interrupted between two beats"
            )
        if self.max_retry < 0:
            raise ImgclfError(f"hydra.sweeper.max_retry {self.max_retry} is negative")
        return directions[0]

    def search_space_extender(self) -> Callable[[DictConfig, optuna.Trial], None] | None:
        if not self.custom_search_space:
            return None
        name = str(self.custom_search_space)
        check_custom_search_space(name)
        try:
            function = get_method(name)
        except Exception as exc:  # not importable, or not a function
            raise ImgclfError(f"hydra.sweeper.custom_search_space cannot be loaded: {exc}") from None
        # defined in the module it is named from, not reached through it (search_spaces.subprocess.run)
        module = name.rsplit(".", 1)[0]
        if not inspect.isfunction(function) or function.__module__ != module:
            raise ImgclfError(
                f"hydra.sweeper.custom_search_space={name} is not a function defined in {module}; {OWN_CODE}"
            )
        return function

    def run(self, arguments: list[str]) -> None:
        direction = self.check_settings()
        lines = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        space = parse_search_space(lines, self.config, self.hydra_context.config_loader.get_group_options)
        extend = self.search_space_extender()
        # What the best trial may hold: a shared study's trials are data, written by anyone.
        self.space = dict(space.distributions)
        self.swept = list(space.distributions)
        if extend is not None:
            self.learn(probe_trial(space, extend, self.config))
        make_sampler(self.sampler_config, offset=0)
        study, storage = open_study(
            self.study_name,
            self.storage,
            direction,
            self.heartbeat_interval,
            self.grace_period,
            self.max_retry,
        )
        interrupted = fail_interrupted_trials(study)
        study.sampler = make_sampler(self.sampler_config, offset=len(study.trials))
        counts = trial_counts(study)
        log.info(
            "Study %r in %s holds %d trials (%d complete, %d failed%s); target %d",
            study.study_name,
            masked(self.storage),
            sum(counts[s] for s in TrialState if s != TrialState.WAITING),
            counts[TrialState.COMPLETE],
            counts[TrialState.FAIL],
            f", interrupted trials {interrupted} marked failed and queued again (max_retry={self.max_retry})"
            if interrupted
            else "",
            self.n_trials,
        )
        if counts[TrialState.RUNNING]:
            log.info(
                "%d trials are running elsewhere, or were interrupted less than %d s ago: those are "
                "failed and queued again once their heartbeat is that old",
                counts[TrialState.RUNNING],
                self.grace_period,
            )

        with Heartbeat(storage, study) as heartbeat:
            self.optimize(study, space, extend, heartbeat)
        self.finish(study, direction)

    def optimize(
        self,
        study: optuna.Study,
        space: SearchSpace,
        extend: Callable[[DictConfig, optuna.Trial], None] | None,
        heartbeat: Heartbeat,
    ) -> None:
        """Ask for batches of ``n_jobs`` trials and launch them until the study holds ``n_trials``."""
        failures = 0
        waiting = False
        while True:
            fail_interrupted_trials(study)  # others' killed trials, found while this sweep runs
            counts = trial_counts(study)
            remaining = self.n_trials - sum(
                counts[s] for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            )
            if remaining <= 0 and counts[TrialState.RUNNING]:
                # Part of the study's n_trials is running elsewhere, or was killed less than
                # grace_period s ago (rerun at once after Ctrl+C): wait until those finish, or go
                # stale and are queued again here, so that the best trial is chosen among them all.
                if not waiting:
                    log.info(
                        "Waiting for %d running trials (elsewhere, or interrupted less than %d s ago; "
                        "Ctrl+C stops waiting)",
                        counts[TrialState.RUNNING],
                        self.grace_period,
                    )
                    waiting = True
                time.sleep(max(1.0, min(self.heartbeat_interval, self.grace_period) / 2))
                continue
            waiting = False
            if remaining <= 0:
                break
            if failures >= 2 * self.n_trials:  # most of the space crashes: say so, don't spin
                log.error(
                    "Stopping: %d trials failed in this run; see their logs in %s", failures, self.sweep_dir
                )
                break
            trials = [self.ask(study, space, extend, heartbeat) for _ in range(min(self.n_jobs, remaining))]
            overrides = [space.overrides(trial.params) for trial in trials]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            heartbeat.forget()
            self.job_idx += len(returns)
            failed = sum(not self.record(study, trial, ret) for trial, ret in zip(trials, returns))
            failures += failed
            if failed / len(trials) > self.max_failure_rate:
                raise ImgclfError(
                    f"{failed} of the {len(trials)} trials of the last batch failed, more than "
                    f"hydra.sweeper.max_failure_rate={self.max_failure_rate}; "
                    f"see their logs in {self.sweep_dir}"
                )

    def ask(
        self,
        study: optuna.Study,
        space: SearchSpace,
        extend: Callable[[DictConfig, optuna.Trial], None] | None,
        heartbeat: Heartbeat,
    ) -> optuna.Trial:
        trial = heartbeat.ask(study, space.distributions)
        # Set after the first heartbeat: a trial with an owner can be found stale when it is killed.
        trial.set_user_attr(OWNER, owner())
        if extend is not None:
            extend(self.config, trial)
            self.learn(trial)
        return trial

    def learn(self, trial: optuna.Trial) -> None:
        """Add the parameters ``custom_search_space`` suggested to the sweep's own space."""
        for key, suggested in trial.distributions.items():
            if key not in self.space and space_key_problem(key) is None:
                self.space[key] = suggested

    def record(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> bool:
        try:
            if ret.return_value is None:
                raise ValueError(f"train.py returned no {self.metric} (optimized_metric)")
            value = float(ret.return_value)
            if not math.isfinite(value):
                raise ValueError(f"the trial returned {value}")
        except Exception as exc:  # whatever the trial raised: record it, keep sweeping
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            log.warning("Trial %d failed: %s", trial.number, exc)
            return False
        frozen = study.tell(trial, value, skip_if_finished=True)
        if frozen.state != TrialState.COMPLETE:
            log.warning(
                "Trial %d (%s %s) had been taken for interrupted by another sweep (no heartbeat for "
                "%d s) and queued again; this result is not kept",
                trial.number,
                self.metric,
                value,
                self.grace_period,
            )
            return True
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
        )
        log.info("Trial %d: %s -> %s %s", trial.number, params, self.metric, value)
        return True

    def finish(self, study: optuna.Study, direction: str) -> None:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            raise ImgclfError(
                f"no trial of study {study.study_name!r} completed; see the trial logs in {self.sweep_dir}"
            )
        ranked = in_space(
            sorted(complete, key=lambda t: t.value, reverse=direction == "maximize"),
            self.space,
            required=self.swept,
        )
        if not ranked:
            raise ImgclfError(
                f"no complete trial of study {study.study_name!r} lies inside this sweep's search space; "
                "run more trials (raise hydra.sweeper.n_trials) or sweep the space they were drawn from"
            )
        show_best_trials(ranked[:5], metric=self.metric)
        best = ranked[0]
        path = write_best_hparams(
            Path(self.config.paths.model_dir) / BEST_HPARAMS,
            best.params,
            self.space,
            metric=self.metric,
            value=float(best.value),
            trial=best.number,
            study=study.study_name,
            storage=masked(self.storage),
            n_trials=len(study.trials),
        )
        counts = trial_counts(study)
        running = f", {counts[TrialState.RUNNING]} running" if counts[TrialState.RUNNING] else ""
        print(
            f"Study {study.study_name!r} now holds {len(study.trials)} trials "
            f"({counts[TrialState.COMPLETE]} complete, {counts[TrialState.FAIL]} failed{running}). "
            f"Best {self.metric} {best.value:.4f} (trial {best.number}); parameters written to {path}"
        )
        OmegaConf.save(
            OmegaConf.create({"name": "optuna", "best_params": best.params, "best_value": best.value}),
            Path(self.sweep_dir) / "optimization_results.yaml",
        )


def probe_trial(
    space: SearchSpace, extend: Callable[[DictConfig, optuna.Trial], None], config: DictConfig
) -> optuna.Trial:
    """A trial of a throwaway in-memory study, extended by ``custom_search_space``: which
    parameters it suggests, even when this run asks no trial of its own."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
    try:
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler()).ask(space.distributions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    extend(config, trial)
    return trial


def in_space(
    trials: list[FrozenTrial], space: dict[str, BaseDistribution], required: list[str]
) -> list[FrozenTrial]:
    """The trials whose parameters this sweep could have drawn, ``required`` among them, in order;
    the others (another search space's, or crafted in a shared study) are left out with a warning."""
    kept, left_out = [], []
    for trial in trials:
        missing = [key for key in required if key not in trial.params]
        problem = outside_space(trial.params, space) or (f"no {', '.join(missing)}" if missing else None)
        if problem is None:
            kept.append(trial)
        else:
            left_out.append(f"trial {trial.number}: {problem}")
    if left_out:
        log.warning(
            "%d complete trials lie outside this sweep's search space and are not candidates for the "
            "best parameters (%s%s)",
            len(left_out),
            "; ".join(left_out[:3]),
            "; ..." if len(left_out) > 3 else "",
        )
    return kept


def short_names(names: list[str]) -> dict[str, str]:
    """``model.head.hidden_size`` -> ``hidden_size``, ``model/backbone`` -> ``backbone``, unless two
    parameters would then share a name."""
    last = {name: name.replace("/", ".").split(".")[-1] for name in names}
    clashes = {short for short, n in Counter(last.values()).items() if n > 1}
    return {name: name if short in clashes else short for name, short in last.items()}


def show_best_trials(trials: list[FrozenTrial], metric: str) -> None:
    names = sorted({k for t in trials for k in t.params})

    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value if value is not None else "")

    rows = [[str(t.number), f"{t.value:.4f}"] + [cell(t.params.get(n)) for n in names] for t in trials]
    # On a narrow terminal the headers fold, the values never.
    headers = ["trial", metric] + list(short_names(names).values())
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
