"""One run at a time per dataset (scrape, quarantine) and per pipeline (its state file); one
update at a time of a small shared file (:func:`updating`).

The lock is an OS lock (``flock``, through :mod:`filelock`) on ``.NAME.lock`` beside what it
guards (``data/.image_dataset.lock``), so the dataset itself holds only images and its manifest.
The system releases it when its process ends, however it ends, so a killed run never blocks the
next one. Who holds it (pid, host, start time, command) is written beside it, in
``.NAME.lock.json``, for the message a second run fails with at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from imgclf.errors import ImgclfError
from imgclf.io import atomic_write_json

# A storage URL on the command line (tune's PostgreSQL) keeps its password out of the file.
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)\S*@")


def holder() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": _URL_PASSWORD.sub(r"\1***@", shlex.join([Path(sys.executable).name, *sys.argv])),
    }


def lock_paths(subject: Path) -> tuple[Path, Path]:
    """The lock file of ``subject`` and the file naming its holder."""
    lock = subject.parent / f".{subject.name}.lock"
    return lock, lock.with_name(lock.name + ".json")


def describe_holder(subject: Path) -> str:
    try:
        info = json.loads(lock_paths(subject)[1].read_text(encoding="utf-8"))
        return (
            f"pid {int(info['pid'])} on {info['host']}, started {info['started']}, "
            f"command: {str(info['command'])[:300]}"
        )
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError):
        return "a process that has not said who it is yet"


@contextlib.contextmanager
def _held(path: Path, timeout: float, busy: Callable[[], str]) -> Iterator[None]:
    """``path``'s OS lock while the block runs, waiting up to ``timeout`` seconds for it;
    :class:`ImgclfError` with ``busy()`` when another process keeps it longer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise ImgclfError(busy()) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def exclusive(subject: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``subject``'s lock while the block runs; :class:`ImgclfError` at once when another run
    holds it. ``what`` names the subject in the message (``the dataset``)."""
    subject = Path(subject)
    path, holder_path = lock_paths(subject)

    def busy() -> str:  # who holds it, read only when someone does
        return (
            f"{what} {subject} is in use by another run ({describe_holder(subject)}); wait for it to "
            f"finish or stop it, then run again (the lock, {path}, goes when that process ends)"
        )

    with _held(path, 0, busy):
        try:
            atomic_write_json(holder_path, holder())
            yield
        finally:
            # Gone before the lock is, so that the next holder's details are the only ones there.
            with contextlib.suppress(OSError):
                holder_path.unlink()


@contextlib.contextmanager
def updating(subject: str | os.PathLike, timeout: float = 60.0) -> Iterator[None]:
    """Hold ``subject``'s lock for a read-modify-write of it, waiting for another process's (which
    holds it for milliseconds) rather than failing: two evaluations finishing at once both keep
    their entry. :class:`ImgclfError` after ``timeout`` seconds."""
    path = lock_paths(Path(subject))[0]

    def busy() -> str:
        return (
            f"another process has held the lock on {subject} for {timeout:g} s; stop it if it hangs "
            f"and run again (the lock, {path}, goes when that process ends)"
        )

    with _held(path, timeout, busy):
        yield
