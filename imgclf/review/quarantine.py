"""Move flagged files out of the dataset, beside it, and put them back on request.

Nothing is deleted. ``{root}_quarantine/`` mirrors the dataset's relative paths, and
``quarantine_log.jsonl`` there records every move. The log is written before the files move, so
an interrupted run still leaves a record that ``undo`` can follow; ``undo`` restores every file
still in quarantine and refuses, before moving anything, when an original path is taken again.
Both hold the dataset's lock (:mod:`imgclf.locks`), so a scrape cannot write meanwhile.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from imgclf.errors import ImgclfError
from imgclf.io import atomic_write_text, move_no_replace
from imgclf.locks import exclusive
from imgclf.paths import resolve_inside

log = logging.getLogger(__name__)

LOG_NAME = "quarantine_log.jsonl"


def quarantine_dir(root: Path) -> Path:
    return root.parent / f"{root.name}_quarantine"


def _log_rows(folder: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, entry) for every well-formed line; the others are named in a warning."""
    path = folder / LOG_NAME
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            entry = None
        if (
            not isinstance(entry, dict)
            or entry.get("action") not in ("quarantine", "restore")
            or not all(isinstance(entry.get(key), str) for key in ("path", "quarantined"))
        ):
            log.warning("%s line %d: not a quarantine log entry; ignored", path, number)
            continue
        rows.append((number, entry))
    return rows


def read_log(folder: Path) -> list[dict[str, Any]]:
    return [entry for _, entry in _log_rows(folder)]


def _append_log(folder: Path, entries: list[dict[str, Any]]) -> None:
    """Append by rewriting in one step: a reader never sees half a line."""
    path = folder / LOG_NAME
    old = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    atomic_write_text(path, old + "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))


def _current(folder: Path) -> list[tuple[int, dict[str, Any]]]:
    current: dict[str, tuple[int, dict[str, Any]]] = {}
    for number, entry in _log_rows(folder):
        if entry["action"] == "quarantine":
            current[entry["quarantined"]] = (number, entry)
        else:
            current.pop(entry["quarantined"], None)
    return list(current.values())


def in_quarantine(folder: Path) -> list[dict[str, Any]]:
    """The log's quarantine entries not undone since, oldest first."""
    return [entry for _, entry in _current(folder)]


def _free_name(folder: Path, relative: str) -> str:
    """``relative``, or ``name~2.ext``... when an earlier run already quarantined that path."""
    candidate, number = Path(relative), 1
    while os.path.lexists(folder / candidate):
        number += 1
        candidate = Path(relative).with_stem(f"{Path(relative).stem}~{number}")
    return candidate.as_posix()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def quarantine(root: Path, reasons_by_path: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Move each file (path relative to ``root``) into the quarantine folder; returns the log entries."""
    with exclusive(root, "the dataset"):
        return _quarantine(root, reasons_by_path)


def _quarantine(root: Path, reasons_by_path: dict[str, list[str]]) -> list[dict[str, Any]]:
    folder = quarantine_dir(root)
    batch = _now()
    entries = []
    for relative, reasons in sorted(reasons_by_path.items()):
        source = resolve_inside(root, relative)
        if source is None or source.is_symlink() or not source.is_file():
            log.warning("%s is gone, or not a file of the dataset; not quarantined", root / relative)
            continue
        entries.append(
            {
                "action": "quarantine",
                "batch": batch,
                "path": relative,
                "quarantined": _free_name(folder, relative),
                "reasons": sorted(reasons),
            }
        )
    if not entries:
        return []
    _append_log(folder, entries)
    moved, unmoved = [], []
    for entry in entries:
        target = folder / entry["quarantined"]
        try:
            move_no_replace(root / entry["path"], target)
            moved.append(entry)
        except FileExistsError:
            log.warning("%s appeared meanwhile; %s stays in the dataset", target, entry["path"])
            unmoved.append({**entry, "action": "restore", "batch": _now()})
    if unmoved:  # the log says where every file is
        _append_log(folder, unmoved)
    return moved


def undo(root: Path) -> list[dict[str, Any]]:
    """Put every quarantined file back where it was; returns the restore entries.

    Only files inside the quarantine folder go back, and only to paths inside the dataset: a log
    line naming anything else (``..``, an absolute path, a link that leads out) is left with a
    warning. A file is never overwritten, not even one that appears while undo runs.
    """
    with exclusive(root, "the dataset"):
        return _undo(root)


def _undo(root: Path) -> list[dict[str, Any]]:
    folder = quarantine_dir(root)
    log_path = folder / LOG_NAME
    current, pending = [], []
    for number, entry in _current(folder):
        source = resolve_inside(folder, entry["quarantined"])
        target = resolve_inside(root, entry["path"])
        if source is None or target is None or source.is_symlink():
            log.warning(
                "%s line %d: %r -> %r is not a move from %s into %s; left as it is",
                log_path,
                number,
                entry["quarantined"],
                entry["path"],
                folder,
                root,
            )
            continue
        current.append(entry)
        if source.is_file():
            pending.append(entry)
    wanted = Counter(e["path"] for e in pending)
    twice = sorted(path for path, n in wanted.items() if n > 1)
    if twice:
        raise ImgclfError(
            f"cannot undo: {len(twice)} path(s) were quarantined more than once, e.g. {twice[0]}; "
            f"keep one copy of each in {folder} (move the others elsewhere) and undo again"
        )
    taken = [e["path"] for e in pending if os.path.lexists(root / e["path"])]
    if taken:
        raise ImgclfError(
            f"cannot undo: {len(taken)} original path(s) hold a file again, e.g. {root / taken[0]}; "
            f"move those files away (nothing was restored; the quarantined copies are in {folder})"
        )
    restored = {e["quarantined"] for e in current} - {e["quarantined"] for e in pending}
    moved = set()
    for entry in pending:
        try:
            move_no_replace(folder / entry["quarantined"], root / entry["path"])
        except FileExistsError:
            log.warning(
                "%s appeared while undo ran; the quarantined copy stays at %s",
                root / entry["path"],
                folder / entry["quarantined"],
            )
            continue
        moved.add(entry["quarantined"])
    # Entries whose file never reached quarantine (an interrupted run) are closed as well.
    closed = [
        {"action": "restore", "batch": _now(), "path": e["path"], "quarantined": e["quarantined"]}
        for e in current
        if e["quarantined"] in restored | moved
    ]
    if closed:
        _append_log(folder, closed)
    return [e for e in closed if e["quarantined"] in moved]
