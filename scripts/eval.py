"""python scripts/eval.py [overrides] -- see conf/eval.yaml."""

import hydra
from omegaconf import DictConfig

from imgclf.cli import run


@hydra.main(config_path="../conf", config_name="eval")
def main(cfg: DictConfig):
    from imgclf.evaluate import evaluate

    return run(evaluate, cfg)


if __name__ == "__main__":
    main()
