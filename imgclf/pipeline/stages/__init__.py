"""The pipeline's stages, one class each: what it composes and watches (``prepare``), what it does
(``run``) and what the summary shows of it (``summary``).

Round 1 is :data:`FIRST_ROUND` (the tune stage only when ``tune.n_trials`` > 0), every later round
:data:`LATER_ROUNDS`.
"""

from imgclf.pipeline.stages.eval_stage import EvalStage
from imgclf.pipeline.stages.review_stage import ReviewStage
from imgclf.pipeline.stages.scrape_stage import ScrapeStage, TopUpStage
from imgclf.pipeline.stages.stage import Context, PipelineStage, Prepared, Ran
from imgclf.pipeline.stages.train_stage import TrainStage, TuneStage

FIRST_ROUND: tuple[type[PipelineStage], ...] = (ScrapeStage, ReviewStage, TuneStage, TrainStage, EvalStage)
LATER_ROUNDS: tuple[type[PipelineStage], ...] = (TopUpStage, ReviewStage, TrainStage, EvalStage)

__all__ = [
    "FIRST_ROUND",
    "LATER_ROUNDS",
    "Context",
    "EvalStage",
    "PipelineStage",
    "Prepared",
    "Ran",
    "ReviewStage",
    "ScrapeStage",
    "TopUpStage",
    "TrainStage",
    "TuneStage",
]
