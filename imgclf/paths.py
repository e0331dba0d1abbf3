"""Paths read from data (a quarantine log, a manifest, a listing) stay inside the folder they name.

A relative path from a file is used only when it is plain (no ``..``, not absolute) and, once its
symbolic links are resolved, still lies inside its root: a crafted log or a link in the dataset
cannot make a tool read, move or write a file elsewhere.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


def inside(path: Path, root: Path) -> bool:
    """Does ``path``, links resolved, lie inside ``root`` (links resolved too)?"""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop, or a path the system refuses
        return False


def plain_relative(value: object) -> PurePosixPath | None:
    """``value`` as a relative ``a/b/c`` path when it is one, else None (absolute, ``..``, not text)."""
    if not isinstance(value, str) or not value or "\\" in value or "\0" in value:
        return None
    path = PurePosixPath(value)
    if path.is_absolute() or not path.parts or ".." in path.parts:
        return None
    return path


def resolve_inside(root: Path, value: object) -> Path | None:
    """``root / value`` when ``value`` is a plain relative path that stays inside ``root``, else None."""
    relative = plain_relative(value)
    if relative is None:
        return None
    path = root / relative
    return path if inside(path, root) else None
