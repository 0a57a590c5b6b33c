"""The runtime's background threads: started lazily, stopped and joined on close and at interpreter exit.

Every thread the runtime starts is a :class:`BackgroundThread` (the latency refresher, the in-flight stop
watchdog). Each is a daemon thread, so a program that never calls ``close`` still exits, *and* an
``atexit`` hook stops and joins every one still alive before the interpreter finalises.

Why the join matters (issue 14, item 7: a demo that had written all its results died with "terminate
called without an active exception", exit 134): at finalisation CPython ends daemon threads that try to
take the GIL back by unwinding them with ``pthread_exit``; a thread that is inside native C++ code at that
moment (numpy's C++ sort under ``np.quantile`` in the latency refresher, an ONNX Runtime call) is then
unwound through frames that must not throw, and the C++ runtime calls ``std::terminate``. A thread that
has been joined before finalisation cannot be caught there. ``atexit`` hooks run after non-daemon
threads are joined and before finalisation, which is the window used here.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Callable

__all__ = ["BackgroundThread", "live_threads", "stop_all"]

_JOIN_TIMEOUT_S = 5.0  # a thread's loop wakes at least this often; a hung one is left to the daemon flag

_live: "weakref.WeakSet[BackgroundThread]" = weakref.WeakSet()
_live_lock = threading.Lock()


class BackgroundThread:
    """One daemon thread running ``target(stop_event)``, started on demand and restartable.

    ``target`` must return soon after ``stop_event`` is set (wait on the event, or have ``wake`` notify
    whatever it waits on). It may also return by itself (e.g. when idle); :meth:`start` starts it again.

    Args:
        name: the thread's name (``threading.enumerate()`` shows it).
        target: the loop; called with the stop event.
        wake: called after the stop event is set, to wake a loop that waits on something else.
    """

    def __init__(self, name: str, target: Callable[[threading.Event], None], wake: Callable[[], None] | None = None) -> None:
        self.name = name
        self._target = target
        self._wake = wake
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False

    @property
    def running(self) -> bool:
        """Whether the thread has been started and has not finished (a cheap read for hot paths)."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread unless it runs already or :meth:`close` was called."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._stop.clear()
            thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread = thread
            with _live_lock:
                _live.add(self)
            thread.start()

    def stop(self, timeout: float | None = _JOIN_TIMEOUT_S) -> None:
        """Ask the loop to end and join it; :meth:`start` may start it again later."""
        with self._lock:
            thread = self._thread
            self._stop.set()
        if self._wake is not None:
            self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Stop and join for good: later :meth:`start` calls do nothing. Idempotent."""
        with self._lock:
            self._closed = True
        self.stop()

    def _run(self) -> None:
        try:
            self._target(self._stop)
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None


def live_threads() -> list[threading.Thread]:
    """The runtime's threads that are alive now (for tests and diagnostics)."""
    with _live_lock:
        owners = list(_live)
    return [t for t in (o._thread for o in owners) if t is not None and t.is_alive()]


def stop_all() -> None:
    """Stop and join every background thread of every runtime (registered with ``atexit``)."""
    with _live_lock:
        owners = list(_live)
    for owner in owners:
        owner.close()


atexit.register(stop_all)
