"""Training for real: fast_dev_run, staged fine-tuning, checkpoints, resume, DDP, bad input."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST_TRAIN, REPO_ROOT, compose, run_script, train_model
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import inception_v3

from imgclf.checkpoint import FORMAT, load_model
from imgclf.errors import ImgclfError
from imgclf.finetune import StagedFineTuning
from imgclf.model import build_classifier, cached_weights_path, preprocessing_for
from imgclf.module import ClassifierModule, inverse_frequency_weights
from imgclf.train import RunState, train


def save_imagenet_like_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's ImageNet layout (with fc and AuxLogits), random values."""
    torch.manual_seed(0)
    reference = inception_v3(weights=None, aux_logits=True, init_weights=False)
    state = reference.state_dict()
    torch.save(state, path)
    return state


def test_fast_dev_run(tmp_path, small_digits_root):
    cfg = compose(
        "train",
        FAST_TRAIN + ["debug=fast", f"data.root={small_digits_root}", f"paths.model_dir={tmp_path}"],
        output_dir=tmp_path,
    )
    metrics = train(cfg)
    assert "train/loss" in metrics and "val/acc" in metrics
    assert not (tmp_path / "model.ckpt").exists()


def test_checkpoint_is_self_describing(tiny_model):
    record = torch.load(tiny_model, map_location="cpu", weights_only=True)
    assert record["format"] == FORMAT
    assert record["classes"] == ["0", "1", "7"]
    assert record["preprocessing"] == preprocessing_for(75)
    assert record["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert record["architecture"]["head"] == {
        "hidden_size": 1024,
        "num_layers": 1,
        "dropout": 0.0,
        "activation": "relu",
    }
    assert record["hparams"]["optimizer"]["lr"] == pytest.approx(1e-3)
    assert record["hparams"]["image_size"] == 75
    assert 0.0 <= record["metrics"]["val/acc"] <= 1.0
    model, _ = load_model(tiny_model)
    images = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        assert model(images).shape == (2, 3)


def test_loads_a_local_imagenet_state_dict(tmp_path):
    state = save_imagenet_like_state_dict(tmp_path / "inception.pth")
    model = build_classifier(4, pretrained=True, weights_path=str(tmp_path / "inception.pth"))
    loaded = model.backbone.state_dict()
    assert torch.equal(loaded["Conv2d_1a_3x3.conv.weight"], state["Conv2d_1a_3x3.conv.weight"])
    assert torch.equal(
        loaded["Mixed_7c.branch_pool.bn.running_var"], state["Mixed_7c.branch_pool.bn.running_var"]
    )


def test_uses_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = cached_weights_path()
    assert str(target).startswith(str(tmp_path))
    target.parent.mkdir(parents=True)
    state = save_imagenet_like_state_dict(target)
    model = build_classifier(2, pretrained=True, allow_download=False)
    assert torch.equal(
        model.backbone.state_dict()["Mixed_6a.branch3x3.conv.weight"], state["Mixed_6a.branch3x3.conv.weight"]
    )


def test_bad_weights_file(tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ImgclfError, match="does not match torchvision's Inception v3"):
        build_classifier(2, pretrained=True, weights_path=str(bad))


def test_missing_weights_fail_fast_with_a_fix(tmp_path, small_digits_root):
    result = run_script(
        "train",
        f"data.root={small_digits_root}",
        f"paths.model_dir={tmp_path}",
        "model.allow_download=false",
        env={"TORCH_HOME": str(tmp_path / "empty")},
    )
    assert result.returncode == 2
    # it stops before reading any data or building the network
    assert "Instantiating datamodule" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "model.pretrained=false" in result.stderr and "TORCH_HOME" in result.stderr
    assert "model.weights_path" in result.stderr


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
        ],
    )
    trained = torch.load(model_path, weights_only=True)
    assert trained["metrics"]["best_epoch"] in (0, 1)
    weights_after = {
        k.removeprefix("backbone."): v for k, v in trained["state_dict"].items() if k.startswith("backbone.")
    }
    # Stage 1 and 2 never touch the lower blocks, nor any BatchNorm statistics.
    assert torch.equal(weights_after["Conv2d_1a_3x3.conv.weight"], state["Conv2d_1a_3x3.conv.weight"])
    assert torch.equal(
        weights_after["Mixed_6e.branch1x1.conv.weight"], state["Mixed_6e.branch1x1.conv.weight"]
    )
    assert torch.equal(
        weights_after["Mixed_7c.branch1x1.bn.running_mean"], state["Mixed_7c.branch1x1.bn.running_mean"]
    )
    if trained["metrics"]["best_epoch"] == 1:  # the best epoch came from stage 2
        assert not torch.equal(
            weights_after["Mixed_7c.branch1x1.conv.weight"], state["Mixed_7c.branch1x1.conv.weight"]
        )


