"""What the commands of both command lines share: how an error ends a command."""

from __future__ import annotations

from typing import NoReturn

from brainformer.errors import EXIT_USAGE

__all__ = ["fail"]


def fail(message: object, exit_code: int = EXIT_USAGE) -> NoReturn:
    """One clear ``error: MESSAGE`` line on stderr, then exit with ``exit_code`` (default 2)."""
    import typer
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code)
