"""python scripts/train.py [+experiment=NAME] [overrides] -- see conf/train.yaml; -m: a sweep.

The same as `imgclf train ...`: the command lives in imgclf/cli/commands.py.
"""

from imgclf.cli.commands import train

if __name__ == "__main__":
    train()
