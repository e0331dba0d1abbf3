"""``imgclf train``'s settings as types: ``conf/train.yaml``, checked by :func:`imgclf.settings.typed`
where the command, the pipeline's train stage and :func:`imgclf.training.train.train` itself get it.

Training is handed the structured ``DictConfig`` (not ``READ_ONLY``): it hands its sections to
Hydra's ``instantiate`` (:func:`imgclf.config.build`). The groups that name the classes they build
stay dicts of any values, checked by the classes themselves and by the allow-list of
:mod:`imgclf.config`: ``model`` (its ``backbone``, ``head``, ``optimizer`` and ``scheduler``;
``model.optimizer.lr=auto`` is the learning-rate finder's), ``trainer`` (Lightning's ``Trainer``),
``callbacks``, ``logger`` and ``checkpoint``. What no type says (the choices, the ranges) is checked
in ``__post_init__``; the image size, whose limits are the backbone's, with the backbone
(:func:`imgclf.models.backbones.check_image_size`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

from imgclf.data.transforms import augment_preset
from imgclf.errors import ImgclfError
from imgclf.settings import Paths, Schema, at_least


@dataclass
class Augmentation:
    """The original tool's geometric augmentation (``data.augment=true``)."""

    rotation: float = 180
    translate: float = 0.1
    shear: float = 10
    zoom: list[float] = field(default_factory=lambda: [0.9, 1.5])
    hflip: bool = True
    vflip: bool = True


@dataclass
class ImageFolderData:
    """``conf/data/image_folder.yaml``: the arguments of
    :class:`~imgclf.data.datamodule.ImageFolderDataModule`."""

    _target_: str = "imgclf.data.datamodule.ImageFolderDataModule"
    root: str = "data/image_dataset"
    backbone: dict[str, Any] = field(default_factory=dict)  # model.backbone's
    image_size: Optional[int] = None  # None: the weights' own
    batch_size: int = 20
    augment: Union[bool, str] = True  # a preset's name, true (original) or false
    augmentation: Augmentation = field(default_factory=Augmentation)
    num_workers: int = 2
    verify_images: bool = True
    val_fraction: Optional[float] = 0.2
    split_seed: int = 42


@dataclass
class FeatureCache:
    """The head stage's stored backbone features (:mod:`imgclf.training.features`)."""

    cache: bool = True
    views: int = 8
    chunk_size: int = 2048


@dataclass
class TrainSettings(Schema):
    CONFIG: ClassVar[str] = "conf/train.yaml"
    READ_ONLY: ClassVar[bool] = False

    task_name: str = "train"
    seed: int = 42
    resume: bool = True
    save_model: bool = True
    optimized_metric: str = "val/acc"
    lr_find: bool = False
    use_best_hparams: bool = True
    # an experiment's scrape.py searchterms (conf/experiment/hockey.yaml), composed with train.py's too
    searchterms: Optional[str] = None
    checkpoint: dict[str, Any] = field(default_factory=dict)
    features: FeatureCache = field(default_factory=FeatureCache)
    paths: Paths = field(default_factory=Paths)
    data: ImageFolderData = field(default_factory=ImageFolderData)
    model: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """What no type says: the choices and the ranges."""
        augment_preset(self.data.augment)
        fraction = self.data.val_fraction
        if fraction is not None and not 0 < fraction < 1:
            raise ImgclfError(
                f"data.val_fraction={fraction}: use a fraction between 0 and 1, e.g. 0.2, "
                "or null to require a val/ folder"
            )
        zoom = list(self.data.augmentation.zoom)
        if len(zoom) != 2:
            raise ImgclfError(f"data.augmentation.zoom={zoom}: give [low, high], e.g. [0.9, 1.5]")
        at_least(
            ("data.batch_size", self.data.batch_size, 1),
            ("data.num_workers", self.data.num_workers, 0),
            ("features.views", self.features.views, 1),
            ("features.chunk_size", self.features.chunk_size, 1),
        )
