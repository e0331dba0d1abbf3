"""python serve.py [overrides] -- serve POST /classify over HTTP; see conf/serve.yaml."""

import hydra
from omegaconf import DictConfig

from imgclf.cli import run


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    from imgclf.serving import serve

    run(serve, cfg)


if __name__ == "__main__":
    main()
