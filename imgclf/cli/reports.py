"""What each command prints of its library function's result (stdout: results; the log is on stderr)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from imgclf.inference.metrics import describe_interval

DEFAULT_MODEL = "data/trained_model/model.ckpt"


def train(metrics: dict, metric: str) -> None:
    found = metrics.get("lr_find")
    if found:
        print(f"learning-rate finder: suggestion {found['suggestion']:.3g} (plot: {found['plot']})")
    if found and "best_epoch" not in metrics:
        print(f"train with it: model.optimizer.lr={found['suggestion']:.3g}, or model.optimizer.lr=auto")
        return
    if metrics.get("fast_dev_run"):
        print("fast_dev_run: the wiring works; no model saved")
        return
    if "model" in metrics:
        print(f"model: {metrics['model']}")
        print(f"backbone: {metrics['backbone']}, ImageNet weights: {metrics['weights']}")
        print(f"train accuracy: {metrics['train/acc']:.4f}")
    label = {"val/acc": "val accuracy"}.get(metric, metric)
    epoch = f"best epoch {metrics['best_epoch']}"
    bounds = metrics.get(f"{metric}_interval")  # the saved model's figure, with how sure it is
    if bounds:
        print(f"{label}: {describe_interval(metrics[metric], bounds, epoch)}")
    else:
        print(f"{label}: {metrics[metric]:.4f} ({epoch})")


def evaluation(metrics: dict) -> None:
    print(f"accuracy: {describe_interval(metrics['accuracy'], metrics['accuracy_interval'])}")
    if metrics["left_out"]:
        print(f"left out {len(metrics['left_out'])} unreadable image(s), listed in metrics.json")
    if "tta_accuracy" in metrics:
        print(f"tta accuracy: {metrics['tta_accuracy']:.4f} (ten crops and mirrors averaged)")
    print(f"expected calibration error: {metrics['calibration']['ece']:.4f}")
    curve = metrics.get("learning_curve")
    if curve:
        steps = ", ".join(f"{r['train_images']} images {r['accuracy']:.3f}" for r in curve["rows"])
        print(f"learning curve (linear fit on the backbone's features): {steps}; plot: {curve['plot']}")
    for pair in metrics["most_confused"][:3]:
        print(f"confused: {pair['true']} -> {pair['predicted']} ({pair['count']}x)")
    print(f"report: {metrics['report_dir']}")


def review(result: dict, root: str) -> None:
    if "restored" in result:
        print(f"restored {len(result['restored'])} file(s) from {result['quarantine']} into {root}")
        return
    from imgclf.review.findings import REASONS

    flags = result["flags"]
    counts = Counter(f.reason for f in flags)
    print(
        f"reviewed {result['images']} images in {', '.join(result['splits'])} "
        f"({len(result['classes'])} classes): {len({f.path for f in flags})} files flagged"
    )
    for reason in REASONS:
        if counts[reason]:
            print(f"  {reason}: {counts[reason]}")
    for note in result["notes"]:
        print(f"  note: {note}")
    if result["quarantined"]:
        print(
            f"quarantined {len(result['quarantined'])} file(s) into {result['quarantine']} "
            f"(undo: python scripts/review.py data.root={root} undo=true)"
        )
    print(f"report: {result['report']}")


def export(result: dict) -> None:
    from imgclf.inference.runtimes import describe_check

    onnx = result["onnx"]
    state = "verified" if onnx["check"]["verified"] else "NOT verified (runtime=auto will not use it)"
    print(f"model: {onnx['path']} (opset {onnx['opset']})")
    print(f"check: {describe_check(onnx['check'])}: {state}")
    int8 = result.get("int8")
    if int8 is None:
        return
    if int8["kept"]:
        print(f"int8 model: {int8['path']}")
        print(f"int8 check: {describe_check(int8['check'])}: verified")
    else:
        print(int8["message"])


def pipeline_stage(console: Console, cfg: Any, stage: Any, status: str, record: dict, details: Any) -> None:
    """What the stage's own command prints, after it ran."""
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
        review(details, cfg.data.root)
    elif stage.name == "train":
        train(details, "val/acc")
    elif stage.name == "eval":
        for split, metrics in details.items():
            print(f"{split}:")
            evaluation(metrics)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def pipeline_summary(console: Console, summary: dict) -> None:
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
