"""``Pipeline(cfg).run()``: from a search-terms CSV to a model ready to serve, in one command.

Round 1: scrape -> review -> tune (when ``tune.n_trials`` > 0) -> train -> eval. Each later round
(``rounds``) tops up the ``loop.weakest`` classes with the lowest ``loop.metric`` on val, each by
the images the round's learning curve says it needs (``loop.sizing=curve``, between
``loop.extra_images`` and ``loop.max_images``; ``fixed``: ``loop.extra_images``), from the engines'
related searches and the CSV's phrasings, then reviews, trains and evaluates again.

Every stage is an object (:mod:`imgclf.pipeline.stages`) that runs its command's own library
function (``scrape``/``top_up``, ``review``, ``train``, ``evaluate``) on a config composed from
``conf/<command>.yaml``, as the command would compose it, with the pipeline's shared keys (data
root, paths, backbone, seed) and the stage's ``overrides``. Tuning is the real multirun,
``imgclf train -m hparams_search=optuna``, in a process group of its own that ends with the stage.

Skipping (:mod:`imgclf.pipeline.state`): a stage is skipped when it finished before with the same
settings and the files it reads and writes are as it left them, so a stage that changes the
dataset or the model makes the stages that read them run again. A later round's top-up changes the
dataset the earlier rounds saw, so once a round has begun the rounds before it are history.

SIGINT and SIGTERM raise :class:`imgclf.process.Interrupted` in the stage in flight, whose clean-up runs
(the scraper closes Chromium, the sweep's process group is terminated); the stage stays
``started`` in the state, and the same command continues from it.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig

from imgclf.errors import ImgclfError
from imgclf.locks import exclusive
from imgclf.pipeline.settings import PipelineSettings
from imgclf.pipeline.stages import FIRST_ROUND, LATER_ROUNDS, Context, PipelineStage, Prepared, TuneStage
from imgclf.pipeline.state import State, now
from imgclf.process import Interrupted, StopSignals
from imgclf.review.reviewer import recorded_val_files
from imgclf.review.scan import dataset_files
from imgclf.scrape.weak_classes import weakest

log = logging.getLogger(__name__)

KEPT = "finished stages are kept"


class Pipeline:
    """One run of the pipeline over ``cfg`` (conf/pipeline.yaml as :class:`PipelineSettings`), inside
    the ``imgclf pipeline`` Hydra app (stage configs are composed with Hydra's compose API, and stage
    run folders go under ``paths.output_dir``).

    ``console`` shows the scraper's progress bars; ``on_stage(stage, status, record, details)`` is
    called after each stage (``status`` ran or skipped; ``details`` what its library function
    returned, for the entry point to print). :meth:`run` returns :meth:`summary`.
    """

    def __init__(
        self,
        cfg: PipelineSettings | DictConfig,
        console: Any = None,
        on_stage: Callable[[PipelineStage, str, dict[str, Any], Any], None] | None = None,
    ) -> None:
        self.cfg = cfg = PipelineSettings.from_config(cfg)  # bad settings fail before any stage
        self.on_stage = on_stage
        self.context = Context(cfg, State(Path(cfg.paths.model_dir) / "pipeline" / "state.json"), console)
        self.statuses: dict[str, str] = {}
        self._signals = StopSignals(self._interrupt)
        self._stage: str | None = None

    @property
    def state(self) -> State:
        return self.context.state

    def _interrupt(self, signum: int) -> NoReturn:
        """The first SIGINT or SIGTERM: raised in the stage in flight, whose clean-up then runs."""
        log.warning("%s received: stopping", signal.Signals(signum).name)
        raise Interrupted(signum, self._stage, KEPT)

    # -- the plan ------------------------------------------------------------------------------

    def plan(self) -> list[PipelineStage]:
        stages = [
            kind(1, self.context)
            for kind in FIRST_ROUND
            if kind is not TuneStage or self.cfg.tune.n_trials > 0
        ]
        for number in range(2, self.cfg.rounds + 1):
            stages += [kind(number, self.context) for kind in LATER_ROUNDS]
        return stages

    def run(self) -> dict[str, Any]:
        """Every stage in turn, holding the pipeline's lock: a second run of the same model folder
        fails at once, naming this one, rather than both writing the state and the model."""
        stages = self.plan()
        # Round 1 is prepared now, once: a misspelt override fails before an hour of scraping.
        # A later round's stages depend on the round before (its weakest classes): prepared then.
        prepared = {stage.key: stage.prepare() for stage in stages if stage.round == 1}
        with exclusive(self.state.path, "the pipeline state"):
            # Read again under the lock: a run that ended since __init__ may have changed it.
            self.context.state = State(self.state.path)
            return self._run(stages, prepared)

    def _run(self, stages: list[PipelineStage], prepared: dict[str, Prepared]) -> dict[str, Any]:
        started = [s.round for s in stages if s.name == "top_up" and self.state.get(s.key)]
        latest = max(started, default=1)
        self._signals.install()
        try:
            for stage in stages:
                self._stage = stage.label
                ready = prepared.get(stage.key) or stage.prepare()
                record = self.state.get(stage.key)
                history = stage.round < latest
                if stage.finished(record, ready, history):
                    why = f"round {latest} has begun" if history else "nothing changed since it finished"
                    log.info("%s: skipped, %s (%s)", stage.label, why, record["outcome"])
                    self.statuses[stage.key] = "skipped"
                    if self.on_stage:
                        self.on_stage(stage, "skipped", record, None)
                    continue
                self._execute(stage, ready, record)
        finally:
            self._signals.restore()
        return self.summary()

    def _execute(self, stage: PipelineStage, prepared: Prepared, previous: dict[str, Any] | None) -> None:
        log.info("%s: running", stage.label)
        record = {
            "round": stage.round,
            "stage": stage.name,
            "status": "started",
            "config": prepared.digest,
            "before": prepared.watch(),
            "started": now(),
        }
        self.state.put(stage.key, record)
        self.statuses[stage.key] = "started"
        clock = time.monotonic()
        try:
            ran = stage.run(prepared, previous, record)
        except Interrupted as exc:  # the scraper's own handling ended it: later signals wait too
            self._signals.received = exc.signum
            exc.during, exc.kept = stage.label, KEPT
            raise
        except ImgclfError as exc:
            record.update(status="failed", error=str(exc), seconds=round(time.monotonic() - clock, 1))
            self.state.put(stage.key, record)
            self.statuses[stage.key] = "failed"
            raise ImgclfError(f"{stage.label}: {exc}") from None
        finally:
            self._signals.install()  # (again: the scraper's event loop resets both signals)
        record.update(
            status="done",
            after=prepared.watch(),
            seconds=round(time.monotonic() - clock, 1),
            finished=now(),
            outcome=ran.outcome,
            result=ran.result,
        )
        self.state.put(stage.key, record)
        self.statuses[stage.key] = "ran"
        log.info("%s: %s (%.0f s)", stage.label, ran.outcome, record["seconds"])
        if self.on_stage:
            self.on_stage(stage, "ran", record, ran.details)

    # -- the summary ---------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What ran and what came of it, from the state (skipped stages' results included); a
        result of another shape than this version writes (a hand-edited state) is one clear error."""
        try:
            return self._summary()
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
            raise ImgclfError(
                f"{self.state.path}: a stage's result is not what imgclf writes ({type(exc).__name__}: "
                f"{exc}); delete that stage's entry from the file to run it again"
            ) from None

    def _summary(self) -> dict[str, Any]:
        plan = self.plan()
        stages, parts = [], {}
        for stage in plan:
            record = self.state.get(stage.key) or {}
            stages.append(
                {
                    "round": stage.round,
                    "stage": stage.name,
                    "status": self.statuses.get(stage.key, "not run"),
                    "seconds": record.get("seconds"),
                    "outcome": record.get("outcome") or record.get("error") or "",
                }
            )
            if record.get("result") is not None:
                parts.setdefault(stage.name, {})[stage.round] = stage.summary(record)
        evaluations = parts.get("eval", {})
        rounds = sorted({s.round for s in plan})
        accuracy = {
            n: {split: r["accuracy"] for split, r in (evaluations.get(n) or {}).items()} for n in rounds
        }
        metric = self.cfg.loop.metric
        scores = {
            n: {name: values[metric] for name, values in ev["val"]["per_class"].items()}
            for n, ev in evaluations.items()
        }
        recall = {
            n: {name: values["recall"] for name, values in ev["val"]["per_class"].items()}
            for n, ev in evaluations.items()
        }
        last = scores[max(scores)] if scores else {}
        trained = [result for _, result in sorted(parts.get("train", {}).items()) if isinstance(result, dict)]
        model = self.context.model
        return {
            "backbone": {k: trained[-1].get(k) for k in ("backbone", "weights")} if trained else None,
            "stages": stages,
            "images": self.image_counts(model),
            "review": parts.get("review", {}),
            "accuracy": accuracy,
            "recall": recall,
            "top_up": parts.get("top_up", {}),
            "metric": metric,
            "weakest": [{"class": name, metric: last[name]} for name in weakest(last, self.cfg.loop.weakest)],
            "model": str(model) if model.is_file() else None,
            "reports": str(self.context.folder),
        }

    def image_counts(self, model: Path) -> dict[str, dict[str, int]]:
        """Images per split and class now, with the model's held-out val split when there is no val/."""
        root = self.context.root
        if not (root / "train").is_dir():
            return {}
        try:
            layout, _ = dataset_files(root, recorded_val_files(str(model), root))
        except ImgclfError as exc:
            log.warning("cannot count the images: %s", exc)
            return {}
        return {split: {name: len(paths) for name, paths in files.items()} for split, files in layout.items()}
