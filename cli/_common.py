"""Helpers shared by the CLI commands: one-line error reporting.

Command modules import only typer and the standard library at top level; torch and friends are
imported inside command bodies so that ``zsw --help`` stays instant.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["cli_errors", "error"]


def error(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def cli_errors(fn: F) -> F:
    """Turn user-caused errors (:class:`zsw.errors.ZswError`) into one line on stderr and exit 1
    (2 for :class:`~zsw.errors.OptionError`, an invalid option value); Ctrl-C into exit 130.
    Anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from zsw.errors import OptionError, ZswError

        try:
            return fn(*args, **kwargs)
        except OptionError as e:  # a usage error, like typer's own: exit 2
            raise error(str(e), code=2) from None
        except ZswError as e:
            raise error(str(e)) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
            sys.stderr.flush()
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
