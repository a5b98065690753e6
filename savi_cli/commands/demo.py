from pathlib import Path
from typing import Annotated

import typer

from savi_cli.errors import user_errors
from savi_cli.output import format_table
from savi_cli.progress import progress_bar


@user_errors
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Folder for the demo's videos, model and runs.")] = Path("demo"),
) -> None:
    """Run savi offline on generated videos with a tiny model: no GPU, no download.

    Writes example videos (including a rotated, a variable-frame-rate and several broken ones), a small
    benchmark in EgoSchema's format, a tiny random model and CLIP; samples the videos; runs two full rounds
    (ask, answer, critique, filter, 4-bit DPO, eval); and ends with `savi report`. Running it again reuses
    what is there.

    Example:

        savi demo --dir /tmp/savi-demo
    """
    from stages import demo as demo_stage
    from stages import report as report_stage
    from stages import round as round_stage
    from stages.core.store import open_run

    say = lambda text: typer.echo(text, err=True)  # noqa: E731
    result = demo_stage.run(folder, say=say,
                            progress=lambda stage, unit: lambda total: progress_bar(total, stage, unit))
    workspace = result.workspace
    typer.echo(f"\nSampled videos ({result.samples.path}):\n")
    typer.echo(format_table(*demo_stage.sampled_videos(workspace)))
    for summary in result.rounds.values():
        typer.echo("\n".join(round_stage.describe(summary)) + "\n")
    typer.echo("A few kept pairs (chosen preferred over rejected; CLIP scores of each):\n")
    typer.echo(format_table(*demo_stage.some_kept_pairs(workspace)))

    run = open_run(demo_stage.RUN_NAME, workspace)
    report = report_stage.build(run)
    chart = report_stage.write_chart(report, run.path / "report.png", f"savi run '{run.name}'")
    typer.echo(f"savi report --run {run.name} -w {workspace}   (chart: {chart})\n")
    typer.echo(format_table(report.columns, report.rows))
    typer.echo("This model is tiny and random: its questions, answers and critiques are meaningless text, and its "
               "accuracy is chance or worse. It is there only to run the real code path end to end, offline.")
    typer.echo(f"With a real model (a GPU and --model Qwen/Qwen2.5-VL-7B-Instruct, see examples/round_gpu.sh) the "
               f"same tables hold real questions, answers and critiques. Model used here: {result.model}\n")
    typer.echo("Look further (from a shell where `source .venv/bin/activate` put savi on the PATH):")
    typer.echo(f"  cat {run.path / 'savi.toml'}")
    typer.echo(f"  savi status -w {workspace}")
    typer.echo(f"  savi query \"select round, step, loss, reward_accuracy from train_log\" -w {workspace}")
