"""imgclf.process: the one signal, interrupt and exit scheme of the pipeline, the scraper and the
server, in real signals and real processes (the scenarios that use it are in test_pipeline,
test_scrape_interrupt and test_serve_lifecycle)."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import subprocess
import time

import pytest

from imgclf.errors import ImgclfError
from imgclf.process import Interrupted, StopSignals, exits_cleanly, stop_process_group
from imgclf.testing.processes import living_group_members


def test_interrupted_says_what_stopped_what_and_what_is_kept():
    plain = Interrupted(signal.SIGTERM)
    assert str(plain) == "stopped by SIGTERM; finished work is kept, run the same command again to continue"
    staged = Interrupted(signal.SIGINT, "round 1 scrape", "finished stages are kept")
    assert str(staged).startswith("stopped by SIGINT during round 1 scrape; finished stages are kept")
    with pytest.raises(Interrupted):  # no `except Exception` on the way takes it for a failure
        try:
            raise staged
        except Exception:
            pytest.fail("Interrupted was caught as an Exception")


def test_the_first_signal_acts_later_ones_wait_and_restore_puts_back_the_handlers():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    seen: list[tuple[str, int]] = []
    signals = StopSignals(lambda s: seen.append(("first", s)), lambda s: seen.append(("later", s)))
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # handlers run in the main thread between bytecodes
    finally:
        signals.restore()
    assert seen == [("first", signal.SIGTERM), ("later", signal.SIGINT), ("later", signal.SIGTERM)]
    assert signals.received == signal.SIGTERM
    assert {signum: signal.getsignal(signum) for signum in before} == before


def _signal_myself(signum: int, report) -> None:
    try:
        os.kill(os.getpid(), signum)
        time.sleep(5)
        report.put("the signal did nothing")
    except KeyboardInterrupt:
        report.put("KeyboardInterrupt")


@pytest.mark.parametrize(
    ("in_children", "signum", "outcome"),
    [
        ("previous", signal.SIGINT, "KeyboardInterrupt"),  # what a data-loader worker expects
        ("previous", signal.SIGTERM, -signal.SIGTERM),
        ("default", signal.SIGINT, -signal.SIGINT),  # LitServe's processes: the default action
        ("default", signal.SIGTERM, -signal.SIGTERM),
    ],
)
def test_a_forked_child_behaves_as_if_nothing_was_installed(in_children, signum, outcome):
    called = []
    signals = StopSignals(called.append, in_children=in_children)
    signals.install()
    try:
        context = mp.get_context("fork")
        report = context.Queue()
        child = context.Process(target=_signal_myself, args=(signum, report))
        child.start()
        child.join(20)
    finally:
        signals.restore()
    assert not called, "the parent's action ran in the child"
    if outcome == "KeyboardInterrupt":
        assert child.exitcode == 0 and report.get(timeout=5) == "KeyboardInterrupt"
    else:
        assert child.exitcode == outcome


def test_in_an_event_loop_the_first_signal_cancels_the_work():
    async def main() -> int | None:
        task = asyncio.current_task()
        signals = StopSignals(lambda s: task.cancel())
        with signals.in_loop(asyncio.get_running_loop()):
            try:
                asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                return signals.received
        return None

    assert asyncio.run(main()) == signal.SIGINT


@pytest.mark.parametrize(
    ("raised", "status", "line"),
    [
        (
            Interrupted(signal.SIGTERM, "round 2 train"),
            128 + signal.SIGTERM,
            "interrupted: stopped by SIGTERM during round 2 train; finished work is kept, "
            "run the same command again to continue",
        ),
        (ImgclfError("rounds=0: give a whole number"), 2, "error: rounds=0: give a whole number"),
        (KeyboardInterrupt(), 130, "interrupted; run the same command again to continue"),
    ],
)
def test_a_job_ends_with_one_line_and_its_status(raised, status, line, capsys):
    with pytest.raises(SystemExit) as exited, exits_cleanly():
        raise raised
    assert exited.value.code == status
    assert capsys.readouterr().err.splitlines() == [line]


def test_stopping_a_process_group_leaves_nothing_of_it_running():
    # the shell and its children ignore SIGTERM: they are killed after the grace period
    script = "trap '' TERM; sleep 300 & sleep 300 & wait"
    process = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while len(living_group_members(process.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(living_group_members(process.pid)) == 3  # the shell and its two sleeps
    started = time.monotonic()
    stop_process_group(process, grace_s=1)
    assert process.returncode == -signal.SIGKILL and time.monotonic() - started >= 1
    assert living_group_members(process.pid) == []
