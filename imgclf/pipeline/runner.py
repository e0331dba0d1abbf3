"""``Pipeline(cfg).run()``: from a search-terms CSV to a model ready to serve, in one command.

Round 1: scrape -> review -> tune (when ``tune.n_trials`` > 0) -> train -> eval. Each later round
(``rounds``) tops up the ``loop.weakest`` classes with the lowest ``loop.metric`` on val by
``loop.extra_images`` train images each (the engines' related searches and the CSV's phrasings),
then reviews, trains and evaluates again.

Every stage is its command's own library function (``scrape``/``top_up``, ``review``, ``train``,
``evaluate``) on a config composed from ``conf/<command>.yaml``, as the command would compose it,
with the pipeline's shared keys (data root, paths, backbone, seed) and the stage's ``overrides``.
Tuning is the real multirun, ``scripts/train.py -m hparams_search=optuna``, in a process group of
its own that ends with the pipeline.

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
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from imgclf.cli.hydra_edge import compose, settings, with_best_hparams
from imgclf.config import override
from imgclf.errors import ImgclfError
from imgclf.locks import exclusive
from imgclf.pipeline.state import State, config_digest, digest, file_digest, now, tree_digest
from imgclf.process import Interrupted, StopSignals, stop_process_group

log = logging.getLogger(__name__)

METRICS = ("recall", "f1")
KEPT = "finished stages are kept"


@dataclass(frozen=True)
class Stage:
    round: int
    name: str  # scrape, top_up, review, tune, train, eval

    @property
    def key(self) -> str:
        return f"{self.round}.{self.name}"

    @property
    def label(self) -> str:
        return f"round {self.round} {self.name.replace('_', '-')}"


@dataclass
class Prepared:
    """A stage ready to run: its configs (or command), the hash of its settings, the files it watches."""

    digest: str
    watch: Callable[[], dict[str, Any]]
    configs: dict[str, DictConfig] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def compose_stage(command: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """``conf/<command>.yaml`` with ``overrides``, as ``imgclf <command>`` would compose it."""
    return compose(
        command,
        overrides,
        output_dir,
        fix=f"fix {command}.overrides (overrides: {' '.join(overrides)})",
        what=f"the {command} stage's settings",
    )


def image_count(folder: Path, root: Path) -> int:
    """The images in a class folder, leaving out links that lead out of the dataset ``root``."""
    from imgclf.data.images import is_image_file
    from imgclf.paths import inside

    if not folder.is_dir():
        return 0
    return sum(
        1
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and not (p.is_symlink() and not inside(p, root))
        and is_image_file(p)
    )


class Pipeline:
    """One run of the pipeline over ``cfg`` (conf/pipeline.yaml), inside a Hydra app (stage configs
    are composed with Hydra's compose API, and stage run folders go under ``paths.output_dir``).

    ``console`` shows the scraper's progress bars; ``on_stage(stage, status, record, details)`` is
    called after each stage (``status`` ran or skipped; ``details`` what its library function
    returned, for the entry point to print). :meth:`run` returns :meth:`summary`.
    """

    def __init__(
        self,
        cfg: DictConfig,
        console: Any = None,
        on_stage: Callable[[Stage, str, dict[str, Any], Any], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.console = console
        self.on_stage = on_stage
        check_settings(cfg)
        self.root = Path(cfg.data.root)
        self.model_dir = Path(cfg.paths.model_dir)
        self.folder = self.model_dir / "pipeline"
        self.state = State(self.folder / "state.json")
        self.output_dir = Path(cfg.paths.output_dir)
        self.statuses: dict[str, str] = {}
        self._signals = StopSignals(self._interrupt)
        self._stage: str | None = None

    def _interrupt(self, signum: int) -> NoReturn:
        """The first SIGINT or SIGTERM: raised in the stage in flight, whose clean-up then runs."""
        log.warning("%s received: stopping", signal.Signals(signum).name)
        raise Interrupted(signum, self._stage, KEPT)

    # -- the plan ------------------------------------------------------------------------------

    def plan(self) -> list[Stage]:
        stages = [Stage(1, "scrape"), Stage(1, "review")]
        if self.cfg.tune.n_trials > 0:
            stages.append(Stage(1, "tune"))
        stages += [Stage(1, "train"), Stage(1, "eval")]
        for number in range(2, self.cfg.rounds + 1):
            stages += [Stage(number, name) for name in ("top_up", "review", "train", "eval")]
        return stages

    def run(self) -> dict[str, Any]:
        """Every stage in turn, holding the pipeline's lock: a second run of the same model folder
        fails at once, naming this one, rather than both writing the state and the model."""
        stages = self.plan()
        for stage in stages:  # a misspelt override fails now, not after an hour of scraping
            if stage.round == 1:
                getattr(self, f"_prepare_{stage.name}")(stage)
        with exclusive(self.state.path, "the pipeline state"):
            # Read again under the lock: a run that ended since __init__ may have changed it.
            self.state = State(self.state.path)
            return self._run(stages)

    def _run(self, stages: list[Stage]) -> dict[str, Any]:
        started = [s.round for s in stages if s.name == "top_up" and self.state.get(s.key)]
        latest = max(started, default=1)
        self._signals.install()
        try:
            for stage in stages:
                self._stage = stage.label
                prepared = getattr(self, f"_prepare_{stage.name}")(stage)
                record = self.state.get(stage.key)
                history = stage.round < latest
                if self._finished(stage, record, prepared, history):
                    why = f"round {latest} has begun" if history else "nothing changed since it finished"
                    log.info("%s: skipped, %s (%s)", stage.label, why, record["outcome"])
                    self.statuses[stage.key] = "skipped"
                    if self.on_stage:
                        self.on_stage(stage, "skipped", record, None)
                    continue
                self._execute(stage, prepared, record)
        finally:
            self._signals.restore()
        return self.summary()

    @staticmethod
    def _finished(stage: Stage, record: dict[str, Any] | None, prepared: Prepared, history: bool) -> bool:
        """Done before, with the same settings, and its files as it left them. A round before the
        latest is history: its stages saw a dataset the top-ups have changed since and made models
        that are gone, so they stay done; but a new CSV still has to be scraped, and new tuning
        settings tuned (the latest round then trains with the result)."""
        if not record or record["status"] != "done":
            return False
        if history:
            return stage.name not in ("scrape", "tune") or record["config"] == prepared.digest
        return record["config"] == prepared.digest and prepared.watch() == record["after"]

    def _execute(self, stage: Stage, prepared: Prepared, previous: dict[str, Any] | None) -> None:
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
            result, outcome, details = getattr(self, f"_run_{stage.name}")(stage, prepared, previous, record)
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
            self._signals.install()
        record.update(
            status="done",
            after=prepared.watch(),
            seconds=round(time.monotonic() - clock, 1),
            finished=now(),
            outcome=outcome,
            result=result,
        )
        self.state.put(stage.key, record)
        self.statuses[stage.key] = "ran"
        log.info("%s: %s (%.0f s)", stage.label, outcome, record["seconds"])
        if self.on_stage:
            self.on_stage(stage, "ran", record, details)

    # -- what every stage shares -----------------------------------------------------------------

    def shared(self, command: str) -> list[str]:
        """The pipeline's keys that each command's config has too."""
        cfg = self.cfg
        overrides = [override("data.root", cfg.data.root)]
        # Not checkpoint_dir: a sweep gives each trial its own, under the trial's run folder.
        overrides += [
            override(f"paths.{key}", cfg.paths[key])
            for key in ("data_dir", "model_dir", "log_dir", "cache_dir")
        ]
        if command == "scrape":
            overrides.append(override("searchterms", cfg.searchterms))
        if command in ("train", "review"):
            overrides += [
                f"model/backbone={cfg.model.backbone}",
                override("model.pretrained", cfg.model.pretrained),
                override("model.weights_path", cfg.model.weights_path),
                override("seed", cfg.seed),
            ]
        return overrides

    def stage_overrides(self, section: str) -> list[str]:
        return [str(o) for o in self.cfg[section].overrides]

    def run_dir(self, stage: Stage) -> Path:
        return self.output_dir / f"round{stage.round}_{stage.name}"

    def round_dir(self, number: int) -> Path:
        return self.folder / f"round{number}"

    def metrics_path(self, number: int, split: str) -> Path:
        return self.round_dir(number) / f"eval_{split}" / "metrics.json"

    def dataset(self) -> str | None:
        return tree_digest(self.root)

    # -- scrape and top-up ---------------------------------------------------------------------------

    def _scrape_config(self, stage: Stage) -> DictConfig:
        return compose_stage(
            "scrape", self.shared("scrape") + self.stage_overrides("scrape"), self.run_dir(stage)
        )

    def _csv_digest(self, cfg: DictConfig) -> str | None:
        from imgclf.scrape.searchterms import resolve_searchterms

        return file_digest(resolve_searchterms(cfg.searchterms), contents=True)

    def _prepare_scrape(self, stage: Stage) -> Prepared:
        from imgclf.scrape.manifest import MANIFEST_NAME

        cfg = self._scrape_config(stage)
        # The CSV, the settings and the manifest (gone with the dataset, changed by another scrape):
        # images reviewed away or added by hand are the review's business, not a reason to scrape.
        return Prepared(
            digest([config_digest(cfg, ignore=("top_up",)), self._csv_digest(cfg)]),
            lambda: {"manifest": file_digest(self.root / MANIFEST_NAME)},
            {"scrape": cfg},
        )

    def _run_scrape(self, stage, prepared, previous, record):
        from imgclf.scrape.scraper import scrape

        cfg = prepared.configs["scrape"]
        summary = scrape(settings(cfg), self.console)
        totals = summary["totals"]
        result = {
            "downloaded": totals["downloaded"],
            "short": totals["short"],
            "terms": len(summary["terms"]),
        }
        outcome = f"{totals['downloaded']} images saved"
        if totals["short"]:
            outcome += f", {totals['short']} of {len(summary['terms'])} search terms short"
        return result, outcome, summary

    def _prepare_top_up(self, stage: Stage) -> Prepared:
        from imgclf.scrape.scraper import weakest_classes

        cfg = self._scrape_config(stage)
        loop = self.cfg.loop
        metrics = self.metrics_path(stage.round - 1, "val")
        classes = weakest_classes(metrics, loop.weakest, loop.metric)
        settings = [config_digest(cfg, ignore=("top_up",)), self._csv_digest(cfg), loop.extra_images, classes]
        return Prepared(
            digest(settings), dict, {"scrape": cfg}, extra={"classes": classes, "metrics": str(metrics)}
        )

    def _run_top_up(self, stage, prepared, previous, record):
        from imgclf.scrape.scraper import top_up

        cfg = prepared.configs["scrape"]
        classes = prepared.extra["classes"]
        train = self.root / "train"
        resuming = (
            previous
            and previous["status"] == "started"
            and previous["config"] == prepared.digest
            and all(
                isinstance(previous.get(key, {}).get(name), int)
                for key in ("had", "targets")
                for name in classes
            )
        )
        if resuming:
            had, targets = previous["had"], previous["targets"]
            log.info("%s: continuing the interrupted top-up towards %s", stage.label, targets)
        else:
            had = {name: image_count(train / name, self.root) for name in classes}
            targets = {name: had[name] + int(self.cfg.loop.extra_images) for name in classes}
        record.update(had=had, targets=targets)
        self.state.put(stage.key, record)  # a rerun after a kill aims at the same numbers
        missing = {name: targets[name] - image_count(train / name, self.root) for name in classes}
        summaries = []
        by_need: dict[int, list[str]] = {}
        for name, need in missing.items():
            if need > 0:
                by_need.setdefault(need, []).append(name)
        for need, names in by_need.items():
            summaries.append(top_up(settings(cfg), names, need, self.console))
        per_class = {}
        for name in classes:
            searched = [
                s for summary in summaries for s in summary["classes"].get(name, {}).get("searches", [])
            ]
            have = image_count(train / name, self.root)
            per_class[name] = {
                "had": had[name],
                "added": have - had[name],
                "have": have,
                "wanted": targets[name],
                "searches": searched,
            }
        metric = self.cfg.loop.metric
        scores = _per_class_scores(prepared.extra["metrics"], metric)
        result = {"classes": per_class, "metric": metric, "scores": scores}
        added = sum(row["added"] for row in per_class.values())
        weakest = ", ".join(f"{name} ({metric} {scores[name]:.2f})" for name in classes)
        outcome = f"{added} images added to {weakest}"
        return result, outcome, {"classes": per_class, "summaries": summaries}

    # -- review ----------------------------------------------------------------------------------

    def _prepare_review(self, stage: Stage) -> Prepared:
        review = self.cfg.review
        overrides = self.shared("review") + [
            override("fix", review.fix),
            f"fix_reasons=[{','.join(review.fix_reasons)}]",
            override("report_dir", self.round_dir(stage.round) / "review"),
        ]
        cfg = compose_stage("review", overrides + self.stage_overrides("review"), self.run_dir(stage))
        return Prepared(config_digest(cfg), lambda: {"dataset": self.dataset()}, {"review": cfg})

    def _run_review(self, stage, prepared, previous, record):
        from imgclf.review.reviewer import review

        cfg = prepared.configs["review"]
        found = review(settings(cfg))
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
        return result, outcome, found

    # -- tune and train ------------------------------------------------------------------------------

    def _train_overrides(self) -> list[str]:
        return self.shared("train") + self.stage_overrides("train")

    def _best_hparams(self) -> Path:
        from imgclf.tuning.best_hparams import BEST_HPARAMS

        return self.model_dir / BEST_HPARAMS

    def _prepare_tune(self, stage: Stage) -> Prepared:
        arguments = [
            "-m",
            "hparams_search=optuna",
            f"hydra.sweeper.n_trials={int(self.cfg.tune.n_trials)}",
            *self._train_overrides(),
            *self.stage_overrides("tune"),
        ]
        # Composed here so that a bad override fails now, not in the sweep.
        compose_stage("train", [a for a in arguments if a != "-m"], self.run_dir(stage))

        def watch() -> dict[str, Any]:
            return {
                "dataset": self.dataset(),
                "best_hparams": file_digest(self._best_hparams(), contents=True),
            }

        return Prepared(digest(arguments), watch, command=arguments)

    def _run_tune(self, stage, prepared, previous, record):
        import shlex

        from imgclf.tuning.best_hparams import read_best_hparams

        command = [sys.executable, "-m", "imgclf", "train", *prepared.command]
        log.info("%s: $ imgclf %s", stage.label, shlex.join(command[3:]))
        process = subprocess.Popen(command, start_new_session=True)
        try:
            code = process.wait()
        finally:
            stop_process_group(process)
        if code != 0:
            raise ImgclfError(
                f"the sweep (scripts/train.py -m hparams_search=optuna) ended with status {code}; "
                "its messages are above, and the same command continues its study"
            )
        document = read_best_hparams(self._best_hparams())
        result = {
            "value": document.get("value"),
            "params": document["params"],
            "trials": document.get("n_trials"),
        }
        outcome = f"best {document.get('metric', 'val/acc')} {document.get('value', float('nan')):.4f}"
        return result, outcome, document

    def _prepare_train(self, stage: Stage) -> Prepared:
        cfg = compose_stage("train", self._train_overrides(), self.run_dir(stage))

        def watch() -> dict[str, Any]:
            return {
                "dataset": self.dataset(),
                "best_hparams": file_digest(self._best_hparams(), contents=True),
                "model": file_digest(self.model_dir / "model.ckpt"),
            }

        return Prepared(config_digest(cfg, ignore=("resume",)), watch, {"train": cfg})

    def _run_train(self, stage, prepared, previous, record):
        from imgclf.training.train import train

        cfg = prepared.configs["train"]
        inputs = ("dataset", "best_hparams")
        # Lightning's checkpoints are those of whatever ran last with these settings, perhaps on a
        # smaller dataset (a round ago): continue from them only when this very stage was cut short.
        resume = bool(
            cfg.resume
            and previous
            and previous["status"] == "started"
            and previous["config"] == prepared.digest
            and all(previous["before"].get(k) == record["before"][k] for k in inputs)
        )
        overrides = self._train_overrides()
        if not resume:  # composed again, not edited: interpolations follow the key
            overrides.append("resume=false")
            cfg = compose_stage("train", overrides, self.run_dir(stage))
        # best_hparams.yaml (a tune stage's, or an earlier sweep's) as `imgclf train` applies it
        metrics = train(settings(with_best_hparams(cfg, overrides)))
        if "model" not in metrics:
            raise ImgclfError(
                "training saved no model; leave save_model and trainer.fast_dev_run as they are"
            )
        keys = ("train/acc", "val/acc", "best_epoch", "model", "backbone", "weights")
        result = {key: metrics[key] for key in keys if key in metrics}
        outcome = f"val accuracy {metrics['val/acc']:.4f}"
        return result, outcome, metrics

    # -- evaluate ------------------------------------------------------------------------------------

    def _prepare_eval(self, stage: Stage) -> Prepared:
        splits = ["val"] + (["test"] if (self.root / "test").is_dir() else [])
        configs = {}
        for split in splits:
            overrides = self.shared("eval") + [
                f"split={split}",
                override("report_dir", self.metrics_path(stage.round, split).parent),
            ]
            configs[split] = compose_stage(
                "eval", overrides + self.stage_overrides("eval"), self.run_dir(stage) / split
            )

        def watch() -> dict[str, Any]:
            return {
                "dataset": self.dataset(),
                "model": file_digest(self.model_dir / "model.ckpt"),
                "reports": [file_digest(self.metrics_path(stage.round, s)) for s in splits],
            }

        return Prepared(digest([config_digest(c) for c in configs.values()]), watch, configs)

    def _run_eval(self, stage, prepared, previous, record):
        from imgclf.inference.evaluate import evaluate

        result, details = {}, {}
        for split, cfg in prepared.configs.items():
            metrics = evaluate(settings(cfg))
            details[split] = metrics
            result[split] = {
                "accuracy": metrics["accuracy"],
                "num_images": metrics["num_images"],
                "per_class": metrics["per_class"],
                "report_dir": metrics["report_dir"],
            }
        outcome = ", ".join(f"{split} accuracy {r['accuracy']:.4f}" for split, r in result.items())
        return result, outcome, details

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
        stages = []
        for stage in self.plan():
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
        rounds = sorted({s.round for s in self.plan()})
        evaluations = {n: (self.state.get(f"{n}.eval") or {}).get("result") for n in rounds}
        accuracy = {
            n: {split: r["accuracy"] for split, r in (ev or {}).items()} for n, ev in evaluations.items()
        }
        metric = self.cfg.loop.metric
        scores = {
            n: {name: values[metric] for name, values in ev["val"]["per_class"].items()}
            for n, ev in evaluations.items()
            if ev
        }
        recall = {
            n: {name: values["recall"] for name, values in ev["val"]["per_class"].items()}
            for n, ev in evaluations.items()
            if ev
        }
        top_ups = {
            n: record["result"]["classes"]
            for n in rounds
            if (record := self.state.get(f"{n}.top_up")) and record.get("result")
        }
        quarantined = {
            n: record["result"]
            for n in rounds
            if (record := self.state.get(f"{n}.review")) and record.get("result")
        }
        last = scores[max(scores)] if scores else {}
        from imgclf.scrape.scraper import weakest

        weakest_names = weakest(last, self.cfg.loop.weakest)
        model = self.model_dir / "model.ckpt"
        trained = [
            record["result"]
            for n in rounds
            if (record := self.state.get(f"{n}.train")) and isinstance(record.get("result"), dict)
        ]
        return {
            "backbone": {k: trained[-1].get(k) for k in ("backbone", "weights")} if trained else None,
            "stages": stages,
            "images": self.image_counts(model),
            "review": quarantined,
            "accuracy": accuracy,
            "recall": recall,
            "top_up": top_ups,
            "metric": metric,
            "weakest": [{"class": name, metric: last[name]} for name in weakest_names],
            "model": str(model) if model.is_file() else None,
            "reports": str(self.folder),
        }

    def image_counts(self, model: Path) -> dict[str, dict[str, int]]:
        """Images per split and class now, with the model's held-out val split when there is no val/."""
        from imgclf.review.reviewer import recorded_val_files
        from imgclf.review.scan import dataset_files

        if not (self.root / "train").is_dir():
            return {}
        try:
            layout, _ = dataset_files(self.root, recorded_val_files(str(model), self.root))
        except ImgclfError as exc:
            log.warning("cannot count the images: %s", exc)
            return {}
        return {split: {name: len(paths) for name, paths in files.items()} for split, files in layout.items()}


def _per_class_scores(metrics_path: str, metric: str) -> dict[str, float]:
    import json

    per_class = json.loads(Path(metrics_path).read_text(encoding="utf-8"))["per_class"]
    return {name: values[metric] for name, values in per_class.items()}


def check_settings(cfg: DictConfig) -> None:
    """Fail before any stage on settings that cannot work."""
    from imgclf.scrape.searchterms import read_searchterms, resolve_searchterms

    def whole(key: str, minimum: int) -> int:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ImgclfError(f"{key}={value}: give a whole number of at least {minimum}")
        return value

    whole("rounds", 1)
    whole("tune.n_trials", 0)
    whole("loop.weakest", 1)
    whole("loop.extra_images", 1)
    if cfg.loop.metric not in METRICS:
        raise ImgclfError(f"loop.metric={cfg.loop.metric}: use recall or f1")
    for section in ("scrape", "review", "tune", "train", "eval"):
        overrides = cfg[section].overrides
        if not OmegaConf.is_list(overrides) or not all(isinstance(o, str) for o in overrides):
            raise ImgclfError(
                f"{section}.overrides must be a list of key=value strings, e.g. "
                f"'{section}.overrides=[\"data.num_workers=0\"]'"
            )
    if cfg.review.fix not in (None, "quarantine"):
        raise ImgclfError(f"review.fix={cfg.review.fix}: use quarantine, or null to only report")
    from imgclf.review.findings import check_reasons

    check_reasons(list(cfg.review.fix_reasons))
    read_searchterms(resolve_searchterms(cfg.searchterms))
