"""Signals, interrupts, child processes and exits: one scheme for the long jobs and the server.

- :class:`StopSignals`: SIGINT and SIGTERM handled in this process, the first by the job's own
  action (the pipeline raises :class:`Interrupted` in the stage in flight, the scraper cancels its
  event loop's work, the server drains), later ones by a second action or ignored while the
  clean-up the first began runs. Processes forked after installing (data-loader workers, LitServe's
  HTTP processes) behave as if nothing had been installed.
- :class:`Interrupted`: the one exception for "a stop signal ended the job after its clean-up".
- :func:`stop_process_group` and :func:`end_children`: no child outlives the job that started it.
- :func:`exit_with` and :func:`exits_cleanly`: a user error or an interrupt ends a command with one
  line on stderr and its exit status (2, 128 + the signal, 130 for a Ctrl+C before the job began).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from imgclf.errors import ImgclfError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
USER_ERROR = 2  # the exit status of a user error (the message says what to do)


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped the job, after its clean-up. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way takes it for an ordinary failure.

    ``during``: what was running (a pipeline stage); ``kept``: what the user still has.
    """

    def __init__(self, signum: int, during: str | None = None, kept: str = "finished work is kept") -> None:
        self.signum = signum
        self.during = during
        self.kept = kept
        super().__init__(signal.Signals(signum).name)

    def __str__(self) -> str:
        where = f" during {self.during}" if self.during else ""
        name = signal.Signals(self.signum).name
        return f"stopped by {name}{where}; {self.kept}, run the same command again to continue"


class StopSignals:
    """SIGINT and SIGTERM in this process: the first calls ``first(signum)``, each later one
    ``later(signum)`` (by default nothing: the clean-up the first began goes on).

    A process forked after :meth:`install` (which inherits the handler) gets the handler it had
    before (``in_children="previous"``: SIGINT stays the KeyboardInterrupt a data-loader worker
    expects) or the signal's default action (``in_children="default"``), and the signal again.
    """

    def __init__(
        self,
        first: Callable[[int], None],
        later: Callable[[int], None] | None = None,
        in_children: str = "previous",
    ) -> None:
        if in_children not in ("previous", "default"):
            raise ValueError(f"in_children={in_children!r}: use previous or default")
        self.first = first
        self.later = later
        self.in_children = in_children
        self.owner = os.getpid()
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any = None) -> None:
        if os.getpid() != self.owner:
            before = self._previous.get(signum) if self.in_children == "previous" else None
            signal.signal(signum, signal.SIG_DFL if before is None else before)
            os.kill(os.getpid(), signum)
            return
        if self.received is None:
            self.received = signum
            self.first(signum)
        elif self.later is not None:
            self.later(signum)

    def install(self) -> None:
        """Install (again: an event loop that handled the signals resets them when it ends)."""
        for signum in STOP_SIGNALS:
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self.handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextlib.contextmanager
    def in_loop(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        """The same handling inside an asyncio event loop (run in the loop, between callbacks),
        while the block runs; the signals' handlers are reset when it ends."""
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.handle, signum)
        try:
            yield
        finally:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)


def stop_process_group(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Terminate the process group of ``process`` (started with ``start_new_session``); what has
    not ended after ``grace_s`` seconds is killed, and so are helpers left behind in its group."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", process.args[1], grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def end_children(timeout: float = 10) -> None:
    """Stop any multiprocessing child still running, so that none outlives the main process."""
    children = mp.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout)
        if child.is_alive():
            log.warning("child process %s (pid %d) ignored SIGTERM; killing it", child.name, child.pid)
            child.kill()
            child.join()


def exit_with(message: str, status: int = USER_ERROR) -> NoReturn:
    """End the command: one line on stderr (``error: ...``, ``interrupted: ...``) and ``status``."""
    print(message, file=sys.stderr)
    sys.exit(status)


@contextlib.contextmanager
def exits_cleanly() -> Iterator[None]:
    """For the long, resumable jobs (scrape, pipeline): one line on stderr and a status instead of
    a traceback. :class:`Interrupted` exits with 128 + its signal, an :class:`ImgclfError` with 2,
    a Ctrl+C before the job installed its handlers (nothing to undo) with 130."""
    try:
        yield
    except Interrupted as exc:
        exit_with(f"interrupted: {exc}", 128 + exc.signum)
    except ImgclfError as exc:
        exit_with(f"error: {exc}")
    except KeyboardInterrupt:
        exit_with("interrupted; run the same command again to continue", 128 + signal.SIGINT)
