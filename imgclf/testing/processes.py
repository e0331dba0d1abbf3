"""Helpers for tests and benchmarks that start servers in child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgclf.testing import REPO_ROOT


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def wait_until_healthy(process: subprocess.Popen, url: str, log_path: Path, timeout: float = 180) -> None:
    """Until ``GET url/health`` answers 200; RuntimeError with the server's log when it exits or
    does not get there within ``timeout`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve.py exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"serve.py did not become healthy in {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def start_serve(
    *overrides: str,
    log_path: Path,
    stdout_path: Path | None = None,
    root: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    timeout: float = 180,
) -> tuple[subprocess.Popen, str]:
    """``python serve.py overrides`` on a free loopback port in its own process group, once it is
    healthy: (the process, its URL). Its log (stderr, and stdout unless ``stdout_path``) goes to
    ``log_path``. RuntimeError, with the log, when it does not get there (the process stopped)."""
    port = free_port()
    command = [sys.executable, "serve.py", "host=127.0.0.1", f"port={port}", *overrides]
    with open(log_path, "wb") as log, open(stdout_path or os.devnull, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=root,
            stdout=out if stdout_path else log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url, log_path, timeout)
    except RuntimeError:
        stop(process)
        raise
    return process, url


def drive(url: str, uploads: list[bytes], concurrency: int, requests: int) -> dict[str, Any]:
    """``requests`` POSTs of ``uploads`` (in turn) to ``url/classify`` from ``concurrency`` threads,
    each awaiting its answer before the next: the wall time, each answer's latency and batch size
    (the server's ``X-Batch-Size``), and what went wrong with the others."""
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                start = time.perf_counter()
                try:
                    response = http.post(
                        "/classify", files={"img": ("photo.jpg", uploads[index % len(uploads)])}
                    )
                    ok = response.status_code == 200 and response.json()["success"] is True
                    problem = None if ok else f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    problem, response = repr(exc), None
                elapsed = time.perf_counter() - start
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(elapsed)
                        batch_sizes.append(int(response.headers["x-batch-size"]))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": requests,
        "wall": wall,
        "latencies": latencies,
        "batch_sizes": batch_sizes,
        "errors": errors,
    }


def start_script(script: str, args: list[str]) -> subprocess.Popen:
    """``python scripts/<script>.py args`` from the repository root, its output discarded: for
    tests that kill it part-way."""
    return subprocess.Popen(
        [sys.executable, f"scripts/{script}.py", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGINT to the main process, as Ctrl+C (serve.py then drains and stops its children); kill
    the group if that hangs.

    The process must have been started with ``start_new_session=True``.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def living_group_members(pgid: int) -> list[str]:
    """``pid command`` of every process of group ``pgid`` that is still running (Linux /proc).

    Zombies are left out: they have exited, and whoever adopted them reaps them in its own time.
    """
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        state, _ppid, group = text[text.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(f"{stat.parent.name} {command.strip()}")
    return members


def wait_for_group_to_end(pgid: int, timeout: float = 60) -> list[str]:
    """Wait until no process of the group runs; what still runs at ``timeout`` is returned."""
    deadline = time.monotonic() + timeout
    while (members := living_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return members


def processes() -> dict[int, tuple[int, str, str]]:
    """Every process: pid -> (parent pid, start time, command name), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[19], name)
    return table


def descendants(root: int) -> set[tuple[int, str, str]]:
    """(pid, start time, name) of every process below ``root``."""
    table = processes()
    found, frontier = set(), {root}
    while frontier:
        children = {pid for pid, (parent, _, _) in table.items() if parent in frontier}
        found |= {(pid, table[pid][1], table[pid][2]) for pid in children}
        frontier = children
    return found


def alive(process: tuple[int, str, str]) -> bool:
    pid, started, _ = process
    info = processes().get(pid)
    return info is not None and info[1] == started and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


class HeldUpload:
    """A ``POST /classify`` whose body stops halfway until :meth:`finish`: a request the server
    counts as uploading for as long as a test needs one (within the server's ``body_timeout_s``),
    without a slow model.
    """

    BOUNDARY = "heldupload"

    def __init__(self, url: str, image: bytes, timeout: float = 300) -> None:
        import threading

        import httpx

        self.release = threading.Event()
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        head = (
            f'--{self.BOUNDARY}\r\nContent-Disposition: form-data; name="img"; filename="held.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        half = len(image) // 2
        self.parts = (head + image[:half], image[half:] + f"\r\n--{self.BOUNDARY}--\r\n".encode())
        self.thread = threading.Thread(target=self.post, args=(url, timeout), daemon=True)
        self.thread.start()

    def body(self):
        yield self.parts[0]
        self.release.wait()
        yield self.parts[1]

    def post(self, url: str, timeout: float) -> None:
        import httpx

        headers = {"content-type": f"multipart/form-data; boundary={self.BOUNDARY}"}
        try:
            self.response = httpx.post(
                f"{url}/classify", content=self.body(), headers=headers, timeout=timeout
            )
        except httpx.HTTPError as exc:
            self.error = exc

    def finish(self):
        self.release.set()
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.response


def interrupt_when(
    command: list[str],
    cwd: Path,
    ready: Callable[[set[tuple[int, str, str]]], bool],
    signum: int,
    timeout: float = 600,
    stop_timeout: float = 120,
) -> tuple[int, set[tuple[int, str, str]]]:
    """Run ``command`` in a process group of its own (output to ``cwd/out.log``, ``cwd/err.log``),
    poll its descendants until ``ready(seen)``, then send ``signum`` to the main process only, as
    ``kill PID`` does: (its exit status, every descendant seen). Fails if it exits first, if the
    moment never comes within ``timeout`` (catches a hang, measures nothing), if it takes over
    ``stop_timeout`` to stop, or if anything it started outlives it; whatever happens, nothing it
    started is left running."""
    seen: set[tuple[int, str, str]] = set()
    with open(cwd / "out.log", "w") as out, open(cwd / "err.log", "w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=cwd, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and process.poll() is None:
                seen |= descendants(process.pid)
                if ready(seen):
                    break
                time.sleep(0.1)
            assert process.poll() is None, (cwd / "err.log").read_text()[-3000:]
            assert ready(seen), "the moment to interrupt never came"
            seen |= descendants(process.pid)
            os.kill(process.pid, signum)
            code = process.wait(timeout=stop_timeout)
            assert [p for p in seen if alive(p)] == [], "outlived the command"
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:  # its process group is empty
                return code, seen
            raise AssertionError(f"process group {process.pid} outlived the command")
        finally:
            if process.poll() is None:  # the test failed: leave nothing behind either
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                for child in seen | descendants(process.pid):
                    if alive(child):
                        os.kill(child[0], signal.SIGKILL)
