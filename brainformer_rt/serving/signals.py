"""SIGINT/SIGTERM for every long-running process of the package: the one stop mechanism.

`StopRequest` turns the signals into an event the loops check. During start-up (importing,
loading, compiling, waiting for a stream) blocking work cannot check a flag, so while
``interrupt`` is true the handler also raises `Interrupted`, which ends that work at once; the
caller flips ``interrupt`` off once its loops run and check the event themselves.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Dict, Iterator, Optional

__all__ = ["Interrupted", "StopRequest"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived during start-up (a BaseException: nothing may swallow it)."""


class StopRequest:
    """SIGINT/SIGTERM → :attr:`event` (and `Interrupted` while :attr:`interrupt` is true).

    Use as a context manager, or `install()` / `restore()`. Signal handlers live in the main
    thread only: elsewhere both are no-ops and only `request()` sets the event.
    ``on_stop`` is called from the handler (e.g. to stop a player's loop).
    """

    def __init__(self, interrupt: bool = True, on_stop: Optional[Callable[[], None]] = None) -> None:
        self.event = threading.Event()
        self.interrupt = interrupt
        self.signal_name: Optional[str] = None
        self._on_stop = on_stop
        self._previous: Dict[int, Any] = {}

    def install(self) -> "StopRequest":
        """Take over SIGINT/SIGTERM (idempotent; main thread only)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return self
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "StopRequest":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def request(self, signal_name: Optional[str] = None) -> None:
        """Ask the loops to stop, as a signal would (without raising)."""
        self.signal_name = self.signal_name or signal_name
        self.event.set()
        if self._on_stop is not None:
            self._on_stop()

    def is_set(self) -> bool:
        return self.event.is_set()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a signal does not interrupt: it is answered (``Interrupted``) right after.

        For importing C extensions (torch, transformers): an exception raised from the handler
        while a module's initialisation runs Python code can leave that extension half set up,
        its native locks held, and whatever touches it next (the clean-up, an import) hanging.
        Importing takes seconds; a stop that waits for it is still a stop.
        """
        interrupt, self.interrupt = self.interrupt, False
        try:
            yield
        finally:
            self.interrupt = interrupt
        if interrupt and self.event.is_set():
            raise Interrupted(self.signal_name or "stop")

    def _handle(self, signum: int, frame: Any) -> None:
        already = self.event.is_set()
        self.request(signal.Signals(signum).name)
        if self.interrupt and not already:
            raise Interrupted(self.signal_name)
