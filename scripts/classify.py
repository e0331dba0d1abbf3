"""python scripts/classify.py [overrides] -- see conf/classify.yaml."""

import hydra
from omegaconf import DictConfig

from imgclf.cli import run


@hydra.main(config_path="../conf", config_name="classify")
def main(cfg: DictConfig):
    from imgclf.classify import classify

    return run(classify, cfg)


if __name__ == "__main__":
    main()
