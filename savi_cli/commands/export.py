from pathlib import Path
from typing import Annotated, Literal

import typer

from savi_cli import pipes
from savi_cli.errors import user_errors
from savi_cli.options import InputArg, RoundOpt, StageRunOpt, WorkspaceOpt

app = typer.Typer(help="Write a run's tables in formats other tools read.", no_args_is_help=True,
                  rich_markup_mode=None)


@app.command("pairs")
@user_errors
def pairs(
    input: InputArg = None,
    run: StageRunOpt = None,
    round: RoundOpt = None,
    fmt: Annotated[Literal["trl", "jsonl"], typer.Option("--format", "-f", help="trl: a Hugging Face dataset in "
                                                         "trl's preference form. jsonl: one pair per line.")] = "trl",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write [default: round=R/export/].")] =
    None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Export a round's kept pairs (prompt with video frames, chosen, rejected) for trl or as JSON lines.

    Example:

        savi export pairs --run kitchen --round 1 --format trl --out kitchen-r1-pairs
    """
    from stages.export import export_pairs

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    typer.echo(str(export_pairs(the_run, the_round, fmt, out)))
