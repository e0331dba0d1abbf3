"""Each round's evaluation of the new model on val, and on test when the dataset has one."""

from __future__ import annotations

from typing import Any

from imgclf.composition import settings
from imgclf.config import override
from imgclf.inference.evaluate import evaluate
from imgclf.inference.settings import EvalSettings
from imgclf.pipeline.stages.stage import PipelineStage, Prepared, Ran, Record
from imgclf.pipeline.state import config_digest, digest, file_digest

SPLITS = ("val", "test")


class EvalStage(PipelineStage):
    """:func:`imgclf.inference.evaluate.evaluate` per split; the reports go to the round's folder,
    where the next round's top-up reads the val metrics."""

    name = "eval"

    def prepare(self) -> Prepared:
        """Both splits' settings: test/ may only appear with the scrape, after this is prepared;
        :meth:`run` evaluates the splits the dataset has then (the dataset is watched)."""
        context = self.context
        loop_sized = context.cfg.loop.sizing == "curve" and context.cfg.rounds > 1
        configs = {}
        for split in SPLITS:
            overrides = context.shared("eval") + [
                f"split={split}",
                override("report_dir", context.metrics_path(self.round, split).parent),
            ]
            if split == "val" and loop_sized:  # the next round's top-up sizes itself by it
                overrides.append("curve=true")
            configs[split] = self.compose("eval", overrides + context.overrides("eval"), self.run_dir / split)

        def watch() -> dict[str, Any]:
            return {
                "dataset": context.dataset(),
                "model": file_digest(context.model),
                "reports": [file_digest(context.metrics_path(self.round, s)) for s in self.splits()],
            }

        return Prepared(digest([config_digest(c) for c in configs.values()]), watch, configs)

    def splits(self) -> list[str]:
        return [split for split in SPLITS if split == "val" or (self.context.root / split).is_dir()]

    def run(self, prepared: Prepared, previous: Record | None, record: Record) -> Ran:
        result, details = {}, {}
        for split in self.splits():
            metrics = evaluate(settings(prepared.configs[split], EvalSettings))
            details[split] = metrics
            result[split] = {
                "accuracy": metrics["accuracy"],
                "num_images": metrics["num_images"],
                "per_class": metrics["per_class"],
                "report_dir": metrics["report_dir"],
            }
        outcome = ", ".join(f"{split} accuracy {r['accuracy']:.4f}" for split, r in result.items())
        return Ran(result, outcome, details)
