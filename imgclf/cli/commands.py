"""One function per command, each a Hydra app on ``conf/<command>.yaml``: ``imgclf train ...`` and
``python scripts/train.py ...`` both call :func:`train` here. Each composes its config, calls its
library function and prints what :mod:`imgclf.cli.reports` makes of the result."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from typing import Any

from omegaconf import DictConfig

from imgclf.cli import reports
from imgclf.cli.hydra_edge import command, quiet_lightning_tips, run
from imgclf.composition import running, settings
from imgclf.errors import ImgclfError
from imgclf.process import exits_cleanly

SERVER_LOG_FORMAT = "%(asctime)s - %(processName)s[%(process)d] - %(name)s - %(levelname)s - %(message)s"


@command("scrape")
def scrape(cfg: DictConfig) -> None:
    """Build ``data/image_dataset/{train,val,test}/{class}/`` from a search-terms CSV, or top up the
    weakest classes (``top_up.weakest=N top_up.from=PATH/metrics.json``)."""
    from rich.console import Console

    from imgclf.scrape.report import print_summary, top_up_table
    from imgclf.scrape.scraper import scrape as scrape_dataset
    from imgclf.scrape.scraper import top_up
    from imgclf.scrape.settings import ScrapeSettings
    from imgclf.scrape.weak_classes import top_up_sizes, weakest_classes

    # httpx logs every request at INFO, which would bury the progress bars.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    console = Console()
    # a Ctrl+C before any download starts (the CSV and the dataset are only read) undoes nothing
    with exits_cleanly():
        cfg = settings(running(cfg), ScrapeSettings)
        if cfg.top_up["from"] is not None or cfg.top_up.weakest:
            if cfg.top_up["from"] is None:
                raise ImgclfError(
                    "top_up.weakest needs top_up.from=PATH/metrics.json (written by "
                    "python scripts/eval.py split=val)"
                )
            classes = weakest_classes(cfg.top_up["from"], cfg.top_up.weakest, cfg.top_up.metric)
            console.print(
                f"topping up the {len(classes)} classes with the lowest "
                f"{cfg.top_up.metric}: {', '.join(classes)}"
            )
            ask = cfg.top_up
            sizes = top_up_sizes(
                ask["from"], classes, ask.sizing, ask.extra_images, ask.max_images, ask.target_recall
            )
            summary = top_up(cfg, classes, {name: size.extra for name, size in sizes.items()}, console)
            for name, size in sizes.items():
                summary["classes"][name]["sizing"] = size.as_dict()
            print_summary(console, summary)
            console.print(top_up_table(summary["classes"]))
        else:
            print_summary(console, scrape_dataset(cfg, console))


@command("review")
def review(cfg: DictConfig) -> dict[str, Any]:
    from imgclf.review.reviewer import review as review_dataset
    from imgclf.review.settings import ReviewSettings

    result = run(review_dataset, cfg, ReviewSettings)
    reports.review(result, cfg.data.root)
    return result


@command("train")
def train(cfg: DictConfig) -> float | None:
    """Returns the optimised metric (``optimized_metric``, val/acc) for Hydra's sweepers."""
    from imgclf.training.settings import TrainSettings
    from imgclf.training.train import train as train_model

    metrics = run(train_model, cfg, TrainSettings, best_hparams=True)
    if metrics:
        reports.train(metrics, cfg.optimized_metric)
    return metrics.get(cfg.optimized_metric) if metrics else None


@command("eval")
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from imgclf.inference.evaluate import evaluate as evaluate_model
    from imgclf.inference.settings import EvalSettings

    metrics = run(evaluate_model, cfg, EvalSettings)
    reports.evaluation(metrics)
    return metrics


@command("export")
def export(cfg: DictConfig) -> dict[str, Any]:
    from imgclf.inference.export import export as export_model
    from imgclf.inference.settings import ExportSettings

    result = run(export_model, cfg, ExportSettings)
    reports.export(result)
    return result


@command("classify")
def classify(cfg: DictConfig) -> dict[str, Any]:
    """One image: its ``{label: probability}`` as JSON; several: ``{path: {label: probability}}``."""
    from imgclf.inference.classify import classify as classify_images
    from imgclf.inference.settings import ClassifySettings

    results = run(classify_images, cfg, ClassifySettings)
    if len(results) == 1:
        print(json.dumps(next(iter(results.values()))))
    else:
        print(json.dumps(results, indent=2))
    return results


@command("serve")
def serve(cfg: DictConfig) -> None:
    # A server's only output is its log, on stderr. LitServe's logger writes to the stdout of every
    # process it starts, and uvicorn's access log to stdout too: point stdout at stderr, for this
    # process and the ones it starts.
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    level = getattr(logging, str(cfg.log_level).upper(), logging.DEBUG)  # uvicorn's "trace" too
    logging.basicConfig(level=level, format=SERVER_LOG_FORMAT, stream=sys.stderr)
    # Before prometheus-client is first imported: the HTTP processes LitServe forks then keep their
    # counts in this folder, for /metrics to sum whichever process answers the scrape.
    with tempfile.TemporaryDirectory(prefix="imgclf-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        from imgclf.serving.app import serve as serve_model
        from imgclf.serving.settings import ServeSettings

        status = run(serve_model, cfg, ServeSettings)
    if status:
        sys.exit(status)


@command("pipeline")
def pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Search terms in, a model ready to serve out: scrape -> review -> (tune) -> train -> eval, then
    ``rounds - 1`` rounds that top up the weakest classes and retrain. Each stage prints what its own
    command prints; stages with nothing new to do are skipped, so after an interruption the same
    command continues. The run ends with a summary."""
    from rich.console import Console

    from imgclf.pipeline import Pipeline
    from imgclf.pipeline.settings import PipelineSettings

    # httpx logs every request at INFO, which would bury the scraper's progress bars.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    quiet_lightning_tips()
    console = Console()
    with exits_cleanly():
        typed = PipelineSettings.from_config(settings(running(cfg)))
        runner = Pipeline(
            typed, console, on_stage=lambda *args: reports.pipeline_stage(console, typed, *args)
        )
        summary = runner.run()
    reports.pipeline_summary(console, summary)
    return summary
