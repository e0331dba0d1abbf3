"""Training for real: fast_dev_run, the model file, weights, staged fine-tuning, resume, DDP."""

from __future__ import annotations

import functools
import json
import signal
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST_TRAIN, backbone_config, compose, run_script, train_model
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import inception_v3

from imgclf.errors import ImgclfError
from imgclf.models.backbones import preprocessing, weights_file
from imgclf.models.checkpoint import FORMAT, export_model, load_model, read_model
from imgclf.models.classifier import ImageClassifier
from imgclf.testing.processes import start_script
from imgclf.training.finetune import StagedFineTuning
from imgclf.training.module import ClassifierModule, inverse_frequency_weights
from imgclf.training.schedule import remove_own_checkpoints
from imgclf.training.train import train

INCEPTION = backbone_config("inception_v3")


def save_imagenet_like_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's ImageNet layout (with fc and AuxLogits), random values."""
    torch.manual_seed(0)
    state = inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    torch.save(state, path)
    return state


def test_fast_dev_run(tmp_path, small_digits_root):
    cfg = compose(
        "train",
        FAST_TRAIN + ["debug=fast", f"data.root={small_digits_root}", f"paths.model_dir={tmp_path}"],
        output_dir=tmp_path,
    )
    metrics = train(cfg)
    assert metrics["fast_dev_run"] and "train/loss" in metrics and "val/acc" in metrics
    assert not (tmp_path / "model.ckpt").exists()


def test_checkpoint_is_self_describing(tiny_model):
    record = torch.load(tiny_model, map_location="cpu", weights_only=True)
    assert record["format"] == FORMAT
    assert record["classes"] == ["0", "1", "7"]
    assert record["preprocessing"] == preprocessing(INCEPTION, 75)
    assert record["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    architecture = record["architecture"]
    assert architecture["backbone"]["name"] == "inception_v3"
    assert architecture["backbone"]["fine_tune_blocks"] == ["Mixed_7a", "Mixed_7b", "Mixed_7c"]
    assert architecture["image_size"] == 75
    assert architecture["head"] == {
        "hidden_size": 1024,
        "num_layers": 1,
        "dropout": 0.0,
        "activation": "relu",
    }
    assert record["hparams"]["optimizer"]["lr"] == pytest.approx(1e-3)
    assert record["hparams"]["backbone"] == "inception_v3"
    assert record["hparams"]["image_size"] == 75
    assert 0.0 <= record["metrics"]["val/acc"] <= 1.0
    assert record["val_split"] is None  # the dataset has a val/ folder
    model, _ = load_model(tiny_model)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 75, 75)).shape == (2, 3)


def test_export_round_trips_and_refuses_a_class_list_of_the_wrong_length(tmp_path):
    torch.manual_seed(0)
    model = ImageClassifier(INCEPTION, 3, {"hidden_size": 16}, image_size=75).eval()
    path = export_model(
        model, ["a", "b", "c"], tmp_path / "model.ckpt", hparams={"seed": 1}, metrics={"val/acc": 0.5}
    )
    loaded, record = load_model(path)
    images = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    assert record["hparams"] == {"seed": 1} and record["metrics"] == {"val/acc": 0.5}
    assert not any(t.is_meta for t in loaded.state_dict().values())
    with pytest.raises(ValueError, match="2 class names for a model of 3 classes"):
        export_model(model, ["a", "b"], tmp_path / "other.ckpt", hparams={})
    assert not (tmp_path / "other.ckpt").exists()


def test_a_first_release_model_file_still_loads(tmp_path, tiny_model):
    record = torch.load(tiny_model, weights_only=True)
    old = {
        "format": "imgclf.models.classifier/1",
        "classes": record["classes"],
        "preprocessing": record["preprocessing"],
        "architecture": {
            "backbone": "inception_v3",
            "transform_input": True,
            "feature_dim": 2048,
            "num_classes": 3,
            "head": record["architecture"]["head"],
        },
        "hparams": record["hparams"],
        "metrics": record["metrics"],
        "state_dict": record["state_dict"],
    }
    torch.save(old, tmp_path / "old.ckpt")
    model, upgraded = load_model(tmp_path / "old.ckpt")
    assert upgraded["architecture"]["image_size"] == 75
    new, _ = load_model(tiny_model)
    images = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        assert torch.equal(model(images), new(images))


