"""The Stopper: SIGTERM and SIGINT as a stop request that no code can swallow (tokenlat_cli/stopping.py).

These run in the test process's main thread with real signals sent to it; only one signal each, since a second one
ends the process by design.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import weakref

import pytest

from tokenlat_cli import stopping
from tokenlat_cli.stopping import Interrupted, Stopper


def _wait(event: threading.Event) -> None:
    assert event.wait(5), "the stop request never came"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_inside_a_finalizer_is_not_swallowed(signum: signal.Signals) -> None:
    # The bug: the old handler raised KeyboardInterrupt, which landed in a garbage collector's finalizer (urllib3's
    # pools have them); Python swallows exceptions there, and verify went on. Now nothing is raised in the handler.
    class Pooled:
        pass

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup or a background job
    with Stopper(deadline=None) as stopper:
        pooled = Pooled()
        weakref.finalize(pooled, os.kill, os.getpid(), signum)
        del pooled  # the finalizer runs here, and the signal's handler inside it
        gc.collect()
        _wait(stopper.requested)
        assert stopper.signal_name == signum.name
        with pytest.raises(Interrupted, match=f"interrupted by {signum.name}"):
            stopping.sleep(5)  # ends at once
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_stop_callbacks_run_in_the_watcher_thread_and_at_once_when_late() -> None:
    called: list[str] = []
    with Stopper(deadline=None) as stopper:
        with stopping.on_stop(lambda: called.append(threading.current_thread().name)):
            os.kill(os.getpid(), signal.SIGTERM)
            _wait(stopper.requested)
            deadline = time.monotonic() + 5
            while not called and time.monotonic() < deadline:
                time.sleep(0.01)
        with stopping.on_stop(lambda: called.append("late")):  # registered after the request: runs at once
            pass
    assert called == ["tokenlat-stopper", "late"]
    assert stopping.current() is None and not stopping.requested()


def test_a_stop_cancels_an_asyncio_phase() -> None:
    async def load() -> None:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        with stopping.on_stop(lambda: loop.call_soon_threadsafe(task.cancel)):
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(30)

    started = time.monotonic()
    with Stopper(deadline=None) as stopper, pytest.raises(asyncio.CancelledError):
        asyncio.run(load())
    assert stopper.requested.is_set() and time.monotonic() - started < 5


def test_without_a_stopper_sleep_and_checkpoint_are_plain() -> None:
    stopping.checkpoint()
    stopping.sleep(0)
    assert not stopping.requested()


STUCK = """
import sys, time
from tokenlat_cli.stopping import Stopper
with Stopper(deadline=float(sys.argv[1])) as stopper:
    stopper.on_give_up(lambda: print("gave up", flush=True))
    print("ready", flush=True)
    time.sleep(60)  # stuck where no safe point is: only the watchdog can end this
"""


@pytest.mark.parametrize(("deadline", "signals"), [(0.5, [signal.SIGTERM]), (60.0, [signal.SIGTERM, signal.SIGINT])])
def test_the_watchdog_ends_a_process_stuck_past_its_deadline_or_on_a_second_signal(
    deadline: float, signals: list[signal.Signals]
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK, str(deadline)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        started = time.monotonic()
        for signum in signals:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - started < 10  # not the 60 s sleep
    assert out == "gave up\n"
    assert proc.returncode in {128 + s for s in signals}
    assert "Error: interrupted by SIG" in err and "every started process was killed" in err
