"""From search terms to a model ready to serve, in one command (``imgclf pipeline``): the
:class:`Pipeline` (:mod:`~imgclf.pipeline.runner`) runs the stage objects of
:mod:`~imgclf.pipeline.stages` in order, skipping what :mod:`~imgclf.pipeline.state` records as
done."""

from imgclf.pipeline.runner import Pipeline
from imgclf.pipeline.stages import PipelineStage

__all__ = ["Pipeline", "PipelineStage"]
