"""Where imgclf leans on what its libraries do rather than on their public options: Lightning's
product tip (filtered out of the logs) and Optuna's heartbeat warnings (silenced around the calls
that give them). These tests fail when the library changes, so that the workaround is changed or
removed with it."""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path

import optuna
import pytorch_lightning as pl
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.demos.boring_classes import BoringModel

from imgclf.cli.hydra_edge import LIGHTNING_INFO, _NoAdverts, quiet_lightning_tips
from imgclf.tuning.sweeper import (
    ASKED_OUTSIDE_OPTIMIZE,
    EXPERIMENTAL_FAIL_STALE,
    EXPERIMENTAL_HEARTBEAT,
    EXPERIMENTAL_RETRY,
    Heartbeat,
    fail_interrupted_trials,
    open_study,
)


def rank_zero_records(root: Path) -> list[logging.LogRecord]:
    """What Lightning's rank-zero logger lets through (after its filters) in one short fit, its
    Trainer built as training/schedule.py builds one: with a ModelCheckpoint of its own."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(LIGHTNING_INFO)
    logger.addHandler(handler)
    try:
        trainer = pl.Trainer(
            default_root_dir=root,
            max_steps=1,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            callbacks=[ModelCheckpoint(dirpath=root / "checkpoints")],  # as every fit here has its own
        )
        trainer.fit(BoringModel())
    finally:
        logger.removeHandler(handler)
    return records


def test_lightning_product_tips_are_dropped_and_nothing_else(tmp_path, monkeypatch):
    logger = logging.getLogger(LIGHTNING_INFO)
    monkeypatch.setattr(logger, "filters", [])  # as Lightning logs, before a command quiets it
    tips = [r for r in rank_zero_records(tmp_path / "plain") if "💡" in str(r.msg)]
    assert tips, "Lightning no longer logs its product tips: remove hydra_edge._NoAdverts"
    assert [(r.module, r.funcName) for r in tips] == [_NoAdverts.EMITTER], (
        "Lightning logs its tips from other functions now: update _NoAdverts"
    )
    assert not _NoAdverts().filter(tips[0]), "the tip's text changed: update _NoAdverts"

    quiet_lightning_tips()
    quiet_lightning_tips()
    assert len(logger.filters) == 1, "quieting twice adds one filter"
    kept = [str(r.msg) for r in rank_zero_records(tmp_path / "quiet")]
    assert not any("💡" in message for message in kept)
    assert any(message.startswith("GPU available") for message in kept), "Lightning's other lines stay"


def given(expected: tuple[type[Warning], str], caught: list[warnings.WarningMessage]) -> bool:
    """Whether ``caught`` holds the warning ``expected`` names, as warnings.filterwarnings matches."""
    category, message = expected
    return any(
        issubclass(w.category, category) and re.match(message, str(w.message), re.IGNORECASE) for w in caught
    )


def test_optuna_still_gives_the_heartbeat_warnings_the_sweeper_silences(tmp_path):
    """When this fails, Optuna warns differently: update the sweeper's pattern, or drop it (and its
    expected_warnings) where the call no longer warns."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage = RDBStorage(url, heartbeat_interval=1)
    assert given(EXPERIMENTAL_HEARTBEAT, caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RetryHeartbeatStaleTrialCallback(max_retry=1)
    assert given(EXPERIMENTAL_RETRY, caught)
    study = optuna.create_study(storage=storage)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.ask()
    assert given(ASKED_OUTSIDE_OPTIMIZE, caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fail_stale_trials(study)
    assert given(EXPERIMENTAL_FAIL_STALE, caught)


def test_a_trial_whose_heartbeat_stops_is_failed_and_queued_again_without_a_warning(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    grace = 3  # SQLite's clock has 1 s steps: room for a late beat
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the sweeper's calls give no warning at all
        study, storage = open_study(
            "s", url, "maximize", heartbeat_interval=1, grace_period=grace, max_retry=1
        )
        with Heartbeat(storage, study) as heartbeat:
            trial = heartbeat.ask(study, {"x": FloatDistribution(0, 1)})
            time.sleep(grace + 1)
            assert fail_interrupted_trials(study) == [], "a beating trial is not stale"
        time.sleep(grace + 2)  # the thread stopped, as if the sweep had been killed
        assert fail_interrupted_trials(study) == [trial.number]
    trials = study.get_trials()
    assert trials[trial.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.params == trial.params
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == trial.number
