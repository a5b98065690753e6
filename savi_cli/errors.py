"""The error boundary: user errors become one `Error:` line on stderr, never a traceback."""

import errno
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
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
    errno.ENOTDIR: "a path that should be a folder is a file: check --workspace (or SAVI_HOME) and the paths given",
    errno.EISDIR: "a path that should be a file is a folder: give a file path",
    errno.ENAMETOOLONG: "a file name is too long: use a shorter run name or path",
}


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SaviError into `Error: <message>` (exit 1), a full disk or a permission problem into the same kind of
    line, Ctrl-C into a resume hint (exit 130), a closed downstream pipe into a quiet exit (141), and any other
    exception (a bug) into one line naming the log file that holds its traceback (exit 1)."""

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
                _unexpected(e, kwargs.get("workspace"))
            typer.echo(f"Error: {_printable(_os_error(e, kwargs.get('workspace')))}", err=True)
            raise typer.Exit(1) from None
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise  # Typer's own ways out (exit codes, usage errors)
        except Exception as e:
            _unexpected(e, kwargs.get("workspace"))

    return wrapper


def _unexpected(error: Exception, workspace: Any) -> None:
    """A bug (savi's or a library's): one line that names the error and a log file with the whole traceback."""
    from stages.core.errors import first_line

    log = _write_traceback(workspace)
    where = f"the traceback is in {log}" if log else "the traceback could not be saved"
    typer.echo(f"Error: unexpected {type(error).__name__}: {_printable(first_line(error))} (a bug in savi or a "
               f"library it uses); {where}, please include it when you report the problem", err=True)
    raise typer.Exit(1) from None


def _write_traceback(workspace: Any) -> Path | None:
    """`<workspace>/.logs/<time>-<pid>.log`, or the same under the temporary folder when the workspace is not
    writable; None when neither is."""
    import datetime as dt
    import tempfile
    import traceback

    from stages.core.store import workspace_root

    name = f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = f"savi {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}"
    for folder in (workspace_root(workspace) / ".logs", Path(tempfile.gettempdir()) / "savi-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, errors="backslashreplace")
            return folder / name
        except OSError:
            continue
    return None


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
