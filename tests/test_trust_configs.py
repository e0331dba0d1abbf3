"""Config files, best_hparams.yaml and shared studies are data: they never name code to run, and
the storage URL's password never reaches a log or a file."""

from __future__ import annotations

import re

import optuna
import pytest
import pytorch_lightning.callbacks
import yaml
from conftest import FAST_TRAIN, REPO_ROOT, compose, require, run_script, search_spaces_env
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from imgclf.composition import with_best_hparams
from imgclf.config import build, build_all, train_targets
from imgclf.errors import ImgclfError
from imgclf.testing.postgres import postgres_bin, postgres_server
from imgclf.tuning.best_hparams import BEST_HPARAMS, read_best_hparams
from imgclf.tuning.sweeper import SAMPLERS, make_sampler, masked

HOSTILE = [
    "pytorch_lightning.cli.instantiate_class",
    "pytorch_lightning.LightningModule.load_from_checkpoint",
    "pytorch_lightning.Trainer.from_argparse_args",
    "imgclf.io.atomic_write_text",
    "subprocess.getoutput",
    "builtins.eval",
]


def test_every_target_in_conf_is_allowed():
    """The allow-list is exact, so every class conf/ names must be on it (and nothing is missed)."""
    named = {}
    for path in (REPO_ROOT / "conf").rglob("*.yaml"):
        for line in path.read_text().splitlines():
            if match := re.match(r"\s*_target_:\s*(\S+)", line):
                named[match[1]] = path.relative_to(REPO_ROOT)
    assert len(named) >= 12
    allowed = {**train_targets(), **SAMPLERS}
    assert {target: path for target, path in named.items() if target not in allowed} == {}


@pytest.mark.parametrize("target", HOSTILE)
@pytest.mark.parametrize("where", ["callbacks.x", "callbacks.x.monitor", "model.optimizer"])
def test_a_config_cannot_name_code(tmp_path, target, where):
    marker = tmp_path / "pwned"
    overrides = {
        "callbacks.x": [f"+callbacks.x._target_={target}", f"+callbacks.x.cmd='touch {marker}'"],
        # nested in an argument of an allowed class
        "callbacks.x.monitor": [
            "+callbacks.x._target_=pytorch_lightning.callbacks.EarlyStopping",
            f"+callbacks.x.monitor._target_={target}",
            f"+callbacks.x.monitor.cmd='touch {marker}'",
        ],
        "model.optimizer": [f"model.optimizer._target_={target}"],
    }[where]
    cfg = compose("train", overrides, output_dir=tmp_path)
    with pytest.raises(ImgclfError) as refused:
        if where == "model.optimizer":
            build(cfg.model, where="model", num_classes=3)
        else:
            build_all(cfg.callbacks, "callback", "callbacks")
    message = str(refused.value)
    assert message.startswith(f"{where}._target_: '{target}' is not a class a config may build")
    assert "allowed: " in message and "torch.optim: " in message and "\n" not in message
    assert not marker.exists()


def test_an_interpolation_cannot_hide_a_target(tmp_path):
    marker = tmp_path / "pwned"
    overrides = [
        "+tool=subprocess.getoutput",
        "+callbacks.x._target_=${tool}",
        f"+callbacks.x.cmd='touch {marker}'",
    ]
    cfg = compose("train", overrides, output_dir=tmp_path)
    with pytest.raises(ImgclfError, match=r"callbacks\.x\._target_: 'subprocess.getoutput'"):
        build_all(cfg.callbacks, "callback", "callbacks")
    assert not marker.exists()


def test_an_allowed_name_must_still_resolve_to_its_class(tmp_path, monkeypatch):
    """The allow-list holds classes, not only spellings: a name rebound at run time is refused."""
    cfg = compose("train", ["callbacks=early_stopping"], output_dir=tmp_path)
    impostor = type("EarlyStopping", (pytorch_lightning.callbacks.EarlyStopping,), {})
    monkeypatch.setattr(pytorch_lightning.callbacks, "EarlyStopping", impostor)
    with pytest.raises(
        ImgclfError,
        match="callbacks.early_stopping._target_: 'pytorch_lightning.callbacks.EarlyStopping' "
        "resolves to .*, not the allowed class",
    ):
        build_all(cfg.callbacks, "callback", "callbacks")


