"""The settings of ``imgclf eval``, ``imgclf export`` and ``imgclf classify`` as types:
``conf/eval.yaml``, ``conf/export.yaml`` and ``conf/classify.yaml``, checked by
:func:`imgclf.settings.typed`.

Each library function is handed its dataclass object (``READ_ONLY``): it only reads the values.
What no type says (the splits, the choices, the ranges) is checked in ``__post_init__``; the
runtime and precision are checked with the model file they choose
(:func:`imgclf.inference.runtimes.check_options`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

from imgclf.data.folders import SPLITS
from imgclf.errors import ImgclfError
from imgclf.settings import DatasetRoot, Paths, Schema, at_least

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class EvalSettings(Schema):
    CONFIG: ClassVar[str] = "conf/eval.yaml"
    READ_ONLY: ClassVar[bool] = True

    task_name: str = "eval"
    paths: Paths = field(default_factory=Paths)
    split: str = "test"
    ckpt_path: str = "data/trained_model/model.ckpt"
    data: DatasetRoot = field(default_factory=DatasetRoot)
    report_dir: str = "data/trained_model/eval_test"
    batch_size: int = 32
    num_workers: int = 2
    runtime: str = "auto"
    precision: str = "auto"
    tta: bool = False
    top_losses: int = 16
    explain: bool = True
    most_confused: int = 10
    calibration_bins: int = 15
    curve: bool = False

    def __post_init__(self) -> None:
        """What no type says: the split and the ranges."""
        if self.split not in SPLITS:
            raise ImgclfError(f"split={self.split!r}; use {', '.join(SPLITS)}")
        at_least(
            ("batch_size", self.batch_size, 1),
            ("num_workers", self.num_workers, 0),
            ("top_losses", self.top_losses, 0),
            ("most_confused", self.most_confused, 0),
            ("calibration_bins", self.calibration_bins, 1),
        )


@dataclass
class Quantization:
    """ONNX Runtime's static int8 quantization (``quantize=int8``)."""

    per_channel: bool = True
    reduce_range: bool = False
    calibrate_method: str = "minmax"


@dataclass
class ExportSettings(Schema):
    CONFIG: ClassVar[str] = "conf/export.yaml"
    READ_ONLY: ClassVar[bool] = True

    task_name: str = "export"
    paths: Paths = field(default_factory=Paths)
    ckpt_path: str = "data/trained_model/model.ckpt"
    data: DatasetRoot = field(default_factory=DatasetRoot)
    quantize: Optional[str] = None
    check_images: Optional[int] = 200
    min_agreement: float = 0.99
    max_probability_difference: float = 0.001
    calibration_images: int = 100
    quantization: Quantization = field(default_factory=Quantization)
    opset: int = 20
    batch_size: int = 8
    num_workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        """What no type says: the choices and the ranges."""
        if self.quantize not in (None, "int8"):
            raise ImgclfError(f"quantize={self.quantize}; use quantize=int8, or leave it out for fp32 only")
        method = self.quantization.calibrate_method
        if self.quantize == "int8" and method not in CALIBRATION_METHODS:
            raise ImgclfError(
                f"quantization.calibrate_method={method}; use one of {', '.join(CALIBRATION_METHODS)}"
            )
        if not 0 < self.min_agreement <= 1:
            raise ImgclfError(f"min_agreement={self.min_agreement}: use a fraction such as 0.99")
        at_least(
            ("calibration_images", self.calibration_images, 1),
            ("batch_size", self.batch_size, 1),
            ("num_workers", self.num_workers, 0),
        )
        if self.check_images is not None:
            at_least(("check_images", self.check_images, 1))


@dataclass
class ClassifySettings(Schema):
    """``img`` is one path or a list of them (``img=[a.jpg,b.jpg]``), hence ``Any``."""

    CONFIG: ClassVar[str] = "conf/classify.yaml"
    READ_ONLY: ClassVar[bool] = True

    task_name: str = "classify"
    paths: Paths = field(default_factory=Paths)
    img: Any = MISSING
    ckpt_path: str = "data/trained_model/model.ckpt"
    runtime: str = "auto"
    precision: str = "auto"
