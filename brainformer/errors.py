"""Exit codes and the one way a command reports an error: shared by `brainformer` and
`brainformer-rt`, their child processes and the tools.

No typer or rich here: domain code may return these codes, and child processes print errors
without paying for the presentation layer.
"""

from __future__ import annotations

import sys

__all__ = ["EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "print_error", "last_error_line"]

EXIT_OK = 0
EXIT_FAILURE = 1  # something failed while running (a stream that never came, an error while serving)
EXIT_USAGE = 2  # input that cannot be used: settings, model, data, a stream the model cannot serve

ERROR_PREFIX = "error:"


def print_error(message: object) -> None:
    """One line ``error: MESSAGE`` on stderr (markup-free, so any message prints as it is)."""
    print(f"{ERROR_PREFIX} {message}", file=sys.stderr, flush=True)


def last_error_line(text: str) -> str:
    """The last non-empty line of a process's stderr, without the ``error:`` prefix."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no output on stderr)"
    return lines[-1].removeprefix(ERROR_PREFIX).strip()
