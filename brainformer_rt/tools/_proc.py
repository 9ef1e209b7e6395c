"""Child processes of the companion tools (bench, demo): one home for starting, reading and
stopping them, the ``brainformer-rt`` command line they run, free loopback ports, and the main
of the bench's peer processes (naive loop, relay).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from brainformer.errors import EXIT_OK, EXIT_USAGE, last_error_line, print_error

__all__ = ["ChildProcess", "free_port", "free_tcp_address", "peer_main", "rt_cli", "stop_all"]

logger = logging.getLogger(__name__)

#: Lines of a child's log shown when it failed.
LOG_TAIL_LINES = 12


def rt_cli(*args: str) -> List[str]:
    """The command line that runs ``brainformer-rt ARGS`` with this interpreter."""
    return [sys.executable, "-m", "brainformer_rt.cli", *args]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_tcp_address() -> str:
    """A ``tcp://127.0.0.1:PORT`` that was free a moment ago."""
    return f"tcp://127.0.0.1:{free_port()}"


class ChildProcess:
    """A subprocess whose output goes to files (pipes could fill up and block it).

    ``stdout`` goes to ``DIR/NAME.out``; stderr to ``DIR/NAME.err``, or into the same file with
    ``merge_stderr``. ``new_session`` puts it in its own session, so Ctrl-C on the terminal
    reaches only the parent, which stops its children itself. ``done_marker`` is a file the
    child writes once its work is done: after it, a slow exit is only interpreter teardown.
    """

    def __init__(self, name: str, argv: Sequence[str], directory: Path, *, merge_stderr: bool = False,
                 new_session: bool = False, done_marker: Optional[Path] = None):
        self.name = name
        self.argv = list(argv)
        self.done_marker = done_marker
        self.stdout_path = directory / f"{name}.out"
        self.stderr_path = self.stdout_path if merge_stderr else directory / f"{name}.err"
        self._out = self.stdout_path.open("wb")
        self._err = None if merge_stderr else self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            self.argv, stdout=self._out, stderr=subprocess.STDOUT if merge_stderr else self._err,
            stdin=subprocess.DEVNULL, env=dict(os.environ), start_new_session=new_session)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stdout(self) -> str:
        return _read(self.stdout_path)

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of its output (stdout, and stderr when merged)."""
        return "\n".join(self.stdout().rstrip().splitlines()[-lines:])

    def last_error_line(self) -> str:
        return last_error_line(_read(self.stderr_path))

    def describe_exit(self) -> str:
        """``exited with code N`` or ``was killed by SIGNAL``."""
        code = self.process.returncode
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def send_stop(self) -> None:
        """SIGTERM, if it still runs."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait_or_kill(self, deadline: float) -> Optional[int]:
        """Wait until ``deadline`` (``time.monotonic()``), then SIGKILL; returns the exit code."""
        try:
            self.process.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            done = self.done_marker is not None and self.done_marker.exists()
            logger.log(logging.DEBUG if done else logging.WARNING,
                       "%s did not stop in time after SIGTERM; killing it", self.name)
            self.process.kill()
            self.process.wait()
        self._close_files()
        return self.process.returncode

    def stop(self, timeout_s: float = 20.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        self.send_stop()
        return self.wait_or_kill(time.monotonic() + timeout_s)

    def _close_files(self) -> None:
        for handle in (self._out, self._err):
            if handle is not None and not handle.closed:
                handle.close()


def stop_all(children: Sequence[ChildProcess], grace_s: float) -> None:
    """SIGTERM all at once, wait up to ``grace_s`` in all, then SIGKILL whatever is left."""
    for child in children:
        child.send_stop()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.wait_or_kill(deadline)


def peer_main(run: Callable[[Callable[[], bool]], Dict[str, Any]], stats_json: Optional[Path]) -> int:
    """The main of the bench's peer processes (naive loop, relay), after their arguments: the
    loopback LSL configuration, ``run(stop)`` until SIGINT/SIGTERM make ``stop()`` true, one line
    and exit code 2 for a stream or model it cannot use, its statistics to ``stats_json``."""
    from brainformer_rt.serving.lsl_config import use_loopback_config
    from brainformer_rt.serving.signals import StopRequest

    use_loopback_config()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with StopRequest(interrupt=False) as stop:
        try:
            stats = run(stop.is_set)
        except (LookupError, ValueError) as error:
            print_error(error)
            return EXIT_USAGE
    if stats_json is not None:
        Path(stats_json).write_text(json.dumps(stats))
    return EXIT_OK


def _read(path: Path) -> str:
    try:  # the child writes to the file itself: nothing is buffered on this side
        return path.read_text(errors="replace")
    except OSError:
        return ""