def test_stage_two_keeps_batchnorm_frozen_and_trains_on_after_a_resume(tmp_path):
    weights = tmp_path / "inception.pth"
    state = save_imagenet_like_state_dict(weights)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 75, 75), torch.arange(8) % 2)
    checkpoints = tmp_path / "checkpoints"

    def fit(epochs: int, ckpt_path: Path | None = None) -> dict[str, torch.Tensor]:
        module = ClassifierModule(
            num_classes=2, optimizer=functools.partial(torch.optim.Adam, lr=1e-2), weights_path=str(weights)
        )
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            callbacks=[
                StagedFineTuning(unfreeze_at_epoch=1, blocks=["Mixed_7c"]),
                ModelCheckpoint(dirpath=checkpoints, save_last=True),
            ],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        loader = DataLoader(data, batch_size=4)
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader, ckpt_path=ckpt_path)
        bn = module.model.backbone.Mixed_7c.branch1x1.bn
        assert not bn.training  # still in eval mode after training with the block unfrozen
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
    cfg = compose(
        "train",
        FAST_TRAIN + ["model.class_weighting=true", f"data.root={small_digits_root}"],
        output_dir=tmp_path,
    )
    from imgclf.config import build

    module = build(cfg.model, num_classes=3, class_counts=[18, 9, 18])
    assert module.criterion.weight.tolist() == pytest.approx([0.8333, 1.6667, 0.8333], rel=1e-3)


def kill_then_rerun(args: list[str], last: Path, model_dir: Path) -> tuple[int, str]:
    """SIGKILL ``train.py args`` once ``last`` is written, run it again to the end; returns the
    killed checkpoint's epoch and the two runs' logs."""
    process = subprocess.Popen(
        [sys.executable, "scripts/train.py", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the checkpoint write finish
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists() and not (model_dir / "model.ckpt").exists()
    killed_epoch = torch.load(last, weights_only=False)["epoch"]

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
    last = tmp_path / "checkpoints" / "last.ckpt"
    killed_epoch, log_text = kill_then_rerun(args, last, tmp_path)
    assert "Resuming the interrupted run" in log_text
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
    last = tmp_path / "checkpoints" / "stage2" / "last.ckpt"
    killed_epoch, log_text = kill_then_rerun(args, last, tmp_path)
    assert "stage 2 continues from" in log_text
    assert log_text.count("Computing backbone features once") == 1  # stage 1 was not redone
    assert killed_epoch < 4
    assert torch.load(last, weights_only=False)["epoch"] > killed_epoch  # stage 2 went on to its end
    assert torch.load(tmp_path / "model.ckpt", weights_only=True)["metrics"]["best_epoch"] in range(10)


def test_a_fresh_start_removes_only_its_own_checkpoints(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "stage2").mkdir(parents=True)
    ours = ["last.ckpt", "last-v1.ckpt", "best-epoch03.ckpt", "stage1_head.ckpt", "stage2/last.ckpt"]
    ours.append("stage2/best-epoch01-v1.ckpt")
    theirs = ["model.ckpt", "notes.txt", "stage2/mine.ckpt"]
    for name in ours + theirs:
        (folder / name).write_bytes(b"x")
    RunState(folder, "abc").start_fresh()
    assert [name for name in ours if (folder / name).exists()] == []
    assert all((folder / name).exists() for name in theirs)
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert state == {"status": "running", "fingerprint": "abc"}


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
    assert torch.load(tmp_path / "model.ckpt", weights_only=True)["classes"] == ["0", "1", "7"]
