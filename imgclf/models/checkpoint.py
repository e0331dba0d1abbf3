"""The saved model: one self-describing file that loads with ``torch.load(weights_only=True)``.

It holds only tensors and plain Python values (no pickled classes, nothing that runs on load):
class names, the architecture (backbone description, image size, head), preprocessing,
hyperparameters, metrics, the validation split when one was held out of ``train/``, and the
weights. Lightning's checkpoints under ``checkpoints/`` are for resuming training, not this.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from imgclf.errors import ImgclfError
from imgclf.io import atomic_torch_save
from imgclf.models.classifier import ImageClassifier

FORMAT = "imgclf.models.classifier/2"
# Files of the first release describe an Inception v3 by name only.
FORMAT_V1 = "imgclf.models.classifier/1"
V1_BACKBONE = {
    "name": "inception_v3",
    "weights": "Inception_V3_Weights.IMAGENET1K_V1",
    "feature_dim": 2048,
    "classifier": ["dropout", "fc"],
    "kwargs": {"aux_logits": False, "transform_input": True, "init_weights": True},
    "fine_tune_blocks": ["Mixed_7a", "Mixed_7b", "Mixed_7c"],
    "freeze_norm": True,
    "cam_layer": "Mixed_7c",
}


def model_record(
    model: ImageClassifier,
    classes: list[str],
    hparams: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
    val_split: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a model of {model.num_classes} classes")
    return {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": list(classes),
        "preprocessing": dict(model.preprocessing),
        "architecture": model.architecture(),
        "hparams": dict(hparams),
        "metrics": dict(metrics or {}),
        "val_split": dict(val_split) if val_split else None,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }


def export_model(
    model: ImageClassifier,
    classes: list[str],
    path: str | os.PathLike,
    hparams: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
    val_split: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a self-describing model file, atomically."""
    path = Path(path)
    atomic_torch_save(model_record(model, classes, hparams, metrics, val_split), path)
    return path


def _upgrade_v1(record: dict[str, Any]) -> dict[str, Any]:
    arch = record["architecture"]
    record["architecture"] = {
        "backbone": dict(V1_BACKBONE),
        "image_size": int(record["preprocessing"]["crop"]),
        "num_classes": int(arch["num_classes"]),
        "head": dict(arch["head"]),
    }
    record["format"] = FORMAT
    return record


def read_model(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ImgclfError(
            f"no trained model at {path}; train one with `python scripts/train.py` or point "
            "ckpt_path= (or paths.model_dir=) at an existing model.ckpt"
        )
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ImgclfError(f"{path} is not a readable imgclf model ({exc})") from None
    if isinstance(record, dict) and record.get("format") == FORMAT_V1:
        return _upgrade_v1(record)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ImgclfError(
            f"{path} is not an imgclf model file (expected format {FORMAT}); Lightning's "
            "checkpoints under checkpoints/ are for resuming training, use model.ckpt"
        )
    return record


def load_model(path: str | os.PathLike) -> tuple[ImageClassifier, dict[str, Any]]:
    """Rebuild the network from the file alone and return it (eval mode) with its record."""
    record = read_model(path)
    model = ImageClassifier.from_architecture(record["architecture"])
    model.load_state_dict(record["state_dict"], assign=True)
    return model.eval(), record
