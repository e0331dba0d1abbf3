"""From search terms to a model ready to serve, in one command (``scripts/pipeline.py``)."""

from imgclf.pipeline.runner import Pipeline, Stage

__all__ = ["Pipeline", "Stage"]
