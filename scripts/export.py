"""python scripts/export.py [quantize=int8] [overrides] -- see conf/export.yaml.

The same as `imgclf export ...`: the command lives in imgclf/cli/commands.py.
"""

from imgclf.cli.commands import export

if __name__ == "__main__":
    export()
