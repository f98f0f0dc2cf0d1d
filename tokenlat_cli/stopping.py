"""SIGTERM and SIGINT as a stop request that never arrives as an exception in arbitrary code.

Python runs a signal handler in the main thread, between two bytecodes of whatever runs there. A handler that raises
(KeyboardInterrupt, as Python's own SIGINT handler does) can land in a garbage collector's finalizer, which swallows
it ("Exception ignored in: <finalize object ...>"), and the program goes on as if nothing was sent. So here:

- the Python-level handler does nothing; ``signal.set_wakeup_fd`` has the C-level handler write the signal's number
  into a pipe at once, whatever the main thread is doing (even blocked in C code that does not run handlers);
- a watcher thread reads that pipe and, on the first signal, sets :attr:`Stopper.requested` and runs the stop
  callbacks (stop the children, cancel the event loop's main task), in that thread;
- the main thread notices the request at safe points (:func:`checkpoint`, :func:`sleep` in every polling loop) and
  unwinds with :class:`Interrupted`, an ordinary exception raised by our own code where we expect it;
- a watchdog: if the main thread has not finished ``deadline`` seconds after the first signal, or a second signal
  comes, the watcher runs the give-up callbacks (kill the children, remove the temp dir, say so) and ends the
  process with ``os._exit``, so that a stop is bounded in time whatever the main thread is stuck in.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType

#: The signals that stop a run: what `kill` and a supervisor send, and Ctrl-C in a terminal.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: The byte the main thread writes to the pipe to end the watcher (no signal has number 0).
_QUIT = 0

Callback = Callable[[], None]


class Interrupted(Exception):
    """A stop was requested (SIGTERM or SIGINT); raised by :func:`checkpoint` and :func:`sleep`, at safe points."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name


class Stopper:
    """Turns SIGTERM and SIGINT into :attr:`requested` for the block it is entered for (main thread only).

    ``deadline``: seconds after the first signal within which the main thread must have left the block, else the
    give-up callbacks run and the process ends with 128 + the signal's number; None: no watchdog (a second signal still
    ends it).
    """

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.requested = threading.Event()
        self.signal_name: str | None = None
        self._stop_callbacks: list[Callback] = []
        self._give_up_callbacks: list[Callback] = []
        self._lock = threading.Lock()
        self._installed = False
        self._previous: dict[int, signal.Handlers | Callable[[int, FrameType | None], object] | int | None] = {}
        self._previous_wakeup = -1
        self._read_fd = self._write_fd = -1
        self._watcher: threading.Thread | None = None

    # -- the main thread's side

    def __enter__(self) -> Stopper:
        global _current
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread; whoever owns it handles signals
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it: the C handler must never block
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._relay)
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="tokenlat-stopper", daemon=True)
        self._watcher.start()
        self._installed = True
        _current = self
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _current
        if not self._installed:
            return
        _current = None
        signal.set_wakeup_fd(self._previous_wakeup)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        os.write(self._write_fd, bytes([_QUIT]))
        assert self._watcher is not None
        self._watcher.join()
        os.close(self._read_fd)
        os.close(self._write_fd)
        self._installed = False

    def _relay(self, signum: int, frame: FrameType | None) -> None:
        """The Python-level handler. It must exist (the default would end the process at once, or raise
        KeyboardInterrupt) and raises nothing. Usually it has nothing to do: the C handler wrote the signal to the
        watcher's pipe already. But an event loop may take the wakeup fd for itself while it runs (uvloop does, and
        then only runs this handler): then the signal went to the loop, so write it to the pipe here and leave the
        loop its fd."""
        current = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        if current != self._write_fd:
            signal.set_wakeup_fd(current)
            with contextlib.suppress(OSError):
                os.write(self._write_fd, bytes([signum]))

    def check(self) -> None:
        """Raise :class:`Interrupted` when a stop was requested."""
        if self.requested.is_set():
            raise Interrupted(self.signal_name or "a signal")

    def sleep(self, seconds: float) -> None:
        """``time.sleep`` that ends as soon as a stop is requested, with :class:`Interrupted`."""
        if self.requested.wait(seconds):
            self.check()

    @contextlib.contextmanager
    def on_stop(self, callback: Callback) -> Iterator[None]:
        """Run ``callback`` (in the watcher thread) when the stop is requested during the block, or at once when it
        was requested already. It must not block for long: it delays the watchdog."""
        with self._lock:
            self._stop_callbacks.append(callback)
            already = self.requested.is_set()
        if already:
            _run(callback)
        try:
            yield
        finally:
            with self._lock:
                self._stop_callbacks.remove(callback)

    def on_give_up(self, callback: Callback) -> None:
        """Run ``callback`` before the watchdog ends the process (kill what is left, remove files, say why)."""
        with self._lock:
            self._give_up_callbacks.append(callback)

    # -- the watcher thread

    def _watch(self) -> None:
        give_up_at: float | None = None
        while True:
            timeout = None if give_up_at is None else max(0.0, give_up_at - time.monotonic())
            readable, _, _ = select.select([self._read_fd], [], [], timeout)
            if not readable:  # the watchdog: the main thread did not finish in time
                self._give_up(f"not stopped within {self.deadline:g}s")
                return
            data = os.read(self._read_fd, 512)
            if _QUIT in data:
                return
            # Signals that arrive together come in one read. Bytes of other signals (any with a Python handler
            # wakes the fd) are not ours.
            for name in (signal.Signals(b).name for b in data if b in STOP_SIGNALS):
                if self.requested.is_set():
                    self._give_up(f"then {name}")
                    return
                self.signal_name = name
                with self._lock:
                    self.requested.set()
                    callbacks = list(self._stop_callbacks)
                for callback in callbacks:
                    _run(callback)
                if self.deadline is not None:
                    give_up_at = time.monotonic() + self.deadline

    def _give_up(self, why: str) -> None:
        with self._lock:
            callbacks = list(self._give_up_callbacks)
        for callback in callbacks:
            _run(callback)
        # os.write, not print: the main thread may hold sys.stderr's lock, stuck where it is.
        line = f"Error: interrupted by {self.signal_name} ({why}); every started process was killed\n"
        with contextlib.suppress(OSError):
            os.write(sys.stderr.fileno(), line.encode())
        # As a shell reports a process the signal ended.
        os._exit(128 + signal.Signals[self.signal_name].value if self.signal_name else 1)