def test_loads_a_local_imagenet_state_dict(tmp_path):
    state = save_imagenet_like_state_dict(tmp_path / "inception.pth")
    model = ImageClassifier.pretrained(INCEPTION, 4, weights_path=tmp_path / "inception.pth")
    loaded = model.backbone.state_dict()
    assert torch.equal(loaded["Conv2d_1a_3x3.conv.weight"], state["Conv2d_1a_3x3.conv.weight"])
    assert torch.equal(
        loaded["Mixed_7c.branch_pool.bn.running_var"], state["Mixed_7c.branch_pool.bn.running_var"]
    )
    assert model.image_size == 299  # the weights' own size


def test_uses_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = weights_file(INCEPTION)
    assert str(target).startswith(str(tmp_path))
    target.parent.mkdir(parents=True)
    state = save_imagenet_like_state_dict(target)
    model = ImageClassifier.pretrained(INCEPTION, 2, allow_download=False)
    assert torch.equal(
        model.backbone.state_dict()["Mixed_6a.branch3x3.conv.weight"], state["Mixed_6a.branch3x3.conv.weight"]
    )


def test_bad_weights_file(tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ImgclfError, match="does not match torchvision's inception_v3"):
        ImageClassifier.pretrained(INCEPTION, 2, weights_path=bad)


def test_missing_weights_fail_fast_with_a_fix(tmp_path, small_digits_root):
    result = run_script(
        "train",
        f"data.root={small_digits_root}",
        f"paths.model_dir={tmp_path}",
        "model.allow_download=false",
        "model/backbone=resnet50",
        env={"TORCH_HOME": str(tmp_path / "empty")},
    )
    assert result.returncode == 2
    # it stops before reading any data or building the network
    assert "Instantiating datamodule" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "resnet50" in result.stderr and "resnet50-11ad3fa6.pth" in result.stderr
    assert "model.pretrained=false" in result.stderr and "TORCH_HOME" in result.stderr
    assert "model.weights_path" in result.stderr
    assert "model/backbone=efficientnet_lite0" in result.stderr  # the weights installed offline


def test_too_small_an_image_is_refused_with_the_minimum(tmp_path, small_digits_root):
    cfg = compose(
        "train", FAST_TRAIN + [f"data.root={small_digits_root}", "data.image_size=64"], output_dir=tmp_path
    )
    with pytest.raises(
        ImgclfError, match="data.image_size=64 is too small for inception_v3; use at least 75"
    ):
        train(cfg)


