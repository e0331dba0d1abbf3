"""python scripts/review.py [data.root=...] [fix=quarantine] [undo=true] -- see conf/review.yaml."""

from collections import Counter

import hydra
from omegaconf import DictConfig

from imgclf.cli import run


def report(result: dict, root: str) -> None:
    if "restored" in result:
        print(f"restored {len(result['restored'])} file(s) from {result['quarantine']} into {root}")
        return
    from imgclf.review.findings import REASONS

    flags = result["flags"]
    counts = Counter(f.reason for f in flags)
    print(
        f"reviewed {result['images']} images in {', '.join(result['splits'])} "
        f"({len(result['classes'])} classes): {len({f.path for f in flags})} files flagged"
    )
    for reason in REASONS:
        if counts[reason]:
            print(f"  {reason}: {counts[reason]}")
    for note in result["notes"]:
        print(f"  note: {note}")
    if result["quarantined"]:
        print(
            f"quarantined {len(result['quarantined'])} file(s) into {result['quarantine']} "
            f"(undo: python scripts/review.py data.root={root} undo=true)"
        )
    print(f"report: {result['report']}")


@hydra.main(config_path="../conf", config_name="review")
def main(cfg: DictConfig):
    from imgclf.review.run import review

    result = run(review, cfg)
    report(result, cfg.data.root)
    return result


if __name__ == "__main__":
    main()
