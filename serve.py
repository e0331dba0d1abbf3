"""python serve.py [overrides] -- serve POST /classify over HTTP; see conf/serve.yaml.

The same as `imgclf serve ...`: the command lives in imgclf/cli/commands.py.
"""

from imgclf.cli.commands import serve

if __name__ == "__main__":
    serve()
