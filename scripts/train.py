"""python scripts/train.py [+experiment=NAME] [overrides] -- see conf/train.yaml.

Returns the optimised metric (``optimized_metric``, val/acc) for Hydra sweepers.
"""

import hydra
from omegaconf import DictConfig

from imgclf.cli import run


def report(metrics: dict, metric: str) -> None:
    if metrics.get("fast_dev_run"):
        print("fast_dev_run: the wiring works; no model saved")
        return
    if "model" in metrics:
        print(f"model: {metrics['model']}")
        print(f"backbone: {metrics['backbone']}, ImageNet weights: {metrics['weights']}")
        print(f"train accuracy: {metrics['train/acc']:.4f}")
    label = {"val/acc": "val accuracy"}.get(metric, metric)
    print(f"{label}: {metrics[metric]:.4f} (best epoch {metrics['best_epoch']})")


@hydra.main(config_path="../conf", config_name="train")
def main(cfg: DictConfig):
    from imgclf.train import train

    metrics = run(train, cfg)
    if metrics:
        report(metrics, cfg.optimized_metric)
    return metrics.get(cfg.optimized_metric) if metrics else None


if __name__ == "__main__":
    main()
