"""Each round's review of the dataset: flag, and quarantine what needs no judgement."""

from __future__ import annotations

from collections import Counter

from imgclf.composition import settings
from imgclf.config import override
from imgclf.pipeline.stages.stage import PipelineStage, Prepared, Ran, Record
from imgclf.pipeline.state import config_digest
from imgclf.review.reviewer import review
from imgclf.review.settings import ReviewSettings


class ReviewStage(PipelineStage):
    """:func:`imgclf.review.reviewer.review` with the pipeline's ``review.fix`` and ``fix_reasons``;
    its report goes to the round's folder."""

    name = "review"

    def prepare(self) -> Prepared:
        context = self.context
        review_cfg = context.cfg.review
        overrides = context.shared("review") + [
            override("fix", review_cfg.fix),
            f"fix_reasons=[{','.join(review_cfg.fix_reasons)}]",
            override("report_dir", context.round_dir(self.round) / "review"),
        ]
        cfg = self.compose("review", overrides + context.overrides("review"))
        return Prepared(config_digest(cfg), lambda: {"dataset": context.dataset()}, {"review": cfg})

    def run(self, prepared: Prepared, previous: Record | None, record: Record) -> Ran:
        found = review(settings(prepared.configs["review"], ReviewSettings))
        flags = Counter(flag.reason for flag in found["flags"])
        moved = Counter(reason for entry in found["quarantined"] for reason in entry["reasons"])
        result = {
            "images": found["images"],
            "flagged": dict(flags),
            "quarantined": dict(moved),
            "report": found["report"],
        }
        moved_files = {entry["path"] for entry in found["quarantined"]}
        listed = {flag.path for flag in found["flags"]} - moved_files
        outcome = f"{len(moved_files)} files quarantined"
        if listed:
            outcome += f", {len(listed)} more flagged in the report"
        return Ran(result, outcome, found)
