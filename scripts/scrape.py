"""Build data/image_dataset/{train,val,test}/{class}/ from a search-terms CSV -- see conf/scrape.yaml.

python scripts/scrape.py [searchterms=PATH|hockey] [data.root=DIR] [engine=bing]
python scripts/scrape.py top_up.weakest=3 top_up.from=data/trained_model/eval_val/metrics.json

The same as `imgclf scrape ...`: the command lives in imgclf/cli/commands.py.
"""

from imgclf.cli.commands import scrape

if __name__ == "__main__":
    scrape()
