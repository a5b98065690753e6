"""The error boundary: user errors become one `Error:` line on stderr, never a traceback."""

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SaviError into `Error: <message>` (exit 1), Ctrl-C into a resume hint (exit 130), and a closed
    downstream pipe into a quiet exit (141)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from stages.core.errors import SaviError

        try:
            return command(*args, **kwargs)
        except SaviError as e:
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted: finished items are saved; rerun the same command to resume.", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            sys.stdout = None  # nothing more can be written; keep the interpreter quiet at exit
            raise typer.Exit(141) from None

    return wrapper
