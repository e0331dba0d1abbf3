"""The review as one self-contained HTML page: inline CSS, thumbnails as data URIs.

It opens from disk, from a mail attachment or a CI artifact alike: no external file, script or
font. Every text that came from the dataset or the web (file names, URLs) is escaped, and only
http(s) URLs become links.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from imgclf.data.images import ImageDecodeError, load_image
from imgclf.review.findings import REASONS, Flag
from imgclf.review.scan import ScannedImage

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{margin-top:0}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
.count{background:#444;color:#fff;border-radius:1em;padding:0 .6em;font-size:.8em;margin-left:.4em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
.notes li{color:#8a4b00}
.cards{display:flex;flex-wrap:wrap;gap:.8em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em;width:250px;font-size:.8em}
.card .pair{display:flex;gap:.4em;align-items:flex-start}
.card img{width:var(--side);height:var(--side);object-fit:contain}
.card p{margin:.3em 0;overflow-wrap:anywhere}
.sheet{display:flex;flex-wrap:wrap;gap:4px}
.sheet figure{margin:0;border:3px solid transparent}
.sheet figure.flagged{border-color:#d33}
img{display:block;background:#eee}
.broken{display:flex;align-items:center;justify-content:center;background:#fdd;color:#900;
  font-size:.75em;text-align:center}
.badge{display:inline-block;background:#d33;color:#fff;border-radius:3px;padding:0 .3em;margin-right:.2em}
.muted{color:#777}
"""


class Thumbnails:
    """JPEG data URIs of images, made once each, ``None`` for files that cannot be decoded.

    ``moved`` maps the keys of quarantined files to where they are now.
    """

    def __init__(self, root: Path, side: int, moved: dict[str, Path] | None = None) -> None:
        self.root = root
        self.side = side
        self.moved = moved or {}
        self._cache: dict[str, str | None] = {}

    def uri(self, key: str) -> str | None:
        if key not in self._cache:
            self._cache[key] = self._make(key)
        return self._cache[key]

    def _make(self, key: str) -> str | None:
        try:
            image = load_image(self.moved.get(key, self.root / key))
        except ImageDecodeError:
            return None
        image.thumbnail((self.side, self.side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def tag(self, key: str, title: str = "") -> str:
        uri = self.uri(key)
        side = self.side
        if uri is None:
            return (
                f'<div class="broken" style="width:{side}px;height:{side}px" '
                f'title="{html.escape(title or key)}">cannot decode</div>'
            )
        return f'<img src="{uri}" alt="{html.escape(key)}" title="{html.escape(title or key)}">'


def _link(url: Any, text: str) -> str:
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return ""
    return f'<a href="{html.escape(url)}" rel="noreferrer">{html.escape(text)}</a>'


def _counts_table(counts: dict[str, dict[str, int]], flagged: dict[str, dict[str, int]]) -> str:
    splits = list(counts)
    classes = sorted({label for per_class in counts.values() for label in per_class})
    head = "".join(f"<th>{html.escape(s)}</th>" for s in splits)
    rows = []
    for label in classes:
        cells = "".join(
            f"<td>{counts[s].get(label, 0)}"
            + (f' <span class="muted">({flagged[s][label]} flagged)</span>' if flagged[s].get(label) else "")
            + "</td>"
            for s in splits
        )
        rows.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    return f'<table id="counts"><tr><th>class</th>{head}</tr>{"".join(rows)}</table>'


def _card(flag: Flag, by_key: dict[str, ScannedImage], thumbs: Thumbnails, quarantined: set[str]) -> str:
    pair = thumbs.tag(flag.path)
    if flag.other in by_key:  # the other copy of a duplicate (a suspect label names a class)
        pair += thumbs.tag(flag.other, f"compared with {flag.other}")
    source = by_key[flag.path].source
    links = " ".join(
        x
        for x in (_link(source.get("source_url"), "image source"), _link(source.get("page_url"), "page"))
        if x
    )
    term = (
        f'<p class="muted">search term: {html.escape(str(source["search_term"]))}</p>'
        if source.get("search_term")
        else ""
    )
    moved = '<p><span class="badge">quarantined</span></p>' if flag.path in quarantined else ""
    return (
        f'<div class="card" data-reason="{flag.reason}"><div class="pair">{pair}</div>'
        f"<p><b>{html.escape(flag.path)}</b></p><p>{html.escape(flag.detail)}</p>"
        f"{term}{f'<p>{links}</p>' if links else ''}{moved}</div>"
    )


def _contact_sheet(
    label: str, images: list[ScannedImage], reasons: dict[str, list[str]], thumbs: Thumbnails, limit: int
) -> str:
    by_split = defaultdict(list)
    for image in images:
        by_split[image.split].append(image)
    parts = [
        (
            f'<section class="class" id="class-{html.escape(label)}"><h2>{html.escape(label)}'
            f'<span class="count">{len(images)}</span></h2>'
        )
    ]
    for split, members in by_split.items():
        # Flagged images first, so that the limit never hides them.
        members = sorted(members, key=lambda im: (im.key not in reasons, im.key))
        figures = []
        for image in members[:limit]:
            why = reasons.get(image.key, [])
            title = f"{image.key}" + (f" -- {', '.join(why)}" if why else "")
            figures.append(
                f'<figure class="{"flagged" if why else ""}">{thumbs.tag(image.key, title)}</figure>'
            )
        more = f'<p class="muted">and {len(members) - limit} more</p>' if len(members) > limit else ""
        parts.append(f'<h3>{html.escape(split)}</h3><div class="sheet">{"".join(figures)}</div>{more}')
    return "".join(parts) + "</section>"


def render(
    summary: dict[str, Any],
    images: list[ScannedImage],
    flags: list[Flag],
    notes: list[str],
    thumbs: Thumbnails,
    quarantined: set[str],
    per_class_limit: int,
) -> str:
    """The whole page."""
    by_key = {im.key: im for im in images}
    reasons: dict[str, list[str]] = defaultdict(list)
    for flag in flags:
        reasons[flag.path].append(flag.reason)
    flagged = defaultdict(lambda: defaultdict(int))
    for key in reasons:
        flagged[by_key[key].split][by_key[key].label] += 1

    body = [
        f"<h1>Dataset review: {html.escape(summary['root'])}</h1>",
        (
            f'<p id="summary">{summary["images"]} images, {len(summary["classes"])} classes, '
            f"splits {', '.join(summary['splits'])}: <b>{len(reasons)} files flagged</b>. "
            f"{html.escape(summary['manifest'])}</p>"
        ),
        _counts_table(summary["counts"], flagged),
    ]
    if notes:
        body.append(
            '<h2>Dataset</h2><ul class="notes">'
            + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
            + "</ul>"
        )
    for reason, heading in REASONS.items():
        chosen = [f for f in flags if f.reason == reason]
        if chosen:
            cards = "".join(_card(f, by_key, thumbs, quarantined) for f in chosen)
            body.append(
                f'<section class="reason" id="reason-{reason}"><h2>{html.escape(heading)}'
                f'<span class="count">{len(chosen)}</span></h2><div class="cards">{cards}</div></section>'
            )
    body.append("<h2>Contact sheets</h2>")
    by_label = defaultdict(list)
    for image in images:
        by_label[image.label].append(image)
    body += [
        _contact_sheet(label, by_label[label], reasons, thumbs, per_class_limit) for label in sorted(by_label)
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Dataset review: {html.escape(summary['root'])}</title><style>{CSS}</style></head>"
        f'<body style="--side:{thumbs.side}px">{"".join(body)}</body></html>'
    )
