"""Build data/image_dataset/{train,val,test}/{class}/ from a search-terms CSV.

python scripts/scrape.py [searchterms=PATH|hockey] [data.root=DIR] [engine=bing]
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from imgclf.errors import ImgclfError


@hydra.main(config_path="../conf", config_name="scrape")
def main(cfg: DictConfig) -> None:
    from imgclf.scrape.run import scrape

    # httpx logs every request at INFO, which would bury the progress bars.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        scrape(cfg)
    except ImgclfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # Images and the manifest are written atomically, so stopping here loses nothing.
        print("interrupted; run the same command again to continue", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
