"""Helpers the test suite and the benchmarks share: child processes and servers
(:mod:`~imgclf.testing.processes`), a calibrated model (:mod:`~imgclf.testing.calibrated`), a
throw-away PostgreSQL (:mod:`~imgclf.testing.postgres`), the scraper's HTTPS fixture
(:mod:`~imgclf.testing.scrape_fixture`), and the repository's configs below.

Nothing in the library imports them. They read the repository's ``conf/`` and ``scripts/``, so
they work from a clone (``pip install -e .``), which is how the tests and benchmarks run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip locally, fail in CI, when something a test needs is missing."""
    import pytest

    if condition:
        return
    message = f"{what} is missing; `make test` installs it (see .ci/system-deps.sh)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def backbone_names() -> list[str]:
    """Every backbone ``model/backbone=`` offers: the configs in ``conf/model/backbone/``."""
    return sorted(p.stem for p in (REPO_ROOT / "conf" / "model" / "backbone").glob("*.yaml"))


def backbone_config(name: str) -> dict[str, Any]:
    """``conf/model/backbone/NAME.yaml`` as the plain mapping the model takes."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "model" / "backbone" / f"{name}.yaml"))
