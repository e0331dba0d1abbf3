"""``classify(cfg)``: ``{label: probability}`` for each image given on the command line."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig

from imgclf.inference.runtimes import load_predictor


def image_paths(img: Any) -> list[str]:
    if isinstance(img, (list, tuple, ListConfig)):
        return [str(p) for p in img]
    return [str(img)]


def classify(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """{path: {label: probability}} in the order the paths were given."""
    paths = image_paths(cfg.img)
    predictor = load_predictor(cfg.ckpt_path, cfg.runtime, precision=cfg.precision)
    return dict(zip(paths, predictor.classify(paths)))
