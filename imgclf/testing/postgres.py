"""A throwaway PostgreSQL cluster for tests: Debian's server, run as the postgres user."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from imgclf.testing.processes import free_port


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(*command: str) -> list[str]:
    # Debian's server refuses to run as root; the tests may run as root or as a normal user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return list(command)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a cluster in a temporary folder on a free loopback port; yield its SQLAlchemy URL."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, "PostgreSQL server binaries not found"
    base = Path(tempfile.mkdtemp(prefix="imgclf-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres(
            str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        ),
        check=True,
        capture_output=True,
    )
    server = subprocess.Popen(
        _as_postgres(
            str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(base)
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            ).returncode
            != 0
        ):
            assert server.poll() is None, "PostgreSQL exited during start-up"
            assert time.monotonic() < deadline, "PostgreSQL did not start within 60 s"
            time.sleep(0.2)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
