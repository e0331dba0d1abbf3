"""python scripts/classify.py img=PATH [overrides] -- see conf/classify.yaml.

The same as `imgclf classify ...`: the command lives in imgclf/cli/commands.py.
"""

from imgclf.cli.commands import classify

if __name__ == "__main__":
    classify()
