"""Every entry point's config composes, with the contract's keys and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT, compose, run_script
from omegaconf import OmegaConf

from imgclf.config import build

CONTRACT_DEFAULTS = {
    "data.root": "data/image_dataset",
    "data.image_size": 299,
    "data.batch_size": 20,
    "data.augment": True,
    "model.pretrained": True,
    "model.head.hidden_size": 1024,
    "model.head.num_layers": 1,
    "model.head.dropout": 0.0,
    "model.head.activation": "relu",
    "model.optimizer.lr": 1e-4,
    "model.fine_tune": False,
    "model.class_weighting": False,
    "trainer.max_epochs": 5,
    "paths.model_dir": "data/trained_model",
    "seed": 42,
}


def test_train_defaults_match_the_contract(tmp_path):
    cfg = compose("train", output_dir=tmp_path)
    for key, expected in CONTRACT_DEFAULTS.items():
        assert OmegaConf.select(cfg, key) == expected, key
    assert cfg.model.optimizer._partial_ is True
    assert cfg.paths.output_dir == str(tmp_path)


def test_contract_keys_accept_overrides(tmp_path):
    overrides = [
        "data.root=/x",
        "data.image_size=128",
        "data.batch_size=8",
        "data.augment=false",
        "model.pretrained=false",
        "model.head.hidden_size=64",
        "model.head.num_layers=2",
        "model.head.dropout=0.5",
        "model.head.activation=tanh",
        "model.optimizer.lr=0.01",
        "model.fine_tune=true",
        "model.class_weighting=true",
        "trainer.max_epochs=2",
        "paths.model_dir=/m",
        "seed=7",
    ]
    cfg = compose("train", overrides, output_dir=tmp_path)
    for override in overrides:
        key, value = override.split("=")
        assert str(OmegaConf.select(cfg, key)).lower() == value.lower(), key


@pytest.mark.parametrize("experiment", ["digits", "hockey"])
def test_experiments_compose(tmp_path, experiment):
    cfg = compose("train", [f"+experiment={experiment}"], output_dir=tmp_path)
    assert cfg.data.root.startswith("data/")
    assert cfg.paths.model_dir != "data/trained_model"


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp", "ddp_cpu"])
def test_trainer_configs_compose(tmp_path, trainer):
    cfg = compose("train", [f"trainer={trainer}"], output_dir=tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    assert cfg.trainer.max_epochs == 5


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "many", "none"])
def test_loggers_instantiate(tmp_path, logger):
    cfg = compose("train", [f"logger={logger}"], output_dir=tmp_path)
    loggers = [build(conf) for conf in cfg.logger.values()]
    assert len(loggers) == {"csv": 1, "tensorboard": 1, "many": 2, "none": 0}[logger]


def test_checkpointing_and_the_data_module_instantiate_from_their_own_config(tmp_path, small_digits_root):
    cfg = compose("train", [f"data.root={small_digits_root}", "paths.model_dir=/m"], output_dir=tmp_path)
    checkpoint = build(cfg.checkpoint)
    assert type(checkpoint).__name__ == "ModelCheckpoint" and checkpoint.monitor == cfg.optimized_metric
    assert checkpoint.dirpath == "/m/checkpoints"
    data = build(cfg.data)
    assert data.scan() == ["0", "1", "7"]
    assert data.preprocessing["crop"] == 299 and data.preprocessing["resize"] == 342


@pytest.mark.parametrize("script", ["train", "eval", "classify", "review", "scrape", "pipeline", "export"])
def test_scripts_start_without_hydra_warnings(script):
    """Hydra 1.4 deprecates ``version_base`` and warns whenever a script passes it."""
    result = run_script(script, "--cfg", "job")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Warning" not in result.stderr and "version_base" not in result.stderr


@pytest.mark.parametrize(
    "command", ["train", "eval", "classify", "review", "scrape", "pipeline", "export", "serve"]
)
def test_the_imgclf_command_composes_what_the_script_composes(command, tmp_path):
    """``imgclf <command>`` (the console script) and ``python scripts/<command>.py`` (``serve.py``)
    are one function: the same config from the same overrides, wherever the command runs from."""
    import subprocess
    import sys

    script = "serve.py" if command == "serve" else f"scripts/{command}.py"
    overrides = ["--cfg", "job", "seed=7"] if command in ("train", "pipeline") else ["--cfg", "job"]
    by_script = subprocess.run(
        [sys.executable, script, *overrides], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    imgclf = Path(sys.executable).with_name("imgclf")
    by_command = subprocess.run(
        [str(imgclf), command, *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert by_script.returncode == 0 and by_command.returncode == 0, by_command.stderr[-2000:]
    assert by_command.stdout == by_script.stdout and f"task_name: {command}" in by_command.stdout


def test_the_imgclf_command_lists_its_commands_and_refuses_others():
    import subprocess
    import sys

    listing = subprocess.run([sys.executable, "-m", "imgclf"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0
    for command in ("scrape", "review", "train", "eval", "export", "classify", "serve", "pipeline"):
        assert f"  {command} " in listing.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "imgclf", "trian"], capture_output=True, text=True, timeout=120
    )
    assert wrong.returncode == 2 and "no command 'trian'" in wrong.stderr and "  train " in wrong.stderr


def test_the_configs_are_found_by_variable_clone_or_working_directory(tmp_path, monkeypatch, capsys):
    """$IMGCLF_CONF_DIR comes first, then the clone's conf/, then ./conf (the Docker image's
    layout); none of them: one line naming where it looked, not a traceback."""
    import shutil

    from imgclf.composition import conf_dir, first_conf_dir

    assert conf_dir() == REPO_ROOT / "conf"
    mine = tmp_path / "my_conf"
    shutil.copytree(REPO_ROOT / "conf", mine)
    monkeypatch.setenv("IMGCLF_CONF_DIR", str(mine))
    assert conf_dir() == mine
    empty, elsewhere = tmp_path / "empty", tmp_path / "elsewhere" / "conf"
    empty.mkdir()
    assert first_conf_dir([empty, mine]) == mine
    with pytest.raises(SystemExit) as exited:
        first_conf_dir([empty, elsewhere])
    assert exited.value.code == 2
    message = capsys.readouterr().err
    assert f"not in {empty}, {elsewhere}; run from a clone" in message and "IMGCLF_CONF_DIR" in message


def test_callbacks_instantiate(tmp_path):
    cfg = compose("train", ["callbacks=early_stopping"], output_dir=tmp_path)
    names = sorted(type(build(conf)).__name__ for conf in cfg.callbacks.values())
    assert names == ["EarlyStopping", "LearningRateMonitor", "RichModelSummary", "RichProgressBar"]


def test_eval_and_classify_compose(tmp_path):
    cfg = compose("eval", ["split=val"], output_dir=tmp_path)
    assert cfg.ckpt_path == "data/trained_model/model.ckpt"
    assert cfg.report_dir == "data/trained_model/eval_val"
    cfg = compose("classify", ["img=a.jpg", "paths.model_dir=/m"], output_dir=tmp_path)
    assert cfg.ckpt_path == "/m/model.ckpt"
    cfg = compose("classify", ["img=[a.jpg,b.jpg]"], output_dir=tmp_path)
    assert list(cfg.img) == ["a.jpg", "b.jpg"]
