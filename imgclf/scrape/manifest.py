"""The dataset's manifest: a JSON line per image the scraper saved, ``{data.root}/manifest.jsonl``.

A row is appended only after its image file is in place, in one ``write`` followed by ``fsync``.
A kill can therefore leave at most a partial last line; :func:`read_manifest` skips it, and the
scraper has it cut from the file (``repair=True``) so that the next append starts on a fresh line.
Rows are history: a row whose image the user has since deleted stays, so that the same picture is
not downloaded again.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from imgclf.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"

# The columns of a row, in the order they are written.
FIELDS = (
    "path",  # relative to data.root, with "/" separators
    "split",
    "class",
    "search_term",
    "engine",
    "source_url",
    "final_url",  # after redirects
    "page_url",  # the page the search engine found the image on, when it says
    "sha256",  # of the saved JPEG
    "source_sha256",  # of the bytes as downloaded
    "phash",  # 64-bit perceptual hash, 16 hex digits
    "width",
    "height",
    "bytes",  # size of the saved JPEG
    "downloaded_at",  # UTC, ISO 8601
)


_HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "source_sha256": re.compile(r"[0-9a-f]{64}")}
_HEX["phash"] = re.compile(r"[0-9a-f]{16}")
_NUMBERS = ("width", "height", "bytes")


def row_problem(row: Any) -> str | None:
    """What is wrong with a row (a field of the wrong type, a bad hash, a path out of the
    dataset), or None. Missing columns are fine: older rows lack some, readers use ``.get``."""
    from imgclf.paths import plain_relative

    if not isinstance(row, dict):
        return "not a JSON object"
    if plain_relative(row.get("path")) is None:
        return f"path {row.get('path')!r} is not a relative path inside the dataset"
    for name in FIELDS:
        value = row.get(name)
        if value is None or name == "path":
            continue
        if name in _NUMBERS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return f"{name} {value!r} is not a whole number"
        elif not isinstance(value, str):
            return f"{name} is a {type(value).__name__}, not text"
        elif name in _HEX and not _HEX[name].fullmatch(value):
            return f"{name} {value[:80]!r} is not a hash"
    return None


def read_manifest(path: str | os.PathLike, repair: bool = False) -> list[dict[str, Any]]:
    """Every intact row. A torn last line left by a kill is skipped, and with ``repair`` also
    cut from the file (the scraper does, before appending); a row that is not what the scraper
    writes is skipped with a warning naming its line."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    complete, _, torn = data.rpartition(b"\n")
    if torn and repair:
        log.warning("%s: dropping an incomplete last row left by an interrupted run", path)
        atomic_write_bytes(path, complete + b"\n" if complete else b"")
    rows = []
    for number, line in enumerate(complete.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            log.warning("%s line %d: not JSON, ignored", path, number)
            continue
        problem = row_problem(row)
        if problem:
            log.warning("%s line %d: %s; row ignored", path, number, problem)
            continue
        rows.append(row)
    return rows


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row durably (the image it describes must already be on disk)."""
    line = json.dumps({name: row.get(name) for name in FIELDS}, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def rewrite_manifest(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Replace the whole manifest in one step (used when overwrite=true drops rows)."""
    text = "".join(
        json.dumps({name: row.get(name) for name in FIELDS}, ensure_ascii=False) + "\n" for row in rows
    )
    atomic_write_text(path, text)
