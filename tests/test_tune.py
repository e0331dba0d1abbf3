"""Hyperparameter search for real: Optuna sweeps through scripts/train.py, SQLite and PostgreSQL."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import pytorch_lightning as pl
import torch
import yaml
from conftest import FAST_TRAIN, REPO_ROOT, backbone_config, compose, require, run_script, search_spaces_env
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from torch.utils.data import DataLoader, TensorDataset

from imgclf.composition import settings, with_best_hparams
from imgclf.config import build
from imgclf.errors import ImgclfError
from imgclf.models.backbones import fetch_weights
from imgclf.testing.postgres import postgres_bin, postgres_server
from imgclf.testing.processes import start_script
from imgclf.training.module import fused_if_available
from imgclf.training.train import train
from imgclf.tuning.best_hparams import BEST_HPARAMS, best_hparams_overrides, write_best_hparams

# Trials stay small: 1-2 epochs of a frozen backbone on cached features, no stage 2.
SMALL_SEARCH = [
    "trainer.max_epochs=int(interval(1,2))",
    "model.fine_tune=false",
    "model.head.hidden_size=int(interval(6,64))",
]


# Every trial trains a head on the frozen features of a real ImageNet backbone: EfficientNet-Lite0,
# whose weights the installed package ships (so the searched figures mean what a user gets).
BACKBONE = "model/backbone=efficientnet_lite0"


@pytest.fixture(scope="module")
def backbone_weights() -> Path:
    """EfficientNet-Lite0's ImageNet weights, as the installed package ships them."""
    return fetch_weights(backbone_config("efficientnet_lite0"), allow_download=False)


def sweep_args(root: Path, model_dir: Path, weights: Path, n_trials: int, *extra: str) -> list[str]:
    return [
        "-m",
        "hparams_search=optuna",
        f"hydra.sweeper.n_trials={n_trials}",
        f"data.root={root}",
        f"paths.model_dir={model_dir}",
        BACKBONE,
        f"model.weights_path={weights}",
        "data.image_size=75",
        "data.num_workers=0",
        "data.augment=false",
        f"paths.cache_dir={model_dir / 'cache'}",
        f"paths.log_dir={model_dir / 'logs'}",
        "callbacks=none",
        *SMALL_SEARCH,
        *extra,
    ]


def study(model_dir: Path, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name="imgclf", storage=storage or f"sqlite:///{model_dir / 'optuna.db'}")


