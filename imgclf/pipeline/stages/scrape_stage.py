"""Round 1's scrape, and each later round's top-up of the weakest classes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from imgclf.composition import settings
from imgclf.data.images import is_image
from imgclf.paths import inside
from imgclf.pipeline.stages.stage import PipelineStage, Prepared, Ran, Record
from imgclf.pipeline.state import config_digest, digest, file_digest
from imgclf.scrape.manifest import MANIFEST_NAME
from imgclf.scrape.scraper import scrape, top_up
from imgclf.scrape.searchterms import read_searchterms, resolve_searchterms
from imgclf.scrape.settings import ScrapeSettings
from imgclf.scrape.weak_classes import class_scores, read_metrics, top_up_sizes, weakest_classes

log = logging.getLogger(__name__)


def image_count(folder: Path, root: Path) -> int:
    """The images in a class folder, leaving out links that lead out of the dataset ``root``."""
    if not folder.is_dir():
        return 0
    return sum(
        1
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and not (p.is_symlink() and not inside(p, root))
        and is_image(p)
    )


class _Scraping(PipelineStage):
    def scrape_config(self) -> tuple[DictConfig, str | None]:
        """The stage's scrape config and the digest of its CSV, which is read (and checked) here."""
        context = self.context
        cfg = self.compose("scrape", context.shared("scrape") + context.overrides("scrape"))
        csv = resolve_searchterms(cfg.searchterms)
        read_searchterms(csv)  # a bad CSV fails before any stage
        return cfg, file_digest(csv, contents=True)


class ScrapeStage(_Scraping):
    """Search terms -> ``{root}/{train,val,test}/{class}/`` (:func:`imgclf.scrape.scraper.scrape`)."""

    name = "scrape"
    reruns_in_history = True

    def prepare(self) -> Prepared:
        cfg, csv = self.scrape_config()
        # The CSV, the settings and the manifest (gone with the dataset, changed by another scrape):
        # images reviewed away or added by hand are the review's business, not a reason to scrape.
        return Prepared(
            digest([config_digest(cfg, ignore=("top_up",)), csv]),
            lambda: {"manifest": file_digest(self.context.root / MANIFEST_NAME)},
            {"scrape": cfg},
        )

    def run(self, prepared: Prepared, previous: Record | None, record: Record) -> Ran:
        summary = scrape(settings(prepared.configs["scrape"], ScrapeSettings), self.context.console)
        totals = summary["totals"]
        result = {
            "downloaded": totals["downloaded"],
            "short": totals["short"],
            "terms": len(summary["terms"]),
        }
        outcome = f"{totals['downloaded']} images saved"
        if totals["short"]:
            outcome += f", {totals['short']} of {len(summary['terms'])} search terms short"
        return Ran(result, outcome, summary)


class TopUpStage(_Scraping):
    """More train images for each of the ``loop.weakest`` classes of the round before
    (:func:`imgclf.scrape.scraper.top_up`), as many as that round's learning curve on val says
    each needs (``loop.sizing=curve``, :func:`imgclf.scrape.weak_classes.top_up_sizes`) or
    ``loop.extra_images``."""

    name = "top_up"

    def prepare(self) -> Prepared:
        cfg, csv = self.scrape_config()
        loop = self.context.cfg.loop
        metrics = self.context.metrics_path(self.round - 1, "val")
        classes = weakest_classes(metrics, loop.weakest, loop.metric)
        sizes = top_up_sizes(
            metrics, classes, loop.sizing, loop.extra_images, loop.max_images, loop.target_recall
        )
        extras = {name: size.extra for name, size in sizes.items()}
        settings_ = [config_digest(cfg, ignore=("top_up",)), csv, extras]
        extra = {"classes": classes, "metrics": str(metrics), "sizes": sizes}
        return Prepared(digest(settings_), dict, {"scrape": cfg}, extra=extra)

    def run(self, prepared: Prepared, previous: Record | None, record: Record) -> Ran:
        context = self.context
        classes, sizes = prepared.extra["classes"], prepared.extra["sizes"]
        train = context.root / "train"
        resuming = (
            previous
            and previous["status"] == "started"
            and previous["config"] == prepared.digest
            and all(
                isinstance(previous.get(key, {}).get(name), int)
                for key in ("had", "targets")
                for name in classes
            )
        )
        if resuming:
            had, targets = previous["had"], previous["targets"]
            log.info("%s: continuing the interrupted top-up towards %s", self.label, targets)
        else:
            had = {name: image_count(train / name, context.root) for name in classes}
            targets = {name: had[name] + sizes[name].extra for name in classes}
        record.update(had=had, targets=targets)
        context.state.put(self.key, record)  # a rerun after a kill aims at the same numbers
        missing = {name: targets[name] - image_count(train / name, context.root) for name in classes}
        missing = {name: need for name, need in missing.items() if need > 0}
        cfg = settings(prepared.configs["scrape"], ScrapeSettings)
        summaries = [top_up(cfg, list(missing), missing, context.console)] if missing else []
        per_class = {}
        for name in classes:
            searched = [
                s for summary in summaries for s in summary["classes"].get(name, {}).get("searches", [])
            ]
            have = image_count(train / name, context.root)
            per_class[name] = {
                "had": had[name],
                "added": have - had[name],
                "have": have,
                "wanted": targets[name],
                "searches": searched,
                "sizing": sizes[name].as_dict(),
            }
        metric = context.cfg.loop.metric
        scores = class_scores(read_metrics(prepared.extra["metrics"]), metric, prepared.extra["metrics"])
        result = {"classes": per_class, "metric": metric, "scores": scores}
        added = sum(row["added"] for row in per_class.values())
        weakest = ", ".join(f"{name} ({metric} {scores[name]:.2f})" for name in classes)
        return Ran(
            result, f"{added} images added to {weakest}", {"classes": per_class, "summaries": summaries}
        )

    def summary(self, record: Record) -> Any:
        return record["result"]["classes"]
