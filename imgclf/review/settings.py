"""``imgclf review``'s settings as types: ``conf/review.yaml``, checked by :func:`imgclf.settings.typed`.

The review is handed the structured ``DictConfig`` (not ``READ_ONLY``): it hands its ``labels``
and ``model`` sections on as plain dicts (``OmegaConf.to_container``). ``model.backbone`` is the
backbone group (``conf/model/backbone/NAME.yaml``), kept a dict: the backbones define it
(:mod:`imgclf.models.backbones`). What no type says (the choices, the ranges) is checked in
``__post_init__``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from imgclf.errors import ImgclfError
from imgclf.review.findings import check_reasons
from imgclf.review.labels import FEATURES
from imgclf.settings import DatasetRoot, Paths, Schema, at_least


@dataclass
class ReviewChecks:
    min_side: int = 32
    near_duplicate_distance: int = 8
    near_duplicate_difference: float = 0.015
    imbalance_ratio: float = 3.0
    min_class_images: int = 10


@dataclass
class LabelCheck:
    """Suspected wrong labels: a cross-validated logistic regression on each image's features."""

    enabled: bool = True
    features: str = "backbone"
    pixel_size: int = 16
    folds: int = 5
    C: float = 0.1
    max_given_prob: float = 0.2
    min_other_prob: float = 0.6


@dataclass
class FeatureExtractor:
    """The frozen network whose features the label check reads (``labels.features=backbone``)."""

    backbone: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    weights_path: Optional[str] = None
    allow_download: bool = True
    image_size: int = 299
    batch_size: int = 32
    num_workers: int = 2
    precision: str = "auto"


@dataclass
class ReviewReport:
    thumbnail_size: int = 96
    max_thumbnails_per_class: int = 60


@dataclass
class ReviewSettings(Schema):
    CONFIG: ClassVar[str] = "conf/review.yaml"
    READ_ONLY: ClassVar[bool] = False

    task_name: str = "review"
    seed: int = 42
    paths: Paths = field(default_factory=Paths)
    data: DatasetRoot = field(default_factory=DatasetRoot)
    report_dir: str = "data/image_dataset_review"
    fix: Optional[str] = None
    fix_reasons: list[str] = field(
        default_factory=lambda: ["undecodable", "truncated", "exact_duplicate", "leakage"]
    )
    undo: bool = False
    ckpt_path: Optional[str] = None
    checks: ReviewChecks = field(default_factory=ReviewChecks)
    labels: LabelCheck = field(default_factory=LabelCheck)
    model: FeatureExtractor = field(default_factory=FeatureExtractor)
    report: ReviewReport = field(default_factory=ReviewReport)

    def __post_init__(self) -> None:
        """What no type says: the choices and the ranges."""
        if self.fix not in (None, "quarantine"):
            raise ImgclfError(f"fix={self.fix!r}; use fix=quarantine, or leave it out to only report")
        check_reasons(list(self.fix_reasons))
        if self.labels.enabled and self.labels.features not in FEATURES:
            raise ImgclfError(f"labels.features={self.labels.features!r}; use one of {', '.join(FEATURES)}")
        at_least(
            ("labels.folds", self.labels.folds, 2),  # cross-validation
            ("model.batch_size", self.model.batch_size, 1),
            ("model.num_workers", self.model.num_workers, 0),
        )
