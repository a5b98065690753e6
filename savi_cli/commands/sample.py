from typing import Annotated

import typer

from savi_cli.errors import user_errors
from savi_cli.options import ForceOpt, RunOpt, WorkspaceOpt, with_settings
from savi_cli.progress import progress_bar
from stages.core.settings import SampleConfig


@user_errors
@with_settings(SampleConfig)
def sample(
    videos: Annotated[list[str], typer.Argument(help="Video files, folders (searched recursively), text files "
                                                     "listing paths (.txt), or - to read paths from stdin.")],
    run: RunOpt = "default",
    force: ForceOpt = False,
    workspace: WorkspaceOpt = None,
    *,
    settings: dict,
) -> None:
    """Decode frames from videos into a run, once, for every later stage and round.

    A video that cannot be decoded becomes an error row, and the run goes on. Running it again on the
    same videos does nothing; adding videos samples only the new ones. Options not given come from [sample]
    of the run's savi.toml, if it has one. Prints the samples table's path.

    Example:

        savi sample videos/ --run kitchen --frames 32 --workers 4
    """
    from stages import sample as sample_stage
    from stages.core.config import resolve
    from stages.core.store import open_run

    if videos == ["-"]:
        videos = [line.strip() for line in typer.get_text_stream("stdin") if line.strip()]
    the_run = open_run(run, workspace)
    cfg = resolve(the_run, SampleConfig, settings[SampleConfig])
    with the_run.lock():
        result = sample_stage.run(the_run, videos, cfg, force=force,
                                  progress=lambda total: progress_bar(total, "sample", "video"))
    if result.up_to_date:
        typer.echo("samples up to date: nothing new to sample", err=True)
    else:
        dup = f", {result.duplicates} duplicate inputs skipped" if result.duplicates else ""
        repaired = f" ({result.repaired} of them again: their frames were gone)" if result.repaired else ""
        typer.echo(f"sampled {result.new} videos{repaired}: {result.ok} ok, {result.errors} errors{dup}", err=True)
    typer.echo(str(result.path))
