"""Atomic writes: a reader never sees a half-written file, a crash never leaves one behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes owner-only files; give the result the usual permissions (umask applies)
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def create_new_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``path`` whole in one step, as :func:`atomic_write_bytes` does, but only when no file
    has that name: :class:`FileExistsError` otherwise, and the file there is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # link() fails when the name is taken, where rename() would replace the file.
        os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def move_no_replace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a file to ``target``, which must not exist (:class:`FileExistsError`, nothing moved):
    a file that appears at ``target`` at any moment is never overwritten."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            # Another file system: a full copy beside the target, then linked into place.
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            try:
                shutil.copy2(source, tmp)
                _link_or_copy_exclusive(Path(tmp), target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        elif exc.errno in _NO_HARD_LINKS:
            _copy_exclusive(source, target)
        else:
            raise
    os.unlink(source)


# What link() answers on a file system without hard links (FAT, exFAT, some network shares).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}


def _link_or_copy_exclusive(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _copy_exclusive(source, target)


def _copy_exclusive(source: Path, target: Path) -> None:
    """Without hard links: create ``target`` exclusively (``O_EXCL``: a file already there, or one
    that appears first, raises :class:`FileExistsError`) and copy into it; a failed copy leaves no
    partial target behind."""
    with open(target, "xb") as out:
        try:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        except BaseException:
            out.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            raise
    shutil.copystat(source, target)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def json_digest(value: Any, length: int = 16) -> str:
    """A short sha256 of ``value`` as sorted-key JSON: the same settings give the same digest, in
    any process (what resumable runs, the feature store and the pipeline's state compare)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
