"""python serve.py [overrides] -- serve POST /classify over HTTP; see conf/serve.yaml."""

import logging
import os
import sys
import tempfile

import hydra
from omegaconf import DictConfig

from imgclf.cli import run

LOG_FORMAT = "%(asctime)s - %(processName)s[%(process)d] - %(name)s - %(levelname)s - %(message)s"


@hydra.main(config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    # A server's only output is its log, on stderr. LitServe's logger writes to the stdout of every
    # process it starts, and uvicorn's access log to stdout too: point stdout at stderr, for this
    # process and the ones it starts.
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    level = getattr(logging, str(cfg.log_level).upper(), logging.DEBUG)  # uvicorn's "trace" too
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    # Before prometheus-client is first imported: the HTTP processes LitServe forks then keep their
    # counts in this folder, for /metrics to sum whichever process answers the scrape.
    with tempfile.TemporaryDirectory(prefix="imgclf-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        from imgclf.serving import serve

        status = run(serve, cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
