"""The offline demo dataset: scikit-learn's handwritten digits as image folders."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from imgclf.io import atomic_open

SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.2), ("test", 0.2))


def make_digits_dataset(
    root: str | Path,
    size: int = 64,
    seed: int = 0,
    labels: Iterable[int] = range(10),
    per_class: int | None = None,
) -> dict[str, int]:
    """Write ``{root}/{train,val,test}/{digit}/{digit}_{n}.png`` (stratified 60/20/20).

    ``labels`` and ``per_class`` (images per class before splitting) make smaller sets for
    tests. Existing files are left alone: a complete dataset is reused as it is.
    """
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {split: 0 for split, _ in SPLIT_FRACTIONS}
    for label in labels:
        indices = rng.permutation(np.flatnonzero(digits.target == label))[:per_class]
        bounds = np.cumsum([int(round(f * len(indices))) for _, f in SPLIT_FRACTIONS[:-1]])
        for (split, _), chunk in zip(SPLIT_FRACTIONS, np.split(indices, bounds)):
            folder = root / split / str(label)
            for index in chunk:
                path = folder / f"{label}_{index}.png"
                counts[split] += 1
                if path.exists():
                    continue
                # 0..16 ink values -> dark digits on white paper, upscaled smoothly
                pixels = (255 - digits.images[index] * (255 / 16)).astype(np.uint8)
                image = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC)
                with atomic_open(path, "wb") as handle:
                    image.save(handle, format="PNG")
    return counts
