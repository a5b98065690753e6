from typing import Annotated

import typer

from savi_cli.errors import user_errors
from savi_cli.options import WorkspaceOpt
from savi_cli.output import format_table


@user_errors
def status(
    run: Annotated[str | None, typer.Option("--run", "-r", help="Only this run (default: every run).")] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Summarise runs: each table's rows, whether it is finished, interrupted or damaged, and the commonest errors.

    Example:

        savi status --run kitchen
    """
    from stages.core.store import workspace_root
    from stages.status import describe_runs

    runs = describe_runs(workspace, run)
    if not runs:
        typer.echo(f"no runs in {workspace_root(workspace)}; start one with `savi sample VIDEOS --run NAME`")
        return
    for info in runs:
        typer.echo(f"run {info['run']}  ({info['path']})")
        rows = [(t["round"] if t["round"] is not None else "", t["table"], t["state"], t["rows"], t["detail"])
                for t in info["tables"]]
        typer.echo(format_table(["round", "table", "state", "rows", "detail"], rows), nl=False)
        for reason in info["damaged"]:  # in full: the table's detail column shortens long cells
            typer.echo(f"  {reason}")
        for reason, count in info["top_errors"]:
            typer.echo(f"  {count} x {reason}")
        typer.echo("")
