"""The server's life under a process manager: readiness, overload, drain on SIGTERM, a dead worker.

``python serve.py`` is three kinds of process: the main one (LitServe's ``LitServer.run``), the
HTTP processes it forks, and the inference workers it spawns. What they share lives here, in
shared memory:

- the *phase*, written by the main process only: serving, draining (after SIGTERM or SIGINT),
  stopping (the drain ran out of time) or failed (an inference worker died);
- how many inference workers have loaded the model (each adds one when it is done);
- how many ``/classify`` requests are still uploading their body, and how many the HTTP processes
  have admitted to the model and not yet answered: counted apart, so that slow uploads never hold
  the slots of requests ready for the model.

:class:`imgclf.serving.middleware.Admission`, the innermost of the server's middlewares, answers
from that state in the HTTP processes; :class:`Supervisor` changes it in the main process, on a
signal or a worker's death.
A stop always ends in LitServe's own shutdown (the one Ctrl+C starts), then a sweep that ends any
child process still there, so that nothing outlives the main process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import signal
import threading
import time
from typing import Any, Callable, NoReturn

from imgclf.process import StopSignals

log = logging.getLogger(__name__)

SERVING, DRAINING, STOPPING, FAILED = 0, 1, 2, 3
# Exit status after an inference worker died: not 2 (a configuration error, which a restart
# cannot fix), so that a process manager can restart on 3 and give up on 2.
WORKER_DIED = 3
# Longest the main process waits, once it gives up on the requests in flight, for them to get their
# 503 (see imgclf.serving.middleware.Admission.answer_unless_abandoned).
ABANDON_WAIT = 5.0


class ServingState:
    """The phase, the loaded workers, the uploads and the requests in flight, shared by every process."""

    def __init__(self, workers: int, max_in_flight: int, max_uploads: int = 1) -> None:
        spawn = mp.get_context("spawn")  # the inference workers are spawned; the rest is forked
        self.workers = workers
        self.max_in_flight = max_in_flight
        self.max_uploads = max_uploads
        self.phase = spawn.RawValue("i", SERVING)
        self.loaded = spawn.Value("i", 0)
        self.uploading = spawn.Value("i", 0)
        self.in_flight = spawn.Value("i", 0)

    @property
    def ready(self) -> bool:
        return self.phase.value == SERVING and self.loaded.value >= self.workers

    def model_loaded(self) -> None:
        with self.loaded.get_lock():
            self.loaded.value += 1

    @property
    def pending(self) -> int:
        """Requests the server has taken and not yet answered, uploading or in flight."""
        return self.uploading.value + self.in_flight.value

    @staticmethod
    def _take(counter: Any, limit: int) -> bool:
        with counter.get_lock():
            if counter.value >= limit:
                return False
            counter.value += 1
            return True

    @staticmethod
    def _give_back(counter: Any) -> None:
        with counter.get_lock():
            counter.value -= 1

    def start_upload(self) -> bool:
        """Take one more upload unless ``max_uploads`` bodies are already arriving."""
        return self._take(self.uploading, self.max_uploads)

    def end_upload(self) -> None:
        self._give_back(self.uploading)

    def enter(self) -> bool:
        """Admit one more request unless ``max_in_flight`` are already waiting or running."""
        return self._take(self.in_flight, self.max_in_flight)

    def leave(self) -> None:
        self._give_back(self.in_flight)


def describe_exit(process: mp.process.BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (the out-of-memory killer, or kill -9)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {code}"


class Supervisor:
    """The main process's part: SIGTERM/SIGINT drain, a watch over the inference workers.

    LitServe's ``run`` blocks the main thread until a KeyboardInterrupt, and LitServe itself does
    nothing on SIGTERM, so the process managers' stop signal left its children running. Here both
    signals drain: new requests get 503, those in flight or still uploading finish (up to
    ``shutdown_timeout`` seconds, after which they get a 503), then the KeyboardInterrupt starts
    LitServe's own shutdown. A second signal stops the wait.

    A worker that dies (out of memory, a crash in a native library) takes the requests it held
    with it and leaves nothing to answer the rest, so the server stops, with one log line naming
    the cause and exit status :data:`WORKER_DIED`, for the process manager to start a fresh one;
    its requests in flight get a 503 first. LitServe's own restart would leave those requests
    waiting for ever.
    """

    def __init__(self, state: ServingState, shutdown_timeout: float) -> None:
        self.state = state
        self.shutdown_timeout = shutdown_timeout
        self.stopping = False
        self.hurry = False
        self.failure: str | None = None
        # LitServe's HTTP processes and its manager, forked later, inherit the handler: there the
        # signals keep their default action.
        self.signals = StopSignals(self.on_first_signal, self.on_later_signal, in_children="default")

    def install(self) -> None:
        self.signals.install()

    def on_first_signal(self, signum: int) -> NoReturn:
        self.stopping = True
        if self.failure is None:
            self.drain(signal.Signals(signum).name)
        raise KeyboardInterrupt  # what LitServe's run() stops on

    def on_later_signal(self, signum: int) -> None:
        self.hurry = True  # stop waiting for the requests in flight

    def drain(self, reason: str) -> None:
        self.state.phase.value = DRAINING
        deadline = time.monotonic() + self.shutdown_timeout
        log.info(
            "%s: refusing new requests, finishing %d in flight and %d uploading (up to %gs)",
            reason,
            self.state.in_flight.value,
            self.state.uploading.value,
            self.shutdown_timeout,
        )
        while self.state.pending > 0 and time.monotonic() < deadline and not self.hurry:
            time.sleep(0.05)
        if self.state.pending > 0:
            log.warning("stopping with %d requests unanswered; they get 503", self.state.pending)
            self.abandon(STOPPING)

    def abandon(self, phase: int) -> None:
        """Have the HTTP processes answer 503 to every request still waiting, and wait for that."""
        self.state.phase.value = phase
        deadline = time.monotonic() + ABANDON_WAIT
        while self.state.pending > 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def watch(self, workers: Callable[[], list[mp.process.BaseProcess]], expected: int) -> None:
        """Start a thread that stops the server when an inference worker dies."""
        thread = threading.Thread(
            target=self._watch, args=(workers, expected), name="worker-watch", daemon=True
        )
        thread.start()

    def _watch(self, workers: Callable[[], list[mp.process.BaseProcess]], expected: int) -> None:
        while len(workers()) < expected:
            if self.stopping:
                return
            time.sleep(0.1)
        processes = list(workers())
        ready = mp.connection.wait([process.sentinel for process in processes])
        if self.stopping:
            return  # LitServe stopping its workers, not a failure
        dead = next(process for process in processes if process.sentinel in ready)
        dead.join(5)  # the sentinel is ready as the process exits, a moment before its status
        index = processes.index(dead)
        self.failure = f"inference worker {index} (pid {dead.pid}) {describe_exit(dead)}"
        log.error(
            "%s; stopping the server (exit status %d) for the process manager to restart it",
            self.failure,
            WORKER_DIED,
        )
        self.abandon(FAILED)
        # LitServe's shutdown runs in the main thread, where its run() waits.
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
