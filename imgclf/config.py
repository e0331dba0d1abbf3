"""Building objects from configs with Hydra's instantiate, limited to trusted targets."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from imgclf.errors import user_error

log = logging.getLogger(__name__)

# A config may only name classes from these packages: a config file is not a way to run code.
TRUSTED_TARGETS = ["imgclf.*", "torch.optim.*", "pytorch_lightning.*", "lightning.*"]


def build(conf: Any, **kwargs: Any) -> Any:
    """``instantiate`` with plain dicts and lists as arguments (checkpoints stay weights-only).

    A user error raised while the config resolves (a resolver's) comes out as itself.
    """
    try:
        return instantiate(conf, _execution_whitelist_=TRUSTED_TARGETS, _convert_="all", **kwargs)
    except Exception as exc:
        error = user_error(exc)
        if error is None or error is exc:
            raise
        raise error from None


def build_all(group: DictConfig | None, kind: str) -> list[Any]:
    """Every ``_target_`` entry of a config group (callbacks, loggers), in order."""
    objects = []
    for conf in (group or {}).values():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info("Instantiating %s <%s>", kind, conf._target_)
            objects.append(build(conf))
    return objects
