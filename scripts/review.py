"""python scripts/review.py [data.root=...] [fix=quarantine] [undo=true] -- see conf/review.yaml."""

import hydra
from omegaconf import DictConfig

from imgclf.cli import run


@hydra.main(config_path="../conf", config_name="review")
def main(cfg: DictConfig):
    from imgclf.review.run import review

    return run(review, cfg)


if __name__ == "__main__":
    main()
