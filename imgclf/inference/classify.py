"""``classify(cfg)``: ``{label: probability}`` for each image given on the command line."""

from __future__ import annotations

from typing import Any

from imgclf.inference.runtimes import load_predictor
from imgclf.inference.settings import ClassifySettings
from imgclf.settings import typed


def image_paths(img: Any) -> list[str]:
    if isinstance(img, (list, tuple)):
        return [str(p) for p in img]
    return [str(img)]


def classify(cfg: Any) -> dict[str, dict[str, float]]:
    """{path: {label: probability}} in the order the paths were given (``cfg``: conf/classify.yaml,
    checked against :class:`ClassifySettings` unless it is one)."""
    cfg = typed(cfg, ClassifySettings)
    paths = image_paths(cfg.img)
    predictor = load_predictor(cfg.ckpt_path, cfg.runtime, precision=cfg.precision)
    return dict(zip(paths, predictor.classify(paths)))
