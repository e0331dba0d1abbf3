"""Every command's settings are typed (imgclf.settings.typed): a wrong type, an unknown key or a
value out of range stops the command before any work, naming the key; every shipped config
composes into its settings class."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO_ROOT, compose, run_script
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from imgclf.errors import ImgclfError
from imgclf.inference.settings import ClassifySettings, EvalSettings, ExportSettings
from imgclf.review.settings import ReviewSettings
from imgclf.scrape.settings import ScrapeSettings
from imgclf.serving.settings import ServeSettings
from imgclf.settings import typed
from imgclf.training.settings import TrainSettings

# (config, its settings class, overrides it needs to compose)
COMMANDS = {
    "eval": (EvalSettings, []),
    "export": (ExportSettings, []),
    "classify": (ClassifySettings, ["img=a.jpg"]),
    "serve": (ServeSettings, []),
    "scrape": (ScrapeSettings, []),
    "review": (ReviewSettings, []),
    "train": (TrainSettings, []),
}

# per command: (override, the message's start)
BAD = {
    "eval": [
        ("batch_size=abc", "batch_size: Value 'abc' of type 'str' could not be converted to Integer"),
        ("+batchsize=8", "batchsize: no such setting; see conf/eval.yaml"),
        ("+data.rot=x", "data.rot: no such setting"),
        ("tta=maybe", "tta: Value 'maybe' is not a valid bool"),
        ("batch_size=0", "batch_size=0: give a whole number of at least 1"),
        ("calibration_bins=0", "calibration_bins=0: give a whole number of at least 1"),
        ("split=dev", "split='dev'; use train, val, test"),
    ],
    "export": [
        ("opset=twenty", "opset: Value 'twenty' of type 'str' could not be converted to Integer"),
        ("+quantization.method=minmax", "quantization.method: no such setting; see conf/export.yaml"),
        ("min_agreement=1.5", "min_agreement=1.5: use a fraction such as 0.99"),
        ("check_images=0", "check_images=0: give a whole number of at least 1"),
        ("quantize=int4", "quantize=int4; use quantize=int8"),
    ],
    "classify": [
        ("precision=[a]", "precision: Cannot convert 'ListConfig' to string"),
        ("+top_k=3", "top_k: no such setting; see conf/classify.yaml"),
    ],
    "serve": [
        ("port=http", "port: Value 'http' of type 'str' could not be converted to Integer"),
        ("+workers=2", "workers: no such setting; see conf/serve.yaml"),
        ("cors_origins=*", "cors_origins: give a list, e.g. 'cors_origins=[a,b]'"),
        ("num_api_servers=two", "num_api_servers: Value 'two' of type 'str' could not be converted"),
        ("max_queue=-1", "max_queue=-1: give a whole number of at least 0"),
        ("host=localhost", "host=localhost: LitServe binds to one of"),
    ],
    "scrape": [
        ("download.concurrency=many", "download.concurrency: Value 'many' of type 'str' could not be"),
        ("+search.max_scroll=3", "search.max_scroll: no such setting; see conf/scrape.yaml"),
        ("fallback_engines=bing", "fallback_engines: give a list, e.g. 'fallback_engines=[a,b]'"),
        ("overwrite=maybe", "overwrite: Value 'maybe' is not a valid bool"),
    ],
    "review": [
        ("checks.min_side=big", "checks.min_side: Value 'big' of type 'str' could not be converted"),
        ("+labels.fold=3", "labels.fold: no such setting; see conf/review.yaml"),
        ("labels.folds=1", "labels.folds=1: give a whole number of at least 2"),
        ("fix=delete", "fix='delete'; use fix=quarantine"),
        ("fix_reasons=[blurry]", "fix_reasons has unknown reason(s) blurry"),
        ("labels.features=colour", "labels.features='colour'; use one of backbone, pixels, both"),
    ],
    "train": [
        ("data.batch_size=abc", "data.batch_size: Value 'abc' of type 'str' could not be converted"),
        ("seed=one", "seed: Value 'one' of type 'str' could not be converted to Integer"),
        ("lr_find=maybe", "lr_find: Value 'maybe' is not a valid bool"),
        ("data.augment=[a]", "data.augment: Value '['a']' of type 'ListConfig' is incompatible"),
        ("+data.batchsize=8", "data.batchsize: no such setting; see conf/train.yaml"),
        ("+epochs=3", "epochs: no such setting; see conf/train.yaml"),
        ("+features.view=2", "features.view: no such setting"),
        ("data.batch_size=0", "data.batch_size=0: give a whole number of at least 1"),
        ("data.num_workers=-1", "data.num_workers=-1: give a whole number of at least 0"),
        ("features.views=0", "features.views=0: give a whole number of at least 1"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5: use a fraction between 0 and 1, e.g. 0.2"),
        ("data.augment=autoaugment", "data.augment='autoaugment': use original, trivial, randaugment"),
        ("data.augmentation.zoom=[1.2]", "data.augmentation.zoom=[1.2]: give [low, high]"),
    ],
}


def check(name: str, *overrides: str, tmp_path) -> object:
    schema, needed = COMMANDS[name]
    return typed(compose(name, [*needed, *overrides], output_dir=tmp_path), schema)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_shipped_config_composes_into_its_settings(name, tmp_path):
    schema = COMMANDS[name][0]
    settings = check(name, tmp_path=tmp_path)
    if schema.READ_ONLY:
        assert isinstance(settings, schema)
    else:
        assert OmegaConf.get_type(settings) is schema
    assert settings.paths.output_dir == str(tmp_path), "interpolations are resolved first"
    assert typed(settings, COMMANDS[name][0]) is settings, "typed settings pass as they are"


BAD_SETTINGS = [(name, *bad) for name, bads in BAD.items() for bad in bads]


@pytest.mark.parametrize(("name", "override", "message"), BAD_SETTINGS)
def test_a_bad_setting_names_its_key(name, override, message, tmp_path):
    with pytest.raises(ImgclfError) as caught:
        check(name, override, tmp_path=tmp_path)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "overrides",
    [
        ["+experiment=digits"],
        ["+experiment=digits_pretrained"],
        ["+experiment=hockey"],
        ["debug=fast"],
        ["hparams_search=optuna"],
        ["trainer=ddp", "callbacks=early_stopping", "logger=many"],
    ],
)
def test_every_shipped_train_variant_composes_into_its_settings(overrides, tmp_path):
    settings = check("train", *overrides, tmp_path=tmp_path)
    assert OmegaConf.get_type(settings) is TrainSettings


def test_train_settings_take_a_preset_or_a_bool_and_an_automatic_lr(tmp_path):
    assert check("train", "data.augment=false", tmp_path=tmp_path).data.augment is False
    assert check("train", "data.augment=trivial", tmp_path=tmp_path).data.augment == "trivial"
    found = check("train", "model.optimizer.lr=auto", "data.val_fraction=null", tmp_path=tmp_path)
    assert found.model.optimizer.lr == "auto" and found.data.val_fraction is None
    assert found.data.backbone.name == found.model.backbone.name == "inception_v3"


def test_settings_values_have_their_types(tmp_path):
    served = check("serve", "max_payload_mb=2.5", "num_api_servers=2", tmp_path=tmp_path)
    assert served.max_payload_mb == 2.5 and served.num_api_servers == 2 and served.cors_origins == ["*"]
    assert check("classify", "img=[a.jpg,b.jpg]", tmp_path=tmp_path).img == ["a.jpg", "b.jpg"]
    assert check("export", "quantize=int8", "check_images=null", tmp_path=tmp_path).check_images is None


def test_the_structured_settings_refuse_a_wrong_type_or_key_later_too(tmp_path):
    reviewed = check("review", tmp_path=tmp_path)
    with pytest.raises(ValidationError):
        reviewed.checks.min_side = "big"
    with pytest.raises(ConfigAttributeError):
        reviewed.chekcs = {}
    scraped = check("scrape", "top_up.weakest=2", tmp_path=tmp_path)
    assert scraped.top_up["from"] is None and scraped.top_up.weakest == 2  # a dict: "from" is a keyword


def test_a_scrape_out_of_range_stops_before_any_work(tmp_path):
    from imgclf.scrape.scraper import scrape

    csv = tmp_path / "terms.csv"
    csv.write_text("search_term,number_imgs,folder_name,train_val\ncat,5,cats,train\n")
    root = tmp_path / "dataset"
    overrides = [f"searchterms={csv}", f"data.root={root}", "download.concurrency=0"]
    cfg = check("scrape", *overrides, tmp_path=tmp_path)
    with pytest.raises(ImgclfError, match="download.concurrency must be positive, not 0"):
        scrape(cfg)
    assert not root.exists()


def test_a_missing_image_says_which_key(tmp_path):
    with pytest.raises(ImgclfError, match="^img: .*missing mandatory value"):
        typed(compose("classify", output_dir=tmp_path), ClassifySettings)


@pytest.mark.parametrize(
    ("command", "override", "key"),
    [
        ("eval", "batch_size=abc", "batch_size"),
        ("export", "+opsets=20", "opsets"),
        ("classify", "precision=[a]", "precision"),
        ("serve", "max_batch_size=0", "max_batch_size=0"),
        ("scrape", "search.extra=lots", "search.extra"),
        ("review", "+report.colour=red", "report.colour"),
    ],
)
def test_the_command_stops_with_the_key_on_stderr(command, override, key, tmp_path):
    extra = ["img=a.jpg"] if command == "classify" else []
    if command == "serve":
        result = run_serve(override)
    else:
        result = run_script(command, override, *extra, f"hydra.run.dir={tmp_path}", timeout=120)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {key}"), last


def test_imgclf_train_stops_on_a_bad_setting_before_any_work(tmp_path):
    import subprocess

    model_dir = tmp_path / "model"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgclf",
            "train",
            "data.batch_size=0",
            f"data.root={tmp_path / 'missing'}",
            f"paths.model_dir={model_dir}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data.batch_size=0: give a whole number of at least 1"), last
    assert not model_dir.exists()


def run_serve(*overrides: str):
    import subprocess

    return subprocess.run(
        [sys.executable, "serve.py", *overrides],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