def test_staged_fine_tuning_freezes_then_unfreezes_the_top(tmp_path, small_digits_root):
    weights = tmp_path / "inception.pth"
    state = save_imagenet_like_state_dict(weights)
    model_path = train_model(
        small_digits_root,
        tmp_path / "model",
        [
            "model.pretrained=true",
            f"model.weights_path={weights}",
            "model.fine_tune=true",
            "trainer.max_epochs=1",
            "data.batch_size=30",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
    )
    trained = torch.load(model_path, weights_only=True)
    assert trained["metrics"]["best_epoch"] in (0, 1)
    after = {
        k.removeprefix("backbone."): v for k, v in trained["state_dict"].items() if k.startswith("backbone.")
    }
    # Neither stage touches the lower blocks, nor any BatchNorm statistics.
    assert torch.equal(after["Conv2d_1a_3x3.conv.weight"], state["Conv2d_1a_3x3.conv.weight"])
    assert torch.equal(after["Mixed_6e.branch1x1.conv.weight"], state["Mixed_6e.branch1x1.conv.weight"])
    assert torch.equal(
        after["Mixed_7c.branch1x1.bn.running_mean"], state["Mixed_7c.branch1x1.bn.running_mean"]
    )
    if trained["metrics"]["best_epoch"] == 1:  # the best epoch came from stage 2
        assert not torch.equal(
            after["Mixed_7c.branch1x1.conv.weight"], state["Mixed_7c.branch1x1.conv.weight"]
        )


def test_stage_two_keeps_batchnorm_frozen_and_trains_on_after_a_resume(tmp_path):
    weights = tmp_path / "inception.pth"
    state = save_imagenet_like_state_dict(weights)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 75, 75), torch.arange(8) % 2)
    checkpoints = tmp_path / "checkpoints"

    def fit(epochs: int, ckpt_path: Path | None = None) -> dict[str, torch.Tensor]:
        module = ClassifierModule(
            num_classes=2,
            backbone=INCEPTION,
            optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
            image_size=75,
            weights_path=str(weights),
        )
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            callbacks=[
                StagedFineTuning(blocks=["Mixed_7c"], unfreeze_at_epoch=1),
                ModelCheckpoint(dirpath=checkpoints, save_last=True),
            ],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        loader = DataLoader(data, batch_size=4)
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader, ckpt_path=ckpt_path)
        assert not module.model.backbone.Mixed_7c.branch1x1.bn.training  # eval mode while unfrozen
        return {k.removeprefix("backbone."): v.clone() for k, v in module.model.state_dict().items()}

    after = fit(2)  # epoch 0: head only; epoch 1: Mixed_7c unfrozen
    conv, bn_mean = "Mixed_7c.branch1x1.conv.weight", "Mixed_7c.branch1x1.bn.running_mean"
    assert not torch.equal(after[conv], state[conv])
    assert torch.equal(after["Mixed_7b.branch1x1.conv.weight"], state["Mixed_7b.branch1x1.conv.weight"])
    # the unfrozen block's BatchNorm statistics stay ImageNet's: batches of 20 would ruin them
    assert torch.equal(after[bn_mean], state[bn_mean])

    resumed = fit(3, ckpt_path=checkpoints / "last.ckpt")  # resumed past the unfreeze epoch
    assert not torch.equal(resumed[conv], after[conv])  # the block still trains
    assert torch.equal(resumed[bn_mean], state[bn_mean])


def test_class_weighting_uses_inverse_frequency(tmp_path, small_digits_root):
    assert inverse_frequency_weights([10, 30]).tolist() == pytest.approx([2.0, 2 / 3])
    cfg = compose("train", FAST_TRAIN + ["model.class_weighting=true"], output_dir=tmp_path)
    from imgclf.config import build

    module = build(cfg.model, num_classes=3, class_counts=[18, 9, 18])
    assert module.criterion.weight.tolist() == pytest.approx([0.8333, 1.6667, 0.8333], rel=1e-3)


