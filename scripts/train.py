"""python scripts/train.py [+experiment=NAME] [overrides] -- see conf/train.yaml.

Returns the optimised metric (``optimized_metric``, val/acc) for Hydra sweepers.
"""

import hydra
from omegaconf import DictConfig

from imgclf.cli import run


@hydra.main(config_path="../conf", config_name="train")
def main(cfg: DictConfig):
    from imgclf.train import train

    metrics = run(train, cfg)
    return metrics.get(cfg.get("optimized_metric")) if metrics else None


if __name__ == "__main__":
    main()