def test_the_sampler_comes_from_its_own_allow_list():
    sampler = make_sampler(OmegaConf.create({"_target_": "optuna.samplers.TPESampler", "seed": 1}), offset=2)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    for target in ["optuna.samplers.GridSampler", "pytorch_lightning.cli.instantiate_class", "builtins.eval"]:
        with pytest.raises(ImgclfError, match=rf"hydra.sweeper.sampler._target_: '{target}' is not a class"):
            make_sampler(OmegaConf.create({"_target_": target}), offset=0)


def test_train_py_refuses_a_hostile_override_in_one_line(tmp_path, small_digits_root):
    marker = tmp_path / "pwned"
    result = run_script(
        "train",
        *FAST_TRAIN,
        "debug=fast",
        f"data.root={small_digits_root}",
        f"paths.model_dir={tmp_path / 'model'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "+callbacks.x._target_=subprocess.getoutput",
        f"+callbacks.x.cmd='touch {marker}'",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "callbacks.x._target_: 'subprocess.getoutput' is not a class a config may build" in errors[0]
    assert not marker.exists()


def int_range(low: int, high: int) -> dict:
    return {"name": "IntDistribution", "attributes": {"low": low, "high": high, "log": False, "step": 1}}


def choices(*values) -> dict:
    return {"name": "CategoricalDistribution", "attributes": {"choices": list(values)}}


@pytest.mark.parametrize(
    "params, space, refusal",
    [
        # the space recorded beside the parameters cannot make a reserved key a hyperparameter
        (
            {"+callbacks.x._target_": "subprocess.getoutput", "+callbacks.x.cmd": "touch {marker}"},
            {
                "+callbacks.x._target_": choices("subprocess.getoutput"),
                "+callbacks.x.cmd": choices("touch {marker}"),
            },
            "+callbacks.x._target_ is refused: a search space may not add a reserved key",
        ),
        (
            {"model.head.hidden_size": 8, "+callbacks.x._target_": "subprocess.getoutput"},
            {"model.head.hidden_size": int_range(6, 2048)},
            "+callbacks.x._target_ is not a parameter of the search space (model.head.hidden_size)",
        ),
        (
            {"hydra.sweeper.custom_search_space": "os.system"},
            {"hydra.sweeper.custom_search_space": choices("os.system")},
            "hydra.sweeper.custom_search_space is refused: Hydra's own settings are not hyperparameters",
        ),
        ({"model.head.hidden_size": 8}, None, "no search space recorded"),
        (
            {"model.head.hidden_size": 5000},
            {"model.head.hidden_size": int_range(6, 2048)},
            "model.head.hidden_size=5000 is outside its search space",
        ),
        (
            {"model.head.hidden_size": 8.0},
            {"model.head.hidden_size": int_range(6, 2048)},
            "model.head.hidden_size=8.0 is outside its search space",
        ),
        ({"model.fine_tune": 1}, {"model.fine_tune": choices(True, False)}, "model.fine_tune=1 is outside"),
        (
            {"model.optimizer.lr": 0.001},
            {
                "model.optimizer.lr": {
                    "name": "FloatDistribution",
                    "attributes": {"low": -1.0, "high": 0.1, "log": True},
                }
            },
            "the search space of model.optimizer.lr is invalid",
        ),
    ],
)
def test_training_applies_only_parameters_inside_the_recorded_space(
    tmp_path, small_digits_root, params, space, refusal
):
    marker = tmp_path / "pwned"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    document = {"metric": "val/acc", "value": 1.0, "params": params} | ({"space": space} if space else {})
    text = yaml.safe_dump(document).replace("{marker}", str(marker))
    (model_dir / BEST_HPARAMS).write_text(text)
    command_line = FAST_TRAIN + [
        "debug=fast",
        f"data.root={small_digits_root}",
        f"paths.model_dir={model_dir}",
    ]
    cfg = compose("train", command_line, output_dir=tmp_path)
    with pytest.raises(ImgclfError) as refused:  # where `imgclf train` applies the file
        with_best_hparams(cfg, command_line)
    message = str(refused.value)
    assert message.startswith(f"{model_dir / BEST_HPARAMS}: ")
    assert refusal.replace("{marker}", str(marker)) in message and "use_best_hparams=false" in message
    assert not marker.exists()


def tiny_sweep(root, model_dir, n_trials: int, *extra: str) -> list[str]:
    """A from-scratch sweep of a small network on three digit classes: trials of two batches."""
    return [
        "-m",
        "hparams_search=optuna",
        f"hydra.sweeper.n_trials={n_trials}",
        f"data.root={root}",
        f"paths.model_dir={model_dir}",
        f"paths.log_dir={model_dir / 'logs'}",
        "model/backbone=mobilenet_v3_large",
        "model.pretrained=false",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "data.image_size=75",
        "data.num_workers=0",
        "data.augment=false",
        "callbacks=none",
        "logger=none",
        "trainer.max_epochs=1",
        "model.fine_tune=false",
        "model.head.hidden_size=int(interval(6,16))",
        *extra,
    ]


def test_a_crafted_trial_in_a_shared_study_never_becomes_best_hparams(tmp_path, small_digits_root):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    marker = tmp_path / "pwned"
    shared = optuna.create_study(study_name="imgclf", storage=f"sqlite:///{model_dir / 'optuna.db'}")
    # Better than any real trial: a reserved key added, and a key of the space out of its range.
    shared.add_trial(
        create_trial(
            params={"+callbacks.x._target_": "subprocess.getoutput", "+callbacks.x.cmd": f"touch {marker}"},
            distributions={
                "+callbacks.x._target_": CategoricalDistribution(["subprocess.getoutput"]),
                "+callbacks.x.cmd": CategoricalDistribution([f"touch {marker}"]),
            },
            value=1.0,
        )
    )
    in_space = {
        "model.head.hidden_size": (4096, IntDistribution(1, 10000)),  # the sweep's is 6-16
        "model.optimizer.lr": (1e-3, FloatDistribution(1e-6, 1e-2, log=True)),
        "model.head.dropout": (0.1, FloatDistribution(0.0, 0.9)),
        "model.head.num_layers": (1, IntDistribution(1, 3)),
        "model.head.activation": ("relu", CategoricalDistribution(["relu", "tanh"])),
        "model.class_weighting": (False, CategoricalDistribution([True, False])),
    }
    shared.add_trial(
        create_trial(
            params={key: value for key, (value, _) in in_space.items()},
            distributions={key: distribution for key, (_, distribution) in in_space.items()},
            value=0.99,
        )
    )
    shared.add_trial(create_trial(params={}, distributions={}, value=0.98))  # would write nothing
    # custom_search_space's define-by-run parameter belongs to the sweep's space too
    custom = "hydra.sweeper.custom_search_space=search_spaces.batch_size"
    result = run_script(
        "train", *tiny_sweep(small_digits_root, model_dir, 4, custom), env=search_spaces_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "3 complete trials lie outside this sweep's search space" in output
    assert "trial 0: +callbacks.x._target_ is not a parameter of the search space" in output
    assert "trial 1: model.head.hidden_size=4096 is outside its search space" in output
    assert "trial 2: no model.head.hidden_size" in output
    (real,) = [t for t in shared.get_trials(states=(TrialState.COMPLETE,)) if t.number == 3]
    document = yaml.safe_load((model_dir / BEST_HPARAMS).read_text())
    assert document["trial"] == 3 and document["params"] == real.params
    assert "callbacks" not in (model_dir / BEST_HPARAMS).read_text()
    assert set(document["space"]) == set(real.params) and "data.batch_size" in real.params
    read_best_hparams(model_dir / BEST_HPARAMS)  # what the sweeper writes, train.py reads
    results = yaml.safe_load(next((model_dir / "logs").rglob("optimization_results.yaml")).read_text())
    assert results["best_params"] == real.params
    assert not marker.exists()


@pytest.mark.parametrize(
    "url, shown",
    [
        (
            "postgresql://imgclf:S3cret@db.example:5432/optuna",
            "postgresql://imgclf:***@db.example:5432/optuna",
        ),
        ("postgresql+psycopg://imgclf:S3cret@db/optuna", "postgresql+psycopg://imgclf:***@db/optuna"),
        ("sqlite:///data/optuna.db", "sqlite:///data/optuna.db"),
        # not a URL SQLAlchemy parses: what sits where a password would is hidden all the same
        ("postgresql://imgclf:S3cret@db:port/optuna", "postgresql://imgclf:***@db:port/optuna"),
    ],
)
def test_storage_urls_are_shown_without_their_password(url, shown):
    assert masked(url) == shown


def test_the_storage_password_reaches_no_log_or_file(tmp_path, small_digits_root):
    """A real sweep on PostgreSQL with a password in the URL, given through the environment as the
    README advises (Hydra records command-line overrides in its run folders)."""
    require(postgres_bin() is not None, "PostgreSQL server (Debian package postgresql)")
    model_dir = tmp_path / "model"
    password = "Pa55-w0rd-never-shown"
    with postgres_server() as url:  # trust authentication: the password is carried, not needed
        secret_url = url.replace("postgres@", f"postgres:{password}@")
        result = run_script(
            "train",
            *tiny_sweep(
                small_digits_root, model_dir, 1, "hydra.sweeper.storage=${oc.env:IMGCLF_TEST_STORAGE}"
            ),
            env={"IMGCLF_TEST_STORAGE": secret_url},
        )
    assert result.returncode == 0, result.stderr[-3000:]
    document = yaml.safe_load((model_dir / BEST_HPARAMS).read_text())
    assert document["storage"] == url.replace("postgres@", "postgres:***@")
    output = result.stdout + result.stderr
    assert f"in {document['storage']} holds 0 trials" in output
    assert password not in output
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 5  # best_hparams.yaml, the logs, Hydra's records of the run
    assert [p for p in written if password.encode() in p.read_bytes()] == []


def test_a_search_space_cannot_add_a_reserved_key(tmp_path, small_digits_root):
    model_dir = tmp_path / "model"
    marker = tmp_path / "pwned"
    hostile = ["+callbacks.x._target_=choice(subprocess.getoutput)", f"+callbacks.x.cmd='touch {marker}'"]
    result = run_script("train", *tiny_sweep(small_digits_root, model_dir, 1, *hostile))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "a search space may not add a reserved key" in result.stderr
    assert not (model_dir / "optuna.db").exists() and not marker.exists()


@pytest.mark.parametrize(
    "function, refusal",
    [
        # `this` prints the Zen of Python when imported: the refusal comes before any import
        ("this.s", "names a module of the Python installation"),
        ("imgclf.io.atomic_write_text", "names imgclf's own code"),
        ("os.system", "names a built-in module"),
        # the user's own module, but a function it merely imported
        ("search_spaces.optuna.create_study", "is not a function defined in search_spaces.optuna"),
    ],
)
def test_the_custom_search_space_must_be_the_users_own_function(
    tmp_path, small_digits_root, function, refusal
):
    model_dir = tmp_path / "model"
    extra = f"hydra.sweeper.custom_search_space={function}"
    result = run_script("train", *tiny_sweep(small_digits_root, model_dir, 1, extra), env=search_spaces_env())
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and refusal in errors[0], result.stderr
    assert "of your own code" in errors[0]
    assert "Beautiful is better than ugly" not in result.stdout + result.stderr
    assert not (model_dir / "optuna.db").exists()
