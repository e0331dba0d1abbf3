"""The saved model: one self-describing file that loads with ``torch.load(weights_only=True)``.

It holds only tensors and plain Python values (no pickled classes, nothing that runs on load):
class names, preprocessing, architecture, hyperparameters, metrics and the weights.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import torch

from imgclf.errors import ImgclfError
from imgclf.io import atomic_torch_save
from imgclf.model import InceptionClassifier

FORMAT = "imgclf.model/1"


def model_record(
    model: InceptionClassifier,
    classes: list[str],
    preprocessing: dict[str, Any],
    hparams: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": list(classes),
        "preprocessing": dict(preprocessing),
        "architecture": {
            "backbone": "inception_v3",
            "transform_input": True,
            "feature_dim": 2048,
            "num_classes": len(classes),
            "head": dict(model.head_config),
        },
        "hparams": hparams,
        "metrics": dict(metrics or {}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }


def save_model(record: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_torch_save(record, path)
    return path


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
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ImgclfError(
            f"{path} is not an imgclf model file (expected format {FORMAT}); Lightning's "
            "checkpoints under checkpoints/ are for resuming training, use model.ckpt"
        )
    return record


def load_model(path: str | os.PathLike) -> tuple[InceptionClassifier, dict[str, Any]]:
    """Rebuild the network from the file alone and return it (eval mode) with its record."""
    record = read_model(path)
    arch = record["architecture"]
    model = InceptionClassifier(arch["num_classes"], arch["head"], init_weights=False)
    model.load_state_dict(record["state_dict"])
    model.eval()
    return model, record
