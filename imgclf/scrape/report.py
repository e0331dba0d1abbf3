"""What happened to each search term, as a table for people and a dict for programs."""

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


def summarize(reports: list[TermReport], root: str, manifest: str) -> dict[str, Any]:
    rejected = Counter()
    for report in reports:
        rejected.update(report.rejected)
    return {
        "root": root,
        "manifest": manifest,
        "terms": [report.as_dict() for report in reports],
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


def print_summary(console: Console, reports: list[TermReport]) -> None:
    """One row per search term, then the rejections of the whole run by reason."""
    table = Table(title="Scraping summary")
    table.add_column("search term")
    table.add_column("folder")
    for column in ("found", "saved", "have/wanted", "rejected", "duplicates"):
        table.add_column(column, justify="right")
    table.add_column("engines")
    for r in reports:
        have = f"{r.have}/{r.term.number_imgs}"
        table.add_row(
            r.term.search_term,
            f"{r.term.split}/{r.term.folder_name}",
            str(r.found),
            str(r.downloaded),
            f"[red]{have}[/]" if r.have < r.term.number_imgs else have,
            str(sum(r.rejected.values()) - r.duplicates),
            str(r.duplicates),
            ", ".join(f"{name} {state}" for name, state in r.engines.items()) or "not needed",
        )
    console.print(table)
    totals: Counter = Counter()
    for report in reports:
        totals.update(report.rejected)
    if sum(totals.values()):
        reasons = Table(title="Rejected, by reason")
        reasons.add_column("reason")
        reasons.add_column("images", justify="right")
        reasons.add_column("meaning")
        for reason in REASONS:
            if totals[reason]:
                reasons.add_row(reason, str(totals[reason]), REASON_HELP[reason])
        console.print(reasons)
