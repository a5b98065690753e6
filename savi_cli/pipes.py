"""Where a stage command works: from --run/--round, or from the table path the previous stage printed.

`savi sample videos/ --run x | savi ask --round 1 | savi answer | savi critique` works because each command
prints its table's path (`runs/x/round=1/questions.parquet`), and the next one reads the run, round and
workspace back out of it.
"""

import re
import sys
from pathlib import Path

import typer

DEFAULT_RUN = "default"


def resolve(input: str | None, run: str | None, round: int | None, workspace: Path | None):
    """Return (Run, round). Reads stdin only when it is piped and neither --run nor an input path says where."""
    from stages.core.errors import SaviError
    from stages.core.store import Run, open_run

    if input is None and run is None and not sys.stdin.isatty():
        input = "-"
    if input == "-":
        lines = [line.strip() for line in typer.get_text_stream("stdin") if line.strip()]
        input = lines[-1] if lines else None
    if input is None:
        if round is None:
            raise SaviError("--round is required (or pipe in the previous stage's output)")
        return open_run(run or DEFAULT_RUN, workspace), round

    path = Path(input)
    match = re.fullmatch(r"round=(\d+)", path.parent.name)
    run_dir = path.parent.parent if match else path.parent
    if path.suffix != ".parquet" or not (run_dir / "samples.parquet").exists():
        raise SaviError(f"{input} is not a table of a savi run (expected .../<run>/[round=<r>/]<table>.parquet)")
    if run is not None and run != run_dir.name:
        raise SaviError(f"--run {run} disagrees with the piped table, which belongs to run '{run_dir.name}'")
    piped_round = int(match.group(1)) if match else None
    if round is not None and piped_round is not None and round != piped_round:
        raise SaviError(f"--round {round} disagrees with the piped table, which is from round {piped_round}")
    if round is None and piped_round is None:
        raise SaviError("--round is required: the piped table belongs to no round")
    return Run(run_dir), round if round is not None else piped_round
