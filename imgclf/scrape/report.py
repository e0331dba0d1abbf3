"""What happened to each search term and each engine, as a dict for programs and tables for
people (the tables are printed by the entry point, from the dict)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from imgclf.scrape.downloader import REASONS
from imgclf.scrape.searchterms import SearchTerm

DUPLICATE_REASONS = ("duplicate_exact", "duplicate_near")


@dataclass
class TermReport:
    term: SearchTerm
    had: int  # images the folder held before this row was processed
    engines: dict[str, str] = field(default_factory=dict)  # engine -> ok / blocked / error / ...
    found: int = 0  # new candidate URLs the engines returned
    known: int = 0  # URLs skipped because the manifest already has them
    downloaded: int = 0
    rejected: Counter = field(default_factory=Counter)

    @property
    def duplicates(self) -> int:
        return sum(self.rejected[reason] for reason in DUPLICATE_REASONS)

    @property
    def have(self) -> int:
        return self.had + self.downloaded

    def as_dict(self) -> dict[str, Any]:
        return {
            "line": self.term.line,
            "search_term": self.term.search_term,
            "folder_name": self.term.folder_name,
            "split": self.term.split,
            "wanted": self.term.number_imgs,
            "had": self.had,
            "have": self.have,
            "engines": dict(self.engines),
            "found": self.found,
            "known": self.known,
            "downloaded": self.downloaded,
            "rejected": {reason: self.rejected[reason] for reason in REASONS},
            "duplicates": self.duplicates,
        }


# Why an engine's result URL was not handed to the downloader.
SKIP_HELP = {
    "thumbnail_host": "a thumbnail, or on the engine's own host",
    "data_uri": "an inline data: thumbnail",
    "not_http": "not an http(s) URL",
    "bad_url": "a URL without a host",
    "in_dataset": "already in the dataset (manifest)",
    "tried": "already tried in this run",
}


@dataclass
class EngineReport:
    """One engine over a whole run."""

    searches: int = 0
    read: int = 0  # distinct result URLs read from its data
    used: int = 0  # handed to the downloader
    skipped: Counter = field(default_factory=Counter)  # reason -> URLs
    blocks: Counter = field(default_factory=Counter)  # kind (CAPTCHA, HTTP 429, ...) -> times
    errors: int = 0
    resting: int = 0  # searches not asked because it was resting after a block

    def as_dict(self) -> dict[str, Any]:
        return {
            "searches": self.searches,
            "read": self.read,
            "used": self.used,
            "skipped": dict(self.skipped),
            "blocks": dict(self.blocks),
            "errors": self.errors,
            "resting": self.resting,
        }


def summarize(
    reports: list[TermReport], root: str, manifest: str, engines: dict[str, EngineReport]
) -> dict[str, Any]:
    rejected = Counter()
    for report in reports:
        rejected.update(report.rejected)
    return {
        "root": root,
        "manifest": manifest,
        "terms": [report.as_dict() for report in reports],
        "engines": {name: report.as_dict() for name, report in engines.items()},
        "totals": {
            "found": sum(r.found for r in reports),
            "known": sum(r.known for r in reports),
            "downloaded": sum(r.downloaded for r in reports),
            "rejected": {reason: rejected[reason] for reason in REASONS},
            "duplicates": sum(r.duplicates for r in reports),
            "short": sum(r.have < r.term.number_imgs for r in reports),
        },
    }


# What each rejection reason means, for the summary's second table.
REASON_HELP = {
    "forbidden_host": "the host is not on the public internet (loopback, private, link-local, ...)",
    "http_error": "the host answered with an error, refused, or redirected too often",
    "timeout": "no answer within download.timeout_s / deadline_s",
    "too_large": "over download.max_bytes",
    "not_image": "not an image Pillow recognises (an HTML page, ...)",
    "damaged": "an image that does not decode (truncated, corrupt)",
    "bomb": "over download.max_pixels once decoded (decompression bomb)",
    "too_small": "shorter side under download.min_size pixels",
    "duplicate_exact": "the same file is already in the dataset (any split)",
    "duplicate_near": "a near copy (resized, re-encoded) is already in the dataset (any split)",
}


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """One row per search term, one per engine, then the rejections of the run by reason."""
    table = Table(title="Scraping summary")
    table.add_column("search term")
    table.add_column("folder")
    for column in ("found", "saved", "have/wanted", "rejected", "duplicates"):
        table.add_column(column, justify="right")
    table.add_column("engines")
    for term in summary["terms"]:
        have = f"{term['have']}/{term['wanted']}"
        table.add_row(
            term["search_term"],
            f"{term['split']}/{term['folder_name']}",
            str(term["found"]),
            str(term["downloaded"]),
            f"[red]{have}[/]" if term["have"] < term["wanted"] else have,
            str(sum(term["rejected"].values()) - term["duplicates"]),
            str(term["duplicates"]),
            ", ".join(f"{name} {state}" for name, state in term["engines"].items()) or "not needed",
        )
    console.print(table)
    if summary.get("engines"):
        console.print(engine_table(summary["engines"]))
    totals = summary["totals"]["rejected"]
    if sum(totals.values()):
        reasons = Table(title="Rejected, by reason")
        reasons.add_column("reason")
        reasons.add_column("images", justify="right")
        reasons.add_column("meaning")
        for reason in REASONS:
            if totals.get(reason):
                reasons.add_row(reason, str(totals[reason]), REASON_HELP[reason])
        console.print(reasons)


def engine_table(engines: dict[str, dict[str, Any]]) -> Table:
    """Per engine: searches, result URLs read, used, skipped (and why), blocks by kind."""
    table = Table(title="Search engines")
    table.add_column("engine")
    for column in ("searches", "URLs read", "used", "skipped"):
        table.add_column(column, justify="right")
    table.add_column("skipped because")
    table.add_column("blocked")
    for name, engine in engines.items():
        why = ", ".join(
            f"{count} {SKIP_HELP.get(reason, reason)}"
            for reason, count in sorted(engine["skipped"].items(), key=lambda kv: -kv[1])
        )
        blocks = [f"{kind} ×{count}" for kind, count in engine["blocks"].items()]
        if engine["resting"]:
            blocks.append(f"resting for {engine['resting']} searches")
        if engine["errors"]:
            blocks.append(f"{engine['errors']} errors")
        table.add_row(
            name,
            str(engine["searches"]),
            str(engine["read"]),
            str(engine["used"]),
            str(sum(engine["skipped"].values())),
            why or "-",
            ", ".join(blocks) or "-",
        )
    return table


def top_up_table(classes: dict[str, dict[str, Any]]) -> Table:
    """Per class of a top-up: images before, added, now against wanted, the searches used, and
    why it wanted that many (its ``sizing``, when sized by a learning curve)."""
    table = Table(title="Top-up")
    table.add_column("class")
    for column in ("had", "added", "have/wanted"):
        table.add_column(column, justify="right")
    table.add_column("searched")
    sized = any("sizing" in row for row in classes.values())
    if sized:
        table.add_column("why that many")
    for name, row in classes.items():
        have = f"{row['have']}/{row['wanted']}"
        cells = [
            name,
            str(row["had"]),
            str(row["added"]),
            f"[red]{have}[/]" if row["have"] < row["wanted"] else have,
            "; ".join(row["searches"]),
        ]
        table.add_row(*cells, *([row.get("sizing", {}).get("why", "")] if sized else []))
    return table
