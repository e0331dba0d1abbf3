"""``export(cfg)``: ``model.ckpt`` -> ``model.onnx`` and ``model.int8.onnx``, each checked before it is kept.

1. The network goes through ``torch.onnx.export`` (the ``torch.export``-based exporter) with a
   dynamic batch axis, at opset :data:`OPSET`.
2. The model record (classes, preprocessing, architecture, hyperparameters, metrics, validation
   split: everything but the weights), the sha256 of the ``model.ckpt`` it came from and the
   result of its check go into the file as ONNX metadata (:mod:`imgclf.inference.runtimes` reads them), so
   that the file describes itself and a command can tell a fresh export from a stale one.
3. The check: ONNX Runtime against PyTorch fp32 on validation images, as top-1 agreement and the
   largest probability difference. The file is written only once checked, atomically; ``auto``
   uses only verified files.
4. ``quantize=int8``: static quantization in ONNX Runtime (QDQ, int8 weights per output channel,
   uint8 activations calibrated on training images), kept only when its top-1 answers agree with
   PyTorch fp32 on at least ``min_agreement`` of the validation images.
"""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from imgclf.data.folders import ImageDataset, labelled_for_model, model_split
from imgclf.data.hashing import sha256_file
from imgclf.errors import ImgclfError
from imgclf.hardware import describe_machine
from imgclf.inference.card import write_card
from imgclf.inference.predict import Predictor, PredictorBase
from imgclf.inference.runtimes import (
    CHECK_KEY,
    INSTALL_HINT,
    INT8_NAME,
    ONNX_NAME,
    PRECISION_KEY,
    RECORD_KEY,
    SOURCE_KEY,
    OnnxPredictor,
    describe_check,
    import_onnxruntime,
    model_paths,
)
from imgclf.inference.settings import ExportSettings
from imgclf.io import atomic_write_bytes
from imgclf.models.checkpoint import load_model
from imgclf.settings import typed

log = logging.getLogger(__name__)

# torch 2.14's exporter default, so the best-tested translation; ONNX Runtime runs opset 20 since 1.17.
OPSET = 20
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def require_exporter() -> None:
    """Exporting needs ``onnx``, ``onnxscript`` (torch.onnx's exporter) and ONNX Runtime (the check).

    torch.onnx would import onnxscript itself, later and with a less clear error.
    """
    for name in ("onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise ImgclfError(
                f"exporting needs the {name} package, which is not installed; {INSTALL_HINT}"
            ) from None
    import_onnxruntime("exporting")


def to_onnx(model: torch.nn.Module, image_size: int, opset: int = OPSET) -> Any:
    """The network as an ``onnx.ModelProto``: float images [N, 3, S, S] -> logits [N, K], N dynamic."""
    example = torch.zeros(2, 3, image_size, image_size)  # 2: an example batch of 1 would fix N to 1
    for name in ("onnxscript", "onnx_ir"):  # their optimiser logs each of its passes at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    except Exception as exc:  # the exporter's errors come in many types; all mean "this did not export"
        raise ImgclfError(f"torch.onnx could not export the model at opset {opset}: {exc}") from None
    return program.model_proto


def with_metadata(
    proto: Any, record: dict[str, Any], source_sha256: str, precision: str, check: dict[str, Any]
) -> bytes:
    """The model serialized, with the record (weights left out) and its check as metadata."""
    import onnx

    described = {key: value for key, value in record.items() if key != "state_dict"}
    onnx.helper.set_model_props(
        proto,
        {
            RECORD_KEY: json.dumps(described),
            CHECK_KEY: json.dumps(check),
            SOURCE_KEY: source_sha256,
            PRECISION_KEY: precision,
        },
    )
    proto.doc_string = (
        f"imgclf classifier ({described['architecture']['backbone']['name']}): {described['classes']}"
    )
    return proto.SerializeToString()


