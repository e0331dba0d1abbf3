"""python scripts/pipeline.py searchterms=PATH [rounds=N] [tune.n_trials=N] -- see conf/pipeline.yaml.

The same as `imgclf pipeline ...`: the command lives in imgclf/cli/commands.py.
"""

from imgclf.cli.commands import pipeline

if __name__ == "__main__":
    pipeline()
