"""What the pipeline remembers between runs: each stage's settings and the files it left.

``${paths.model_dir}/pipeline/state.json`` holds one record per stage (``"1.train"``): its
status (``started``, ``done``, ``failed``), a hash of its settings, fingerprints of the files it
reads and writes (the dataset, the model, the best hyperparameters, its reports) taken when it
started and when it finished, how long it took, and what it produced. The file is rewritten
atomically after every change, so a kill leaves the last complete version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from imgclf.errors import ImgclfError
from imgclf.io import atomic_write_json, json_digest

FORMAT = "imgclf.pipeline/1"


def digest(value: Any) -> str:
    return json_digest(value)


def config_digest(cfg: DictConfig, ignore: tuple[str, ...] = ()) -> str:
    """A composed config's settings, without Hydra's own node, the run's log folder and ``ignore``."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
        if "paths" in cfg:
            cfg.paths.output_dir = None  # a new timestamped folder every run
        for key in ignore:
            cfg.pop(key, None)
    return digest(OmegaConf.to_container(cfg, resolve=True))


def tree_digest(root: Path) -> str | None:
    """Every file under ``root``: relative path, size and modification time (not the contents:
    a dataset of thousands of images is fingerprinted in well under a second). Links count as
    themselves, not as what they point to: a link out of the dataset is never followed."""
    if not root.is_dir():
        return None
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            stat = path.lstat()
            entries.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return digest(entries)


def file_digest(path: Path, contents: bool = False) -> str | None:
    """A file's size and modification time, or its contents; ``None`` when it is missing."""
    if not path.is_file():
        return None
    if contents:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    stat = path.stat()
    return digest([stat.st_size, stat.st_mtime_ns])


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


STATUSES = ("started", "done", "failed")
# The fields the pipeline reads back, and the JSON type each must have when present.
_FIELDS = {"round": int, "stage": str, "config": str, "before": dict, "after": dict, "outcome": str}
_FIELDS |= {"error": str, "result": dict, "had": dict, "targets": dict, "seconds": (int, float)}


def _check_records(path: Path, stages: Any) -> dict[str, dict[str, Any]]:
    """``stages`` when it has the shape the pipeline writes; otherwise an error naming the record."""

    def fail(problem: str) -> None:
        raise ImgclfError(f"{path}: {problem}; delete the file to run every stage again")

    if not isinstance(stages, dict):
        fail(f"'stages' is a {type(stages).__name__}, not a mapping of stage records")
    for key, record in stages.items():
        if not isinstance(record, dict):
            fail(f"stage {key!r} is a {type(record).__name__}, not a record")
        if record.get("status") not in STATUSES:
            fail(f"stage {key!r} has status {record.get('status')!r}, not one of {', '.join(STATUSES)}")
        if not isinstance(record.get("config"), str):
            fail(f"stage {key!r} has no settings hash ('config')")
        for name, kind in _FIELDS.items():
            if name in record and not isinstance(record[name], kind):
                fail(
                    f"stage {key!r}: {name!r} is a {type(record[name]).__name__}, "
                    "which the pipeline never writes"
                )
        if record["status"] == "done" and not isinstance(record.get("after"), dict):
            fail(f"stage {key!r} is done but records no files ('after')")
    return stages


class State:
    """The records of one pipeline (one ``paths.model_dir``), saved after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise ImgclfError(
                    f"{path} cannot be read ({exc}); delete it to run every stage again"
                ) from None
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ImgclfError(
                    f"{path} is not a pipeline state file ({FORMAT}); delete it to run every stage again"
                )
            self.records = _check_records(path, document.get("stages"))

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.records[key] = record
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, {"format": FORMAT, "stages": self.records})