def _run(callback: Callback) -> None:
    """A stop or give-up callback: one that fails must not keep the others (or the exit) from running."""
    try:
        callback()
    except Exception as exc:  # reported, and the stop goes on
        with contextlib.suppress(OSError):
            os.write(sys.stderr.fileno(), f"tokenlat: while stopping: {exc!r}\n".encode())


#: The Stopper of the block being run, if any: the polling loops deep in verify reach it here.
_current: Stopper | None = None


def reclaim_wakeup_fd() -> None:
    """Point the signal wakeup fd back at the current Stopper's pipe, from the main thread.

    An event loop may take the wakeup fd for itself when it starts (uvloop does). Signals then reach the watcher
    only through the Python-level handler, which runs when the main thread next runs Python code. In one CI run
    under uvloop, a second signal sent right after the first did not cut the sidecar's drain (the cause was not
    pinned down); this takes that path out of the way. Taken back, the C-level handler writes every signal
    straight to the watcher's pipe again; the loop needs none (nothing here registers a loop signal handler), and
    gives the fd back to its previous owner when it closes.
    """
    stopper = _current
    if stopper is not None and stopper._installed:
        signal.set_wakeup_fd(stopper._write_fd, warn_on_full_buffer=False)


def current() -> Stopper | None:
    return _current


def checkpoint() -> None:
    """A safe point: raise :class:`Interrupted` when a stop was requested."""
    if _current is not None:
        _current.check()


def sleep(seconds: float) -> None:
    """``time.sleep`` that a stop request ends at once (with :class:`Interrupted`); every polling loop uses it."""
    if _current is None:
        time.sleep(seconds)
    else:
        _current.check()
        _current.sleep(seconds)


def requested() -> bool:
    """Whether a stop was requested in the block being run."""
    return _current is not None and _current.requested.is_set()


def on_stop(callback: Callback) -> contextlib.AbstractContextManager[None]:
    """:meth:`Stopper.on_stop` of the block being run; nothing when there is none."""
    return contextlib.nullcontext() if _current is None else _current.on_stop(callback)


def on_give_up(callback: Callback) -> None:
    """:meth:`Stopper.on_give_up` of the block being run; nothing when there is none."""
    if _current is not None:
        _current.on_give_up(callback)
