"""python scripts/classify.py img=PATH [overrides] -- see conf/classify.yaml.

One image: its ``{label: probability}`` as JSON; several: ``{path: {label: probability}}``.
"""

import json

import hydra
from omegaconf import DictConfig

from imgclf.cli import run


@hydra.main(config_path="../conf", config_name="classify")
def main(cfg: DictConfig):
    from imgclf.classify import classify

    results = run(classify, cfg)
    if len(results) == 1:
        print(json.dumps(next(iter(results.values()))))
    else:
        print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
