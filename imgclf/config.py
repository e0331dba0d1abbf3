"""Building objects from configs with Hydra's instantiate, limited to an allow-list of exact classes."""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from imgclf.errors import ImgclfError, user_error

log = logging.getLogger(__name__)


def public_classes(module: ModuleType, base: type) -> dict[str, type]:
    """The concrete subclasses of ``base`` a module exports, by the name a config spells them."""
    return {
        f"{module.__name__}.{name}": value
        for name in module.__all__
        if inspect.isclass(value := getattr(module, name)) and issubclass(value, base) and value is not base
    }


@functools.cache
def train_targets() -> dict[str, type]:
    """What a training config may build. A config file is data, not a way to run code: it may
    only name these classes, spelt exactly so, and each name is resolved again when it is built
    and must still be the class listed here. (Imported on first use: the sweeper plugin imports
    this module whenever Hydra starts.)"""
    import pytorch_lightning as pl
    import torch.optim
    import torch.optim.lr_scheduler
    from pytorch_lightning import callbacks, loggers

    from imgclf.data.datamodule import ImageFolderDataModule
    from imgclf.training.module import ClassifierModule

    return {
        "imgclf.training.module.ClassifierModule": ClassifierModule,
        "imgclf.data.datamodule.ImageFolderDataModule": ImageFolderDataModule,
        "pytorch_lightning.Trainer": pl.Trainer,
        "pytorch_lightning.callbacks.ModelCheckpoint": callbacks.ModelCheckpoint,
        "pytorch_lightning.callbacks.EarlyStopping": callbacks.EarlyStopping,
        "pytorch_lightning.callbacks.LearningRateMonitor": callbacks.LearningRateMonitor,
        "pytorch_lightning.callbacks.RichProgressBar": callbacks.RichProgressBar,
        "pytorch_lightning.callbacks.RichModelSummary": callbacks.RichModelSummary,
        "pytorch_lightning.loggers.CSVLogger": loggers.CSVLogger,
        "pytorch_lightning.loggers.TensorBoardLogger": loggers.TensorBoardLogger,
        **public_classes(torch.optim, torch.optim.Optimizer),
        **public_classes(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler),
    }


def allowed_names(allowed: Mapping[str, type]) -> str:
    """``a.b: C, D; e: F``: the allow-list on one line, grouped by module."""
    modules: dict[str, list[str]] = {}
    for name in sorted(allowed):
        module, _, cls = name.rpartition(".")
        modules.setdefault(module, []).append(cls)
    return "; ".join(f"{module}: {', '.join(names)}" for module, names in modules.items())


def check_target(key: str, target: Any, allowed: Mapping[str, type]) -> None:
    if not isinstance(target, str) or target not in allowed:
        raise ImgclfError(
            f"{key}: {target!r} is not a class a config may build; allowed: {allowed_names(allowed)}"
        )
    # The spelling is listed; what it names must still be that class (not a module attribute
    # replaced at run time).
    try:
        resolved = get_class(target)
    except (ImportError, ValueError) as exc:
        raise ImgclfError(f"{key}: {target!r} cannot be imported: {exc}") from None
    if resolved is not allowed[target]:
        raise ImgclfError(f"{key}: {target!r} resolves to {resolved!r}, not the allowed class")


def check_targets(conf: Any, allowed: Mapping[str, type] | None = None, where: str = "") -> None:
    """Refuse any ``_target_`` in ``conf``, however deeply nested, that is not in ``allowed``.

    Interpolations are resolved first, as ``instantiate`` resolves them, so a ``${...}`` cannot
    hide a target. ``allowed`` is :func:`train_targets` unless given; ``where`` is ``conf``'s key
    path in the composed config (``"model"``), which the error names.
    """
    allowed = train_targets() if allowed is None else allowed
    if isinstance(conf, (DictConfig, ListConfig)):
        conf = OmegaConf.to_container(conf, resolve=True)
    prefix = f"{where}." if where else ""
    if isinstance(conf, Mapping):
        for key, value in conf.items():
            if key == "_target_":
                check_target(f"{prefix}_target_", value, allowed)
            else:
                check_targets(value, allowed, f"{prefix}{key}")
    elif isinstance(conf, (list, tuple)):
        for index, value in enumerate(conf):
            check_targets(value, allowed, f"{prefix}{index}")


def build(conf: Any, allowed: Mapping[str, type] | None = None, where: str = "", **kwargs: Any) -> Any:
    """``instantiate`` of allowed classes only, with plain dicts and lists as arguments
    (checkpoints stay weights-only). Hydra's exact execution whitelist checks once more.

    A user error raised while the config resolves (a resolver's) comes out as itself.
    """
    allowed = train_targets() if allowed is None else allowed
    try:
        check_targets(conf, allowed, where)
        return instantiate(conf, _execution_whitelist_=list(allowed), _convert_="all", **kwargs)
    except Exception as exc:
        error = user_error(exc)
        if error is None or error is exc:
            raise
        raise error from None


def build_all(group: DictConfig | None, kind: str, where: str) -> list[Any]:
    """Every ``_target_`` entry of the config group at key path ``where`` (``"callbacks"``,
    ``"logger"``), in order."""
    objects = []
    for name, conf in (group or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info("Instantiating %s <%s>", kind, conf._target_)
            objects.append(build(conf, where=f"{where}.{name}"))
    return objects


def override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's override grammar, read back as ``value`` unchanged: strings quoted
    (so that ``"1e-3"`` or ``"true"`` stay strings and any path survives), except plain paths."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{key}={value}"
    text = str(value)
    if "/" in text and re.fullmatch(r"[A-Za-z0-9_./-]+", text):  # a plain path reads best bare
        return f"{key}={text}"
    # Hydra unescapes backslashes only before a quote or at the end of a quoted string.
    escaped = ""
    for index, char in enumerate(text):
        following = text[index + 1 :].lstrip("\\")
        if char == "\\" and (not following or following[0] == "'"):
            escaped += "\\\\"
        elif char == "'":
            escaped += "\\'"
        else:
            escaped += char
    return f"{key}='{escaped}'"