def spread(samples: Sequence[tuple[Path, int]], count: int | None, seed: int) -> list[tuple[Path, int]]:
    """Up to ``count`` samples, taken in turn from each class in a seeded order."""
    if count is None or count >= len(samples):
        return list(samples)
    order = np.random.default_rng(seed).permutation(len(samples))
    seen: dict[int, int] = {}
    ranked = []
    for position in order:
        label = samples[position][1]
        seen[label] = seen.get(label, 0) + 1
        ranked.append((seen[label], label, position))
    return [samples[position] for _, _, position in sorted(ranked)[:count]]


def split_dataset(
    reference: Predictor, root: str | Path, split: str, count: int | None, seed: int
) -> ImageDataset:
    listing = model_split(root, split, reference.record.get("val_split"))
    samples = spread(labelled_for_model(listing, reference.classes, reference.source), count, seed)
    return ImageDataset(samples, reference.transform, on_error="mark")


def compare(
    reference: torch.Tensor,
    predictor: PredictorBase,
    dataset: ImageDataset,
    batch_size: int,
    num_workers: int,
) -> dict[str, Any]:
    """How ``predictor`` answers the dataset against the reference probabilities."""
    probabilities, _, _ = predictor.predict_dataset(dataset, batch_size, num_workers, "checking")
    return {
        "images": len(probabilities),
        "top1_agreement": float((probabilities.argmax(1) == reference.argmax(1)).float().mean()),
        "max_probability_difference": float((probabilities - reference).abs().max()),
    }


def check_result(
    measured: dict[str, Any], split: str, min_agreement: float, max_difference: float | None
) -> dict[str, Any]:
    verified = measured["top1_agreement"] >= min_agreement
    if max_difference is not None:
        verified = verified and measured["max_probability_difference"] <= max_difference
    return {
        "against": "PyTorch fp32",
        "split": split,
        **measured,
        "min_agreement": min_agreement,
        "max_probability_difference_allowed": max_difference,
        "verified": verified,
        "machine": describe_machine(),
    }


def calibration_reader(dataset: ImageDataset, batch_size: int, num_workers: int) -> Any:
    """ONNX Runtime's calibration input: the dataset's decodable images, a batch at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class CalibrationImages(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(DataLoader(dataset, batch_size=batch_size, num_workers=num_workers))

        def get_next(self) -> dict[str, np.ndarray] | None:
            for images, _, index in self.batches:
                if (index >= 0).any():
                    return {INPUT_NAME: images[index >= 0].numpy()}
            return None

    return CalibrationImages()


def quantize_int8(
    fp32_model: bytes, calibration: ImageDataset, settings: dict[str, Any], batch_size: int, num_workers: int
) -> Any:
    """Static int8 quantization of the serialized fp32 model: an ``onnx.ModelProto``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="imgclf-int8-") as folder:
        fp32_path, prepared, int8_path = (
            Path(folder) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx")
        )
        fp32_path.write_bytes(fp32_model)
        # Folds batch norm into convolutions and infers shapes, so that whole convolutions quantize.
        quant_pre_process(fp32_path, prepared)
        quantize_static(
            prepared,
            int8_path,
            # the histogram calibrators (entropy, percentile) stack each batch's outputs and fail on a
            # short last batch: they get one image at a time
            calibration_reader(
                calibration, batch_size if settings["calibrate_method"] == "minmax" else 1, num_workers
            ),
            quant_format=QuantFormat.QDQ,
            per_channel=bool(settings["per_channel"]),
            reduce_range=bool(settings["reduce_range"]),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[settings["calibrate_method"]],
        )
        return onnx.load(int8_path)


