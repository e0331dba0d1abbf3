"""The pipeline's settings as types: ``conf/pipeline.yaml``, composed by ``imgclf pipeline``, checked
against these dataclasses (OmegaConf's structured configs) and handed to :class:`~imgclf.pipeline.Pipeline`
as a :class:`PipelineSettings` object. A value of the wrong type or out of range stops the command
before any stage, naming the key and what to give."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from omegaconf import DictConfig, OmegaConf

from imgclf.errors import ImgclfError
from imgclf.review.findings import check_reasons
from imgclf.scrape.weak_classes import SIZINGS
from imgclf.settings import DatasetRoot, Paths, Schema, at_least, typed

METRICS = ("recall", "f1")
STAGE_SECTIONS = ("scrape", "review", "tune", "train", "eval")


@dataclass
class Model:
    """The network for training, tuning and the review's label check."""

    backbone: str = "inception_v3"  # conf/model/backbone/NAME.yaml
    pretrained: bool = True
    weights_path: Optional[str] = None


@dataclass
class Loop:
    """Each later round tops up the ``weakest`` classes with the lowest ``metric`` on val, each by
    what the round's learning curve says it needs (``sizing=curve``), or by ``extra_images``."""

    weakest: int = 1
    metric: str = "recall"
    sizing: str = "curve"
    extra_images: int = 20
    max_images: int = 100
    target_recall: Optional[float] = None


@dataclass
class Stage:
    """A stage's own Hydra overrides of its command's config, applied after the shared keys."""

    overrides: list[str] = field(default_factory=list)


@dataclass
class Review(Stage):
    fix: Optional[str] = "quarantine"
    fix_reasons: list[str] = field(
        default_factory=lambda: ["undecodable", "truncated", "tiny", "exact_duplicate", "leakage"]
    )


@dataclass
class Tune(Stage):
    n_trials: int = 0  # > 0: an Optuna sweep before the first training


@dataclass
class PipelineSettings(Schema):
    CONFIG: ClassVar[str] = "conf/pipeline.yaml"
    READ_ONLY: ClassVar[bool] = True

    searchterms: str = "data/searchterms.csv"
    seed: int = 42
    rounds: int = 1
    task_name: str = "pipeline"
    paths: Paths = field(default_factory=Paths)
    data: DatasetRoot = field(default_factory=DatasetRoot)
    model: Model = field(default_factory=Model)
    loop: Loop = field(default_factory=Loop)
    scrape: Stage = field(default_factory=Stage)
    review: Review = field(default_factory=Review)
    tune: Tune = field(default_factory=Tune)
    train: Stage = field(default_factory=Stage)
    eval: Stage = field(default_factory=Stage)

    def __post_init__(self) -> None:
        """What no type says: the ranges and the choices."""
        at_least(
            ("rounds", self.rounds, 1),
            ("tune.n_trials", self.tune.n_trials, 0),
            ("loop.weakest", self.loop.weakest, 1),
            ("loop.extra_images", self.loop.extra_images, 1),
        )
        if self.loop.max_images < self.loop.extra_images:
            raise ImgclfError(
                f"loop.max_images={self.loop.max_images}: give at least "
                f"loop.extra_images ({self.loop.extra_images})"
            )
        if self.loop.sizing not in SIZINGS:
            raise ImgclfError(f"loop.sizing={self.loop.sizing}: use curve or fixed")
        if self.loop.target_recall is not None and not 0 < self.loop.target_recall <= 1:
            raise ImgclfError(
                f"loop.target_recall={self.loop.target_recall}: give a recall in (0, 1], or null"
            )
        if self.loop.metric not in METRICS:
            raise ImgclfError(f"loop.metric={self.loop.metric}: use recall or f1")
        if self.review.fix not in (None, "quarantine"):
            raise ImgclfError(f"review.fix={self.review.fix}: use quarantine, or null to only report")
        check_reasons(list(self.review.fix_reasons))

    def section(self, name: str) -> Stage:
        """A stage's section (``scrape``, ``review``, ``tune``, ``train``, ``eval``)."""
        return getattr(self, name)

    @classmethod
    def from_config(cls, cfg: DictConfig | PipelineSettings) -> PipelineSettings:
        """The composed ``conf/pipeline.yaml`` (resolved, without Hydra's node), checked and typed."""
        if isinstance(cfg, PipelineSettings):
            return cfg
        if "hydra" in cfg:  # composed with Hydra's node (the compose API's return_hydra_config)
            from imgclf.composition import settings

            cfg = settings(cfg)
        plain = OmegaConf.to_container(cfg, resolve=True)
        for name in STAGE_SECTIONS:
            overrides = (plain.get(name) or {}).get("overrides")
            if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                raise ImgclfError(
                    f"{name}.overrides must be a list of key=value strings, e.g. "
                    f"'{name}.overrides=[\"data.num_workers=0\"]'"
                )
        return typed(plain, cls)