def test_sweep_writes_best_hparams_that_train_applies(tmp_path, small_digits_root, backbone_weights):
    model_dir = tmp_path / "model"
    # A config group is a categorical parameter; custom_search_space adds one define-by-run.
    extra = ["logger=choice(csv,none)", "hydra.sweeper.custom_search_space=search_spaces.batch_size"]
    result = run_script(
        "train",
        *sweep_args(small_digits_root, model_dir, backbone_weights, 3, *extra),
        env=search_spaces_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = study(model_dir).get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    best = max(trials, key=lambda t: t.value)
    document = yaml.safe_load((model_dir / "best_hparams.yaml").read_text())
    assert document["value"] == pytest.approx(best.value)
    assert document["metric"] == "val/acc"
    assert document["params"] == best.params
    # the search space is recorded beside them, the custom_search_space's parameter included
    assert set(document["space"]) == set(best.params)
    assert document["space"]["data.batch_size"]["attributes"]["choices"] == [8, 16]
    assert set(best.params) == {
        "trainer.max_epochs",
        "model.head.hidden_size",
        "model.optimizer.lr",
        "model.head.dropout",
        "model.head.num_layers",
        "model.head.activation",
        "model.class_weighting",
        "logger",
        "data.batch_size",
    }
    assert best.params["logger"] in ("csv", "none")
    assert "best trials by val/acc" in result.stdout
    # piped, the table prints whole: full headers and values, not "hidde…" and "0.00…"
    assert "hidden_size" in result.stdout and "max_epochs" in result.stdout and "logger" in result.stdout
    assert f"{best.params['model.optimizer.lr']:.3g}" in result.stdout
    assert "Trainable params" not in result.stdout + result.stderr  # no model table per trial

    # the command line wins over best_hparams.yaml, so leave the searched keys off it
    searched = ("model.optimizer.lr", "logger", "data.batch_size")
    fast = [o for o in FAST_TRAIN if not o.startswith(searched)]
    common = [
        *fast,
        f"data.root={small_digits_root}",
        f"paths.model_dir={model_dir}",
        BACKBONE,
        "model.pretrained=true",
        f"model.weights_path={backbone_weights}",
        f"paths.cache_dir={model_dir / 'cache'}",
    ]
    applied = run_script("train", *common, f"paths.log_dir={tmp_path / 'applied'}")
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert f"Using the best hyperparameters from {model_dir / 'best_hparams.yaml'}" in applied.stderr
    hparams = torch.load(model_dir / "model.ckpt", weights_only=True)["hparams"]
    assert hparams["head"]["hidden_size"] == best.params["model.head.hidden_size"]
    assert hparams["max_epochs"] == best.params["trainer.max_epochs"]
    assert hparams["optimizer"]["lr"] == pytest.approx(best.params["model.optimizer.lr"])
    assert hparams["batch_size"] == best.params["data.batch_size"]
    # the logger group's choice was applied: CSVLogger writes metrics.csv, logger=none nothing
    wrote_csv = bool(list((tmp_path / "applied").rglob("metrics.csv")))
    assert wrote_csv == (best.params["logger"] == "csv")

    defaults = run_script(
        "train",
        *common,
        f"paths.log_dir={tmp_path / 'defaults'}",
        "use_best_hparams=false",
        "trainer.max_epochs=1",
    )
    assert defaults.returncode == 0, defaults.stderr[-3000:]
    assert "Using the best hyperparameters" not in defaults.stdout + defaults.stderr
    assert torch.load(model_dir / "model.ckpt", weights_only=True)["hparams"]["head"]["hidden_size"] == 1024
    assert list((tmp_path / "defaults").rglob("metrics.csv")), "the default logger is csv"


def best_hparams_file(model_dir: Path) -> dict:
    params = {
        "model.head.hidden_size": 77,
        "model.optimizer.lr": 0.01,
        "+model.optimizer.weight_decay": 0.001,
        "logger": "tensorboard",
        "callbacks": "none",
        "model.head.activation": "tanh",
    }
    space = {
        "model.head.hidden_size": IntDistribution(6, 2048),
        "model.optimizer.lr": FloatDistribution(1e-6, 1e-2, log=True),
        "+model.optimizer.weight_decay": FloatDistribution(0.0, 0.01),
        "logger": CategoricalDistribution(["csv", "tensorboard", "none"]),
        "callbacks": CategoricalDistribution(["default", "early_stopping", "none"]),
        "model.head.activation": CategoricalDistribution(["relu", "tanh"]),
    }
    write_best_hparams(model_dir / BEST_HPARAMS, params, space, metric="val/acc", value=0.9)
    return params


def test_best_hparams_become_overrides_before_the_command_line(tmp_path):
    """The file's parameters become overrides in override grammar; a key or group the command line
    gives is left out (it wins); the file absent or use_best_hparams=false: nothing."""
    model_dir = tmp_path / "model"
    command_line = [f"paths.model_dir={model_dir}", "model.optimizer.lr=0.5", "callbacks=early_stopping"]
    cfg = compose("train", command_line, output_dir=tmp_path)
    assert best_hparams_overrides(cfg, command_line, cfg.hydra.runtime.choices).overrides == []
    best_hparams_file(model_dir)
    best = best_hparams_overrides(cfg, command_line, cfg.hydra.runtime.choices)
    assert best.overrides == [
        "model.head.hidden_size=77",
        "+model.optimizer.weight_decay=0.001",
        "logger='tensorboard'",
        "model.head.activation='tanh'",
    ]
    assert best.applied == {
        "model.head.hidden_size": 77,
        "+model.optimizer.weight_decay": 0.001,
        "logger": "tensorboard",
        "model.head.activation": "tanh",
    }
    assert "val/acc 0.9000" in best.describe("val/acc") and "use_best_hparams=false" in best.describe(None)
    off = compose("train", command_line + ["use_best_hparams=false"], output_dir=tmp_path)
    assert best_hparams_overrides(off, command_line, off.hydra.runtime.choices).overrides == []


def test_best_hparams_recompose_the_config_and_the_command_line_wins(tmp_path):
    """The entry point composes again: group choices (logger) apply, command-line keys win, and the
    library is handed resolved settings without Hydra's node."""
    model_dir = tmp_path / "model"
    best_hparams_file(model_dir)
    command_line = [f"paths.model_dir={model_dir}", "model.optimizer.lr=0.5", "callbacks=early_stopping"]
    cfg = with_best_hparams(compose("train", command_line, output_dir=tmp_path), command_line)
    assert cfg.model.head.hidden_size == 77 and cfg.model.head.activation == "tanh"
    assert cfg.model.optimizer.weight_decay == 0.001
    assert set(cfg.logger) == {"tensorboard"}, "the logger group's choice is applied"
    assert cfg.model.optimizer.lr == 0.5, "a key on the command line wins"
    assert "early_stopping" in cfg.callbacks, "a group on the command line wins"
    assert cfg.hydra.runtime.output_dir == str(tmp_path), "the run folder stays the command's"
    plain = settings(cfg)
    assert "hydra" not in plain and plain.paths.output_dir == str(tmp_path)
    assert plain.trainer.default_root_dir == str(tmp_path), "interpolations are values"

    off = compose("train", command_line + ["use_best_hparams=false"], output_dir=tmp_path)
    assert with_best_hparams(off, command_line) is off


def test_killed_sweep_resumes_the_same_study_and_retries_the_killed_trial(
    tmp_path, small_digits_root, backbone_weights
):
    model_dir = tmp_path / "model"
    grace = 2  # seconds without a heartbeat after which a RUNNING trial counts as killed
    args = sweep_args(
        small_digits_root,
        model_dir,
        backbone_weights,
        4,
        "hydra.sweeper.heartbeat_interval=1",
        f"hydra.sweeper.grace_period={grace}",
    )
    process = start_script("train", args)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and process.poll() is None:
        try:  # never create the database here: only read one the sweep has made
            trials = study(model_dir).get_trials() if (model_dir / "optuna.db").exists() else []
        except Exception:  # the sweep is still creating its tables
            trials = []
        completed = sum(t.state == TrialState.COMPLETE for t in trials)
        # a trial gets its owner after its first heartbeat
        if completed >= 2 and any(t.state == TrialState.RUNNING and t.user_attrs for t in trials):
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = study(model_dir).get_trials()
    completed_before = [t for t in before if t.state == TrialState.COMPLETE]
    (killed,) = [t for t in before if t.state == TrialState.RUNNING]
    assert 2 <= len(completed_before) < 4

    time.sleep(grace + 1)  # nothing beats for the killed trial any more; SQLite's clock has 1 s steps
    result = run_script("train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stderr + result.stdout
    assert f"holds {len(before)} trials" in output
    assert f"interrupted trials [{killed.number}] marked failed and queued again" in output
    after = study(model_dir).get_trials()
    assert [t.number for t in after[: len(before)]] == [t.number for t in before]
    assert after[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in after if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert sum(t.state == TrialState.COMPLETE for t in after) == 4
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in after)
    points = [tuple(sorted(t.params.items())) for t in after if t.state == TrialState.COMPLETE]
    assert len(set(points)) == len(points), "a resumed sweep proposed a point it had already tried"


def test_two_processes_share_a_postgresql_study(tmp_path, small_digits_root, backbone_weights):
    require(postgres_bin() is not None, "PostgreSQL server (Debian package postgresql)")
    with postgres_server() as url:
        workers = []
        for name in ("a", "b"):
            args = sweep_args(
                small_digits_root, tmp_path / name, backbone_weights, 4, f"hydra.sweeper.storage={url}"
            )
            workers.append(
                subprocess.Popen(
                    [sys.executable, "scripts/train.py", *args],
                    cwd=REPO_ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        outputs = [w.communicate(timeout=600)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
        trials = study(tmp_path, storage=url).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 4 <= len(complete) <= 5  # each process stops once the study holds 4 (one may be in flight)
    assert len({t.number for t in trials}) == len(trials)
    owners = {t.user_attrs["imgclf_owner"] for t in complete}
    assert len(owners) == 2, "both processes should have run trials of the shared study"


def frozen_backbone_cfg(weights: Path, root: Path, tmp_path: Path, model_dir: Path, *extra: str):
    """One train.py config with the ImageNet backbone frozen: what a sweep trial runs."""
    return compose(
        "train",
        FAST_TRAIN
        + [
            BACKBONE,
            "model.pretrained=true",
            f"model.weights_path={weights}",
            f"data.root={root}",
            f"paths.model_dir={model_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "save_model=false",
            *extra,
        ],
        output_dir=tmp_path,
    )


def test_feature_store_is_reused_and_invalidated(tmp_path, small_digits_root, backbone_weights, caplog):
    """A store is keyed by what its features depend on: a new head reuses it; a new image size
    or new backbone weights compute a new one beside it."""
    cache = tmp_path / "cache"

    def run(*extra: str) -> str:
        cfg = frozen_backbone_cfg(
            backbone_weights, small_digits_root, tmp_path, tmp_path / "model", "trainer.max_epochs=1", *extra
        )
        with caplog.at_level("INFO"):
            caplog.clear()
            train(cfg)
        return caplog.text

    def stores() -> int:
        return sum(1 for path in cache.iterdir() if path.is_dir())

    assert "Computing backbone features once" in run()
    assert stores() == 1
    # stage 1 keeps its best head in memory: no checkpoint of the whole network per epoch
    assert not list(tmp_path.rglob("*.ckpt"))
    assert "Reusing the feature store" in run("model.head.hidden_size=32", "model.optimizer.lr=0.01")
    assert stores() == 1
    assert "Computing backbone features once" in run("data.image_size=80")
    other_weights = tmp_path / "other.pth"
    state = torch.load(backbone_weights, weights_only=True)
    state["_conv_stem.weight"] = state["_conv_stem.weight"] * 1.01
    torch.save(state, other_weights)
    assert "Computing backbone features once" in run(f"model.weights_path={other_weights}")
    assert stores() == 3


def test_optimiser_runs_fused_unless_the_config_says_otherwise():
    head = torch.nn.Linear(8, 2)
    params = list(head.parameters())

    def fused(factory, clips=False) -> bool | None:
        return fused_if_available(factory, params, clips)(params=params).defaults.get("fused")

    assert fused(functools.partial(torch.optim.Adam, lr=1e-3)) is True
    assert not fused(functools.partial(torch.optim.Adam, lr=1e-3, fused=False))
    assert not fused(functools.partial(torch.optim.Adam, lr=1e-3, foreach=True))
    assert not fused(functools.partial(torch.optim.Adam, lr=1e-3), clips=True)
    assert not fused(functools.partial(torch.optim.RMSprop, lr=1e-3))  # has no fused kernel

    cfg = compose("train", FAST_TRAIN)
    module = build(cfg.model, num_classes=3, class_counts=[1, 1, 1])
    assert module.configure_optimizers().defaults["fused"] is True
    cfg = compose("train", FAST_TRAIN + ["+model.optimizer.fused=false"])
    module = build(cfg.model, num_classes=3, class_counts=[1, 1, 1])
    assert not module.configure_optimizers().defaults["fused"]


@pytest.mark.parametrize("clip, fused", [(None, True), (0.5, False)])
def test_a_fit_that_clips_gradients_gets_an_unfused_optimiser(tmp_path, clip, fused):
    """The module reads the fit's gradient_clip_val from its trainer (Lightning attaches it before
    configure_optimizers): Lightning cannot unscale fp16 gradients of a fused optimiser."""
    cfg = compose("train", FAST_TRAIN)
    module = build(cfg.model, num_classes=2, class_counts=[1, 1])
    data = TensorDataset(torch.randn(4, 3, 75, 75), torch.arange(4) % 2)
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        gradient_clip_val=clip,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=4))
    assert bool(trainer.optimizers[0].defaults.get("fused")) is fused


def test_cached_and_uncached_training_agree(tmp_path, digits_root, backbone_weights, record_property):
    def val_acc(cache: bool) -> float:
        cfg = frozen_backbone_cfg(
            backbone_weights,
            digits_root,
            tmp_path,
            tmp_path / str(cache),
            "trainer.max_epochs=2",
            f"features.cache={str(cache).lower()}",
        )
        return train(cfg)["val/acc"]

    cached, uncached = val_acc(True), val_acc(False)
    record_property("cached val acc", cached)
    record_property("uncached val acc", uncached)
    record_property("|cached - uncached|", abs(cached - uncached))
    # a run that saves no model (a sweep trial) leaves no checkpoints behind
    assert not list(tmp_path.rglob("*.ckpt"))
    # On EfficientNet-Lite0's ImageNet features at 75 px, 2 epochs, seed 42 (chance 0.1): cached
    # 0.905 / uncached 0.922 with AMX bf16, 0.916 / 0.922 in fp32 on AVX2 kernels.
    assert cached > 0.85 and uncached > 0.85  # the stored features carry the digits
    assert abs(cached - uncached) < 0.05


@pytest.mark.parametrize(
    "entries, message",
    [
        (["model.head.hiden_size=int(interval(8,64))"], "model.head.hiden_size is not a config key"),
        (
            ["model.optimizer.lr=tag(log,interval(0.1,0.001))"],
            "model.optimizer.lr=tag(log,interval(0.1,0.001))",
        ),
        (["model.head.dropout=interval(0.0,-0.5)"], "model.head.dropout=interval(0.0,-0.5)"),
        (["logger=choice(csv,tensorbord)"], "tensorbord is not an option of config group logger"),
        (
            ["hydra.sweeper.heartbeat_interval=10", "hydra.sweeper.grace_period=5"],
            "hydra.sweeper.grace_period (5) longer",
        ),
    ],
)
def test_bad_search_space_fails_before_any_trial(
    tmp_path, small_digits_root, backbone_weights, entries, message
):
    model_dir = tmp_path / "model"
    result = run_script("train", *sweep_args(small_digits_root, model_dir, backbone_weights, 2), *entries)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert not (model_dir / "optuna.db").exists()
    assert not (model_dir / "logs").exists() or not list((model_dir / "logs").rglob("train.log"))


def test_a_crashing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, small_digits_root, backbone_weights):
    model_dir = tmp_path / "model"
    result = run_script(
        "train",
        *sweep_args(
            small_digits_root, model_dir, backbone_weights, 2, "model.head.activation=choice(relu,sigmoidal)"
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    states = [t.state for t in study(model_dir).get_trials()]
    assert states.count(TrialState.COMPLETE) == 2
    failed = [t for t in study(model_dir).get_trials() if t.state == TrialState.FAIL]
    assert failed, "the seeded sampler is expected to propose the broken activation"
    assert all(t.params["model.head.activation"] == "sigmoidal" for t in failed)


def test_a_sweep_whose_trials_all_fail_stops(tmp_path, small_digits_root, backbone_weights):
    model_dir = tmp_path / "model"
    broken = sweep_args(small_digits_root, model_dir, backbone_weights, 1, "model.head.activation=sigmoidal")
    # max_failure_rate: a batch with more failures than that stops the sweep at once
    result = run_script("train", *broken, "hydra.sweeper.max_failure_rate=0.0")
    assert result.returncode == 2
    assert "max_failure_rate=0.0" in result.stderr and "Traceback" not in result.stderr
    assert [t.state for t in study(model_dir).get_trials()] == [TrialState.FAIL]
    # with the default (1.0) the sweep gives up after twice n_trials failures in one run
    result = run_script("train", *broken)
    assert result.returncode == 2
    assert "no trial of study 'imgclf' completed" in result.stderr
    assert [t.state for t in study(model_dir).get_trials()] == [TrialState.FAIL] * 3


@pytest.mark.parametrize(
    "content",
    [
        "params: {model.optimizer.lr: 0.01",
        "",
        "params: []",
        # keys inside their recorded search space, but not keys of train.py
        "params: {model.nope: 1}\nspace: {model.nope: {type: int, low: 0, high: 2}}",
        "params: {trainer: nope}\nspace: {trainer: {type: categorical, choices: [nope]}}",
    ],
)
def test_broken_best_hparams_is_an_error(tmp_path, content):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "best_hparams.yaml").write_text(content)
    command_line = [f"paths.model_dir={model_dir}"]
    cfg = compose("train", command_line, output_dir=tmp_path)
    with pytest.raises(ImgclfError, match="best_hparams.yaml.*use_best_hparams=false"):
        with_best_hparams(cfg, command_line)
