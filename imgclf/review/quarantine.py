"""Move flagged files out of the dataset, beside it, and put them back on request.

Nothing is deleted. ``{root}_quarantine/`` mirrors the dataset's relative paths, and
``quarantine_log.jsonl`` there records every move. The log is written before the files move, so
an interrupted run still leaves a record that ``undo`` can follow; ``undo`` restores every file
still in quarantine and refuses, before moving anything, when an original path is taken again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from imgclf.errors import ImgclfError
from imgclf.io import atomic_write_text

log = logging.getLogger(__name__)

LOG_NAME = "quarantine_log.jsonl"


def quarantine_dir(root: Path) -> Path:
    return root.parent / f"{root.name}_quarantine"


def read_log(folder: Path) -> list[dict[str, Any]]:
    path = folder / LOG_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _append_log(folder: Path, entries: list[dict[str, Any]]) -> None:
    """Append by rewriting in one step: a reader never sees half a line."""
    path = folder / LOG_NAME
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    atomic_write_text(path, old + "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))


def in_quarantine(folder: Path) -> list[dict[str, Any]]:
    """The log's quarantine entries not undone since, oldest first."""
    current: dict[str, dict[str, Any]] = {}
    for entry in read_log(folder):
        if entry["action"] == "quarantine":
            current[entry["quarantined"]] = entry
        else:
            current.pop(entry["quarantined"], None)
    return list(current.values())


def _free_name(folder: Path, relative: str) -> str:
    """``relative``, or ``name~2.ext``... when an earlier run already quarantined that path."""
    candidate, number = Path(relative), 1
    while (folder / candidate).exists():
        number += 1
        candidate = Path(relative).with_stem(f"{Path(relative).stem}~{number}")
    return candidate.as_posix()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def quarantine(root: Path, reasons_by_path: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Move each file (path relative to ``root``) into the quarantine folder; returns the log entries."""
    folder = quarantine_dir(root)
    batch = _now()
    entries = []
    for relative, reasons in sorted(reasons_by_path.items()):
        if not (root / relative).is_file():
            log.warning("%s is gone; not quarantined", root / relative)
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
    for entry in entries:
        target = folder / entry["quarantined"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / entry["path"], target)
    return entries


def undo(root: Path) -> list[dict[str, Any]]:
    """Put every quarantined file back where it was; returns the restore entries."""
    folder = quarantine_dir(root)
    current = in_quarantine(folder)
    pending = [e for e in current if (folder / e["quarantined"]).is_file()]
    wanted = Counter(e["path"] for e in pending)
    twice = sorted(path for path, n in wanted.items() if n > 1)
    if twice:
        raise ImgclfError(
            f"cannot undo: {len(twice)} path(s) were quarantined more than once, e.g. {twice[0]}; "
            f"keep one copy of each in {folder} (move the others elsewhere) and undo again"
        )
    taken = [e["path"] for e in pending if (root / e["path"]).exists()]
    if taken:
        raise ImgclfError(
            f"cannot undo: {len(taken)} original path(s) hold a file again, e.g. {root / taken[0]}; "
            f"move those files away (nothing was restored; the quarantined copies are in {folder})"
        )
    # Entries whose file never reached quarantine (an interrupted run) are closed as well.
    closed = [
        {"action": "restore", "batch": _now(), "path": e["path"], "quarantined": e["quarantined"]}
        for e in current
    ]
    for entry in pending:
        target = root / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(folder / entry["quarantined"], target)
    if closed:
        _append_log(folder, closed)
    moved = {e["quarantined"] for e in pending}
    return [e for e in closed if e["quarantined"] in moved]
