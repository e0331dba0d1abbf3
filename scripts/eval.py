"""python scripts/eval.py [split=test] [overrides] -- see conf/eval.yaml.

The same as `imgclf eval ...`: the command lives in imgclf/cli/commands.py.
"""

from imgclf.cli.commands import evaluate

if __name__ == "__main__":
    evaluate()
