"""python scripts/eval.py [overrides] -- see conf/eval.yaml."""

import hydra
from omegaconf import DictConfig

from imgclf.cli import run


def report(metrics: dict) -> None:
    print(f"accuracy: {metrics['accuracy']:.4f}")
    if metrics["left_out"]:
        print(f"left out {len(metrics['left_out'])} unreadable image(s), listed in metrics.json")
    if "tta_accuracy" in metrics:
        print(f"tta accuracy: {metrics['tta_accuracy']:.4f} (ten crops and mirrors averaged)")
    print(f"expected calibration error: {metrics['calibration']['ece']:.4f}")
    for pair in metrics["most_confused"][:3]:
        print(f"confused: {pair['true']} -> {pair['predicted']} ({pair['count']}x)")
    print(f"report: {metrics['report_dir']}")


@hydra.main(config_path="../conf", config_name="eval")
def main(cfg: DictConfig):
    from imgclf.evaluate import evaluate

    metrics = run(evaluate, cfg)
    report(metrics)
    return metrics


if __name__ == "__main__":
    main()
