"""The commands: ``imgclf <command> [overrides]``, the same as ``python scripts/<command>.py``.

:mod:`~imgclf.cli.commands` holds one function per command, :mod:`~imgclf.cli.reports` what each
prints, :mod:`~imgclf.cli.hydra_edge` what makes a function a Hydra app; :mod:`imgclf.composition`
is where Hydra meets the library.
"""

from __future__ import annotations

import sys

# command -> (function in imgclf.cli.commands, what it does)
COMMANDS = {
    "scrape": ("scrape", "build an image dataset from a search-terms CSV (conf/scrape.yaml)"),
    "review": ("review", "find broken, duplicate and mislabelled images (conf/review.yaml)"),
    "train": ("train", "train a classifier; -m hparams_search=optuna sweeps (conf/train.yaml)"),
    "eval": ("evaluate", "accuracy and a report of the saved model on a split (conf/eval.yaml)"),
    "export": ("export", "model.ckpt -> checked ONNX files, int8 too (conf/export.yaml)"),
    "classify": ("classify", "label probabilities of image files (conf/classify.yaml)"),
    "serve": ("serve", "serve POST /classify over HTTP (conf/serve.yaml)"),
    "pipeline": ("pipeline", "search terms -> a model ready to serve (conf/pipeline.yaml)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return (
        "usage: imgclf <command> [key=value ...] [Hydra options such as -m, --cfg job, --help]\n\n"
        "commands:\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> object:
    """The ``imgclf`` console script: the command's function, with the rest of the command line
    left for Hydra."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return None
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: no command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    from imgclf.cli import commands

    sys.argv = [f"imgclf {name}", *rest]
    return getattr(commands, COMMANDS[name][0])()