def kill_then_rerun(args: list[str], last: Path, model_dir: Path) -> tuple[int, str]:
    """SIGKILL ``train.py args`` once ``last`` is written, run it again to the end; returns the
    killed checkpoint's epoch and the two runs' logs."""
    process = start_script("train", args)
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the checkpoint write finish
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists() and not (model_dir / "model.ckpt").exists()
    killed_epoch = torch.load(last, weights_only=True)["epoch"]

    result = run_script("train", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return killed_epoch, "".join(p.read_text() for p in (model_dir / "logs").rglob("train.log"))


def test_resumes_after_a_kill(tmp_path, small_digits_root):
    args = [
        *FAST_TRAIN,
        f"data.root={small_digits_root}",
        f"paths.model_dir={tmp_path}",
        "trainer.max_epochs=8",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    last = tmp_path / "checkpoints" / "scratch" / "last.ckpt"
    killed_epoch, log_text = kill_then_rerun(args, last, tmp_path)
    assert "stage scratch continues from" in log_text
    assert (tmp_path / "model.ckpt").exists()
    assert killed_epoch < 7


def test_cached_run_resumes_stage_two_after_a_kill(tmp_path, small_digits_root):
    weights = tmp_path / "inception.pth"
    save_imagenet_like_state_dict(weights)
    args = [
        *FAST_TRAIN,
        "model.pretrained=true",
        f"model.weights_path={weights}",
        "model.fine_tune=true",
        f"data.root={small_digits_root}",
        f"paths.model_dir={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.max_epochs=5",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    last = tmp_path / "checkpoints" / "fine_tune" / "last.ckpt"
    killed_epoch, log_text = kill_then_rerun(args, last, tmp_path)
    assert "stage fine_tune continues from" in log_text
    assert "stage head continues from" in log_text  # finished: restored, nothing retrained
    assert log_text.count("Computing backbone features once") == 1
    assert killed_epoch < 4
    assert torch.load(last, weights_only=True)["epoch"] > killed_epoch  # stage 2 went on to its end
    assert read_model(tmp_path / "model.ckpt")["metrics"]["best_epoch"] in range(10)
    # the head stage's checkpoints leave the frozen backbone out: megabytes, not the whole network
    head_last = tmp_path / "checkpoints" / "head" / "last.ckpt"
    assert head_last.stat().st_size < last.stat().st_size / 2


def test_a_fresh_start_removes_only_its_own_checkpoints(tmp_path):
    ours = ["last.ckpt", "last-v1.ckpt", "best-epoch03.ckpt", "best-epoch01-v1.ckpt"]
    theirs = ["model.ckpt", "notes.txt", "mine.ckpt"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"x")
    remove_own_checkpoints(tmp_path)
    assert [name for name in ours if (tmp_path / name).exists()] == []
    assert all((tmp_path / name).exists() for name in theirs)


def test_changed_settings_or_data_do_not_resume_another_runs_checkpoint(tmp_path, small_digits_root, caplog):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(small_digits_root, root)
    common = [*FAST_TRAIN, f"data.root={root}", f"paths.model_dir={tmp_path}", "trainer.max_epochs=1"]
    last = tmp_path / "checkpoints" / "scratch" / "last.ckpt"
    runs = []
    for name, extra in (
        ("a", []),
        ("b", ["model.head.hidden_size=32"]),
        ("c", ["model.head.hidden_size=32"]),
    ):
        if name == "c":  # same settings as b, one more image
            shutil.copy(next((root / "train" / "7").glob("*.png")), root / "train" / "7" / "added.png")
        caplog.clear()
        with caplog.at_level("INFO", logger="imgclf.training.schedule"):
            train(compose("train", common + extra, output_dir=tmp_path / name))
        runs.append(torch.load(last, weights_only=True)["imgclf_run"])
        assert "continues from" not in caplog.text  # each trained afresh
    assert len(set(runs)) == 3
    assert read_model(tmp_path / "model.ckpt")["architecture"]["head"]["hidden_size"] == 32


def test_without_a_val_folder_part_of_train_validates(tmp_path, small_digits_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(small_digits_root, root)
    shutil.rmtree(root / "val")
    model_dir = tmp_path / "model"
    train(
        compose(
            "train",
            FAST_TRAIN + [f"data.root={root}", f"paths.model_dir={model_dir}", "trainer.max_epochs=1"],
            output_dir=tmp_path / "run",
        )
    )
    record = read_model(model_dir / "model.ckpt")
    split = record["val_split"]
    assert split["fraction"] == 0.2 and split["seed"] == 42
    assert len(split["files"]) == 3 * 4  # round(0.2 * 18) of each class's 18
    assert {name.split("/")[0] for name in split["files"]} == {"0", "1", "7"}
    assert json.loads((tmp_path / "run" / "val_split.json").read_text()) == split
    # eval.py split=val reads the same files, split=train the others: no image in both
    val = run_script(
        "eval",
        "split=val",
        f"data.root={root}",
        f"paths.model_dir={model_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    assert val.returncode == 0, val.stderr[-2000:]
    on_val = json.loads((model_dir / "eval_val" / "metrics.json").read_text())
    assert on_val["num_images"] == 12
    assert on_val["accuracy"] == pytest.approx(record["metrics"]["val/acc"], abs=1e-6)
    on_train = run_script(
        "eval",
        "split=train",
        f"data.root={root}",
        f"paths.model_dir={model_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    assert on_train.returncode == 0, on_train.stderr[-2000:]
    assert json.loads((model_dir / "eval_train" / "metrics.json").read_text())["num_images"] == 54 - 12
    # the model card counts the images as the model saw them, and shows both evaluations
    card = (model_dir / "model_card.md").read_text(encoding="utf-8")
    assert "| **all** | 42 | 12 | 18 |" in card
    assert "no val/ folder: validation is 20% of train/'s images, held out (stratified, seed 42)" in card
    assert "### Train split" in card and "### Val split" in card and "12 images)" in card


def test_missing_val_folder_without_a_fraction_is_an_error(tmp_path, small_digits_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(small_digits_root, root)
    shutil.rmtree(root / "val")
    cfg = compose("train", FAST_TRAIN + [f"data.root={root}", "data.val_fraction=null"], output_dir=tmp_path)
    with pytest.raises(ImgclfError, match=r"val is missing and data.val_fraction=null"):
        train(cfg)


def test_two_process_cpu_ddp(tmp_path, small_digits_root):
    result = run_script(
        "train",
        *FAST_TRAIN,
        "trainer=ddp_cpu",
        f"data.root={small_digits_root}",
        f"paths.model_dir={tmp_path}",
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val accuracy:" in result.stdout
    assert read_model(tmp_path / "model.ckpt")["classes"] == ["0", "1", "7"]


def test_a_diverged_fine_tune_loses_and_the_head_keeps_its_own_backbone(tmp_path, small_digits_root, caplog):
    """Fine-tuning at an infinite learning rate turns the top blocks to NaN: that stage cannot win,
    and the saved model is the head with the backbone it was trained on, not the fine-tuned one."""
    weights = tmp_path / "inception.pth"
    state = save_imagenet_like_state_dict(weights)
    cfg = compose(
        "train",
        [
            *FAST_TRAIN,
            "model.pretrained=true",
            f"model.weights_path={weights}",
            "model.fine_tune=true",
            "model.fine_tune_lr_factor=inf",
            f"data.root={small_digits_root}",
            f"paths.model_dir={tmp_path / 'model'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "trainer.max_epochs=1",
        ],
        output_dir=tmp_path / "run",
    )
    with caplog.at_level("WARNING", logger="imgclf.training.schedule"):
        metrics = train(cfg)
    assert "Stage fine_tune diverged" in caplog.text and "model.fine_tune_lr_factor" in caplog.text
    assert metrics["best_epoch"] == 0  # the head's epoch
    saved = read_model(tmp_path / "model" / "model.ckpt")["state_dict"]
    assert all(v.isfinite().all() for v in saved.values() if v.is_floating_point())
    backbone = {k.removeprefix("backbone."): v for k, v in saved.items() if k.startswith("backbone.")}
    assert backbone.keys() and all(torch.equal(backbone[k], state[k]) for k in backbone)


def test_a_run_continues_only_in_the_precision_it_started_in(tmp_path):
    """``trainer.precision=auto`` is bf16 on one CPU and fp32 on another (or with the kernels
    capped): the fingerprint holds the precision auto resolved to, not the word "auto"."""
    from imgclf.hardware import resolve_precision
    from imgclf.training.schedule import fingerprint

    def of(*extra: str) -> str:
        return fingerprint(compose("train", [*FAST_TRAIN, *extra], output_dir=tmp_path), {})

    resolved = resolve_precision("auto", "cpu")
    assert of() == of(f"trainer.precision={resolved}")
    assert of("trainer.precision=32-true") != of("trainer.precision=bf16-mixed")
