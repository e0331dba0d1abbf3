"""``python -m imgclf <command> [overrides]``: the ``imgclf`` console script."""

from imgclf.cli import main

main()