def export(cfg: Any) -> dict[str, Any]:
    """Write ``model.onnx`` (and with ``quantize=int8`` ``model.int8.onnx``) beside ``model.ckpt``;
    ``cfg`` (conf/export.yaml) is checked against :class:`ExportSettings` unless it is one.

    Returns what was written, each file's check, and for int8 whether it was kept and why.
    """
    cfg = typed(cfg, ExportSettings)
    require_exporter()
    ckpt, folder = model_paths(cfg.ckpt_path)
    model, record = load_model(ckpt)
    source_sha256 = sha256_file(ckpt)
    reference = Predictor(model, record, source=ckpt, precision="fp32", channels_last=False)
    batch_size, workers = cfg.batch_size, cfg.num_workers
    check_set = split_dataset(reference, cfg.data.root, "val", cfg.check_images, cfg.seed)
    expected, _, _ = reference.predict_dataset(check_set, batch_size, workers, "PyTorch fp32")
    if not len(expected):
        raise ImgclfError(f"none of the validation images under {cfg.data.root} could be decoded")

    log.info("Exporting %s to ONNX (opset %d)", ckpt, cfg.opset)
    proto = to_onnx(model, model.image_size, cfg.opset)
    unchecked = with_metadata(proto, record, source_sha256, "32-true", {})
    measured = compare(expected, OnnxPredictor(unchecked, source=ONNX_NAME), check_set, batch_size, workers)
    check = check_result(measured, "val", cfg.min_agreement, cfg.max_probability_difference)
    fp32_bytes = with_metadata(proto, record, source_sha256, "32-true", check)
    atomic_write_bytes(folder / ONNX_NAME, fp32_bytes)
    log.info("Wrote %s: %s", folder / ONNX_NAME, describe_check(check))
    if not check["verified"]:
        log.warning("%s did not pass its check: runtime=auto will not use it", ONNX_NAME)
    result: dict[str, Any] = {"onnx": {"path": str(folder / ONNX_NAME), "check": check, "opset": cfg.opset}}
    if cfg.quantize == "int8":
        result["int8"] = export_int8(
            cfg, reference, record, source_sha256, fp32_bytes, check_set, expected, folder / INT8_NAME
        )
    write_card(folder, cfg.data.root)
    return result


def export_int8(
    cfg: ExportSettings,
    reference: Predictor,
    record: dict[str, Any],
    source_sha256: str,
    fp32_bytes: bytes,
    check_set: ImageDataset,
    expected: torch.Tensor,
    target: Path,
) -> dict[str, Any]:
    """Quantize, check, and keep ``target`` (model.int8.onnx) only at ``min_agreement`` or better."""
    batch_size, workers = cfg.batch_size, cfg.num_workers
    settings = asdict(cfg.quantization)
    calibration = split_dataset(reference, cfg.data.root, "train", cfg.calibration_images, cfg.seed)
    log.info("Quantizing to int8, calibrated on %d training images", len(calibration))
    proto = quantize_int8(fp32_bytes, calibration, settings, batch_size, workers)
    quantization = {**settings, "format": "QDQ", "weights": "int8", "activations": "uint8"}
    quantization["calibration_images"] = len(calibration)
    unchecked = with_metadata(proto, record, source_sha256, "int8", {})
    measured = compare(expected, OnnxPredictor(unchecked, source=INT8_NAME), check_set, batch_size, workers)
    check = {**check_result(measured, "val", cfg.min_agreement, None), "quantization": quantization}
    if check["verified"]:
        atomic_write_bytes(target, with_metadata(proto, record, source_sha256, "int8", check))
        log.info("Wrote %s: %s", target, describe_check(check))
        return {"path": str(target), "check": check, "kept": True}
    message = (
        f"int8 refused: {describe_check(check)}, below the {check['min_agreement']:.0%} required; "
        f"{ONNX_NAME} stays the one to use (try more calibration_images, "
        "quantization.calibrate_method=percentile, or a lower min_agreement)"
    )
    if target.exists():
        target.unlink()
        message += f"; removed the older {INT8_NAME}"
    log.warning(message)
    return {"path": None, "check": check, "kept": False, "message": message}
