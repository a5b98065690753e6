"""The error boundary: user errors become one `Error:` line on stderr, never a traceback."""

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

# OSErrors that the machine, not savi, causes: what the user can do about each.
_RESUME = "then rerun the same command to resume (finished items are saved)"
_OS_ADVICE = {
    errno.ENOSPC: f"the disk is full: free some space or move the workspace (--workspace or SAVI_HOME), {_RESUME}",
    errno.EDQUOT: f"the disk quota is used up: free some space or move the workspace (--workspace or SAVI_HOME), "
                  f"{_RESUME}",
    errno.EFBIG: f"a file-size limit was reached (see `ulimit -f`): raise it, {_RESUME}",
    errno.EROFS: f"the file system is read-only: point --workspace (or SAVI_HOME) at a writable folder, {_RESUME}",
    errno.EACCES: f"fix the permissions (or, for the workspace, move it with --workspace or SAVI_HOME), {_RESUME}",
    errno.EPERM: f"fix the permissions (or, for the workspace, move it with --workspace or SAVI_HOME), {_RESUME}",
}


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SaviError into `Error: <message>` (exit 1), a full disk or a permission problem into the same kind of
    line, Ctrl-C into a resume hint (exit 130), and a closed downstream pipe into a quiet exit (141)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from stages.core.errors import SaviError

        try:
            return command(*args, **kwargs)
        except SaviError as e:
            typer.echo(f"Error: {_printable(str(e))}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted: finished items are saved; rerun the same command to resume.", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            sys.stdout = None  # nothing more can be written; keep the interpreter quiet at exit
            raise typer.Exit(141) from None
        except OSError as e:
            if e.errno not in _OS_ADVICE:
                raise
            typer.echo(f"Error: {_printable(_os_error(e, kwargs.get('workspace')))}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _os_error(e: OSError, workspace: Any) -> str:
    """`No space left on device: PATH; what to do`. A failed write() names no file (nor does Arrow, nor a full
    stdout): then the workspace, where savi writes its files, is named instead."""
    from stages.core.store import workspace_root

    name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes)) else None
    where = f": {name}" if name else f" (while writing; the workspace is {workspace_root(workspace)})"
    return f"{os.strerror(e.errno)}{where}; {_OS_ADVICE[e.errno]}"


def _printable(text: str) -> str:
    """A file name that is not UTF-8 is shown as savi stores it (`caf\\xe9.mp4`), not as a lone surrogate."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text
