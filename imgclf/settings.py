"""Settings as types: each command's config is checked against a dataclass (OmegaConf's structured
configs) next to the code that reads it (``imgclf/serving/settings.py``, ...). :func:`typed` is the
one check: a value of the wrong type, an unknown key or a value out of range stops the command
before any work, naming the key and what to give. Shared here: :class:`Paths`, :class:`DatasetRoot`,
:func:`at_least` and :func:`describe`.

Each schema says, with ``READ_ONLY``, what its library function is handed: the dataclass object
itself (``True``: for functions that only read values), or the structured ``DictConfig`` (typed
too: assigning a wrong type or a key the schema lacks fails), for functions that hand parts of it
on as configs (Hydra's ``instantiate``, ``.get`` on optional keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from imgclf.errors import ImgclfError


@dataclass
class Paths:
    """``conf/paths/default.yaml``: shared by every command (relative to where it runs)."""

    data_dir: str = "data"
    model_dir: str = "data/trained_model"
    log_dir: str = "logs"
    checkpoint_dir: str = "data/trained_model/checkpoints"
    cache_dir: str = "data/feature_cache"
    # the command's run folder; None where a config is composed without one (Hydra's compose API)
    output_dir: Optional[str] = "."


@dataclass
class DatasetRoot:
    """The dataset a command reads or writes: ``{root}/{train,val,test}/{class}/``."""

    root: str = "data/image_dataset"


@dataclass
class Schema:
    """What every command's settings class says of itself."""

    CONFIG: ClassVar[str]  # the file the settings compose from, for the error messages
    READ_ONLY: ClassVar[bool]


def at_least(*limits: tuple[str, Any, int]) -> None:
    """Each ``(key, value, minimum)``: a whole number of at least ``minimum``."""
    for key, value, minimum in limits:
        if value < minimum:
            raise ImgclfError(f"{key}={value}: give a whole number of at least {minimum}")


def describe(exc: OmegaConfBaseException) -> str:
    """OmegaConf's validation error as the key, the value given and what was wanted."""
    key: Any = getattr(exc, "full_key", None)
    message = str(exc).splitlines()[0]
    if isinstance(exc, ConfigKeyError):
        return f"{key}: no such setting"
    if isinstance(getattr(exc, "child_node", None), ListConfig):  # OmegaConf's words name its nodes
        return f"{key}: give a list, e.g. '{key}=[a,b]'"
    return f"{key}: {message}" if key else message


def typed(cfg: Any, schema: type[Schema]) -> Any:
    """``cfg`` checked against ``schema``: the dataclass object when ``schema.READ_ONLY``, else the
    structured ``DictConfig``. ``cfg`` is a command's composed config, with Hydra's node (then
    :func:`~imgclf.composition.settings` resolves it first) or without it and resolved; settings
    already typed by ``schema`` come back as they are, so that a library function can check what it
    is handed whether an entry point typed it or not."""
    if isinstance(cfg, schema) or (isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is schema):
        return cfg
    if "hydra" in cfg:  # composed with Hydra's node (the compose API's return_hydra_config)
        from imgclf.composition import settings

        cfg = settings(cfg)
    try:
        checked = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        value = OmegaConf.to_object(checked)  # runs __post_init__: the ranges and the choices
    except OmegaConfBaseException as exc:
        raise ImgclfError(f"{describe(exc)}; see {schema.CONFIG}") from None
    return value if schema.READ_ONLY else checked
