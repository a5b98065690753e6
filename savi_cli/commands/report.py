from pathlib import Path
from typing import Annotated

import typer

from savi_cli.errors import user_errors
from savi_cli.options import FormatOpt, RunOpt, WorkspaceOpt
from savi_cli.output import print_rows


@user_errors
def report(
    run: RunOpt = "default",
    chart: Annotated[Path | None, typer.Option(help="Where to write the PNG chart. [default: RUN/report.png]")] =
    None,
    fmt: FormatOpt = "table",
    workspace: WorkspaceOpt = None,
) -> None:
    """Compare rounds: accuracy per benchmark per round (round 0 is the base model), and a PNG chart of it.

    The last column is the change from round 0 to the latest round, in percentage points.

    Example:

        savi report --run kitchen --format csv
    """
    from stages import report as report_stage
    from stages.core.store import existing_run

    the_run = existing_run(run, workspace)
    table = report_stage.build(the_run)
    print_rows(table.columns, table.rows, fmt)
    path = report_stage.write_chart(table, chart or the_run.path / "report.png", f"savi run '{the_run.name}'")
    typer.echo(f"chart: {path}", err=True)
