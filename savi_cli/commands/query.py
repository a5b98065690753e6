from typing import Annotated

import typer

from savi_cli.errors import user_errors
from savi_cli.options import FormatOpt, WorkspaceOpt
from savi_cli.output import print_rows


@user_errors
def query(
    sql: Annotated[str, typer.Argument(help="SQL to run, or - to read it from stdin.")],
    fmt: FormatOpt = "table",
    run: Annotated[str | None, typer.Option("--run", "-r", help="Only this run (default: every run).")] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Query every run's tables with DuckDB SQL.

    Views: samples (and one per later stage), each with a `run` column and, per round, a `round` column.
    Only finished tables are visible; a damaged one is left out with a warning. A query reads these views and
    nothing else: it cannot read or write files, attach databases, load extensions or change settings.

    Example:

        savi query "select status, count(*) from samples group by 1" --format csv
    """
    from stages.core.query import run_query

    if sql == "-":
        sql = typer.get_text_stream("stdin").read()
    columns, rows = run_query(sql, workspace, run)
    if columns:
        print_rows(columns, rows, fmt)
