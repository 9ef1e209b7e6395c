"""Log lines of the command-line tools on stderr, through rich: one setup for every command."""

from __future__ import annotations

import logging
from typing import Any, Optional

__all__ = ["setup_cli_logging"]


def setup_cli_logging(level: int = logging.INFO, console: Optional[Any] = None) -> None:
    """Rich log lines at ``level`` on ``console`` (default: a stderr console), unless logging is
    set up already (an embedding application or a test owns it then)."""
    root = logging.getLogger()
    if root.handlers:
        return
    from rich.console import Console
    from rich.logging import RichHandler

    root.addHandler(RichHandler(console=console or Console(stderr=True), show_path=False))
    root.setLevel(level)
