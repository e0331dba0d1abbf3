"""python scripts/pipeline.py searchterms=PATH [rounds=N] [tune.n_trials=N] -- see conf/pipeline.yaml.

Search terms in, a model ready to serve out: scrape -> review -> (tune) -> train -> eval, then
``rounds - 1`` rounds that top up the weakest classes and retrain. Each stage prints what its own
command prints; stages with nothing new to do are skipped, so after an interruption the same
command continues. The run ends with a summary.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

DEFAULT_MODEL = "data/trained_model/model.ckpt"


@hydra.main(config_path="../conf", config_name="pipeline")
def main(cfg: DictConfig) -> dict[str, Any]:
    from imgclf.cli import exits_cleanly, quiet_lightning_tips
    from imgclf.pipeline import Pipeline, PipelineInterrupted

    # httpx logs every request at INFO, which would bury the scraper's progress bars.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    quiet_lightning_tips()
    console = Console()
    with exits_cleanly(PipelineInterrupted):
        pipeline = Pipeline(cfg, console, on_stage=lambda *args: show_stage(console, cfg, *args))
        summary = pipeline.run()
    show_summary(console, summary)
    return summary


def show_stage(console: Console, cfg: DictConfig, stage, status: str, record: dict, details: Any) -> None:
    """What the stage's own command prints, after it ran."""
    # The other scripts' reports (scripts/ is on the path of a script run from it).
    from eval import report as eval_report
    from review import report as review_report
    from train import report as train_report

    if status != "ran":
        return
    console.rule(f"{stage.label}: {record['outcome']}")
    if stage.name == "scrape":
        from imgclf.scrape.report import print_summary

        print_summary(console, details)
    elif stage.name == "top_up":
        from imgclf.scrape.report import print_summary, top_up_table

        for summary in details["summaries"]:
            print_summary(console, summary)
        console.print(top_up_table(details["classes"]))
    elif stage.name == "review":
        review_report(details, cfg.data.root)
    elif stage.name == "train":
        train_report(details, "val/acc")
    elif stage.name == "eval":
        for split, metrics in details.items():
            print(f"{split}:")
            eval_report(metrics)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def show_summary(console: Console, summary: dict) -> None:
    if not console.is_terminal:  # a log file or CI: print the tables whole
        console = Console(width=max(console.width, 160))
    stages = Table(title="Pipeline summary")
    for column in ("round", "stage", "status", "time", "outcome"):
        stages.add_column(column, justify="right" if column in ("round", "time") else "left")
    for row in summary["stages"]:
        seconds = row["seconds"]
        ran = row["status"] in ("ran", "failed") and seconds is not None
        stages.add_row(
            str(row["round"]), row["stage"], row["status"], f"{seconds:.0f} s" if ran else "", row["outcome"]
        )
    console.print(stages)

    images = summary["images"]
    if images:
        table = Table(title="Images per class and split")
        table.add_column("class")
        for split in images:
            table.add_column(split, justify="right")
        names = sorted({name for counts in images.values() for name in counts})
        for name in names:
            table.add_row(name, *(str(images[split].get(name, 0)) for split in images))
        table.add_row("[b]total[/]", *(f"[b]{sum(images[split].values())}[/]" for split in images))
        console.print(table)

    reasons = sorted({reason for result in summary["review"].values() for reason in result["flagged"]})
    if summary["review"] and not reasons:
        console.print("Review: nothing flagged")
    elif summary["review"]:
        rounds = sorted(summary["review"])
        table = Table(title="Review: files quarantined (and only listed)")
        table.add_column("reason")
        for number in rounds:
            table.add_column(f"round {number}", justify="right")
        for reason in reasons:
            cells = []
            for number in rounds:
                result = summary["review"][number]
                moved, flagged = result["quarantined"].get(reason, 0), result["flagged"].get(reason, 0)
                cells.append(f"{moved}" if moved == flagged else f"{moved} ({flagged - moved} listed)")
            table.add_row(reason, *cells)
        console.print(table)

    accuracy = {n: values for n, values in summary["accuracy"].items() if values}
    if accuracy:
        splits = sorted(
            {split for values in accuracy.values() for split in values}, key=["val", "test"].index
        )
        table = Table(title="Accuracy")
        table.add_column("after")
        for split in splits:
            table.add_column(split, justify="right")
        for number, values in accuracy.items():
            table.add_row(f"round {number}", *(_number(values.get(split)) for split in splits))
        console.print(table)

    recall = summary["recall"]
    if recall:
        rounds = sorted(recall)
        table = Table(title="Recall per class on val, by round (+N: train images the round added)")
        table.add_column("class")
        for number in rounds:
            table.add_column(f"round {number}", justify="right")
        for name in sorted({name for values in recall.values() for name in values}):
            cells = []
            for number in rounds:
                cell = _number(recall[number].get(name))
                added = summary["top_up"].get(number, {}).get(name)
                cells.append(f"{cell} (+{added['added']})" if added else cell)
            table.add_row(name, *cells)
        console.print(table)

    if summary["weakest"]:
        metric = summary["metric"]
        weakest = ", ".join(f"{row['class']} ({metric} {row[metric]:.4f})" for row in summary["weakest"])
        console.print(f"Weakest classes on val: {weakest}")
    backbone = summary.get("backbone")
    if backbone and backbone.get("backbone"):
        console.print(f"Backbone: {backbone['backbone']}, ImageNet weights: {backbone['weights']}")
    console.print(f"Reports of every round: {summary['reports']}")
    model = summary["model"]
    if model:
        where = "" if model == DEFAULT_MODEL else f" ckpt_path={model}"
        console.print(f"Serve it: python serve.py{where}   (POST an image to http://localhost:5000/classify)")
        console.print(f"Or classify a file: python scripts/classify.py{where} img=photo.jpg")


if __name__ == "__main__":
    main()
