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
    """Compare rounds: accuracy with its 95% CI per benchmark and round, which changes are more than chance,
    and a PNG chart of it.

    One row per benchmark and round; round 0 is the base model. `vs round 0` and `vs previous` are changes in
    percentage points on the questions both rounds answered, with the exact McNemar p-value; `noise` marks
    p >= 0.05, a change that equally good models show by chance. `chance` is what guessing scores. A benchmark
    also evaluated on frames perturbed in time (`savi eval --perturb reverse`, table BENCH@reverse) gets `vs true
    order`: the change from the true order, which is zero for a model that ignores time. The chart draws the CIs
    as error bars and chance as a dashed line.

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
