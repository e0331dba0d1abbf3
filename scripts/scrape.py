"""Build data/image_dataset/{train,val,test}/{class}/ from a search-terms CSV.

python scripts/scrape.py [searchterms=PATH|hockey] [data.root=DIR] [engine=bing]
python scripts/scrape.py top_up.weakest=3 top_up.from=data/trained_model/eval_val/metrics.json
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig
from rich.console import Console

from imgclf.errors import ImgclfError


@hydra.main(config_path="../conf", config_name="scrape")
def main(cfg: DictConfig) -> None:
    from imgclf.cli import exits_cleanly
    from imgclf.scrape.report import print_summary, top_up_table
    from imgclf.scrape.run import Interrupted, scrape, top_up, weakest_classes

    # httpx logs every request at INFO, which would bury the progress bars.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    console = Console()
    # a Ctrl+C before any download starts (the CSV and the dataset are only read) undoes nothing
    with exits_cleanly(Interrupted):
        if cfg.top_up["from"] is not None or cfg.top_up.weakest:
            if cfg.top_up["from"] is None:
                raise ImgclfError(
                    "top_up.weakest needs top_up.from=PATH/metrics.json (written by "
                    "python scripts/eval.py split=val)"
                )
            classes = weakest_classes(cfg.top_up["from"], cfg.top_up.weakest, cfg.top_up.metric)
            console.print(
                f"topping up the {len(classes)} classes with the lowest "
                f"{cfg.top_up.metric}: {', '.join(classes)}"
            )
            summary = top_up(cfg, classes, cfg.top_up.extra_images, console)
            print_summary(console, summary)
            console.print(top_up_table(summary["classes"]))
        else:
            print_summary(console, scrape(cfg, console))


if __name__ == "__main__":
    main()
