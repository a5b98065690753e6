"""Where a stage command works: from --run/--round, or from the table path the previous stage printed.

`savi sample videos/ --run x | savi ask --round 1 | savi answer | savi critique` works because each command
prints its table's path (`runs/x/round=1/questions.parquet`), and the next one reads the run and round back out
of it (`store.locate`). This module only decides where that path comes from: an argument, or piped stdin.
"""

import sys
from pathlib import Path

import typer


def resolve(input: str | None, run: str | None, round: int | None, workspace: Path | None):
    """Return (Run, round). Reads stdin only when it is piped and neither --run nor an input path says where."""
    from stages.core.errors import SaviError
    from stages.core.store import DEFAULT_RUN, locate, open_run

    if input is None and run is None and not sys.stdin.isatty():
        input = "-"
    if input == "-":
        _say_if_stdin_stays_silent()
        lines = [line.strip() for line in typer.get_text_stream("stdin") if line.strip()]
        input = lines[-1] if lines else None
    if input is None:
        if round is None:
            raise SaviError("--round is required (or pipe in the previous stage's output)")
        return open_run(run or DEFAULT_RUN, workspace), round

    piped_run, piped_round = locate(Path(input))
    if run is not None and run != piped_run.name:
        raise SaviError(f"--run {run} disagrees with the piped table, which belongs to run '{piped_run.name}'")
    if round is not None and piped_round is not None and round != piped_round:
        raise SaviError(f"--round {round} disagrees with the piped table, which is from round {piped_round}")
    if round is None and piped_round is None:
        raise SaviError("--round is required: the piped table belongs to no round")
    return piped_run, round if round is not None else piped_round


WAIT_BEFORE_SAYING = 5.0  # seconds


def _say_if_stdin_stays_silent() -> None:
    """A piped stage waits for the one before it, however long it takes. But a stdin that is open and silent for
    another reason (a CI runner, a notebook, `Popen(stdin=PIPE)`) would look like a hang: say what savi is waiting
    for, once, after a few seconds of silence."""
    import select

    try:
        ready, _, _ = select.select([sys.stdin], [], [], WAIT_BEFORE_SAYING)
    except (ValueError, OSError, TypeError):  # not a real file (a test runner's stream): nothing to wait for
        return
    if not ready:
        typer.echo("waiting for the previous stage's table path on stdin (pipe one in, or pass --run NAME to work "
                   "without piped input)", err=True)

