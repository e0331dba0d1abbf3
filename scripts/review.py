"""python scripts/review.py [data.root=...] [fix=quarantine] [undo=true] -- see conf/review.yaml.

The same as `imgclf review ...`: the command lives in imgclf/cli/commands.py.
"""

from imgclf.cli.commands import review

if __name__ == "__main__":
    review()
