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

    Writes example videos (including a rotated, a variable-frame-rate and several broken ones), builds a tiny
    random model and CLIP, samples the videos, runs two full rounds (ask, answer, critique, filter, 4-bit DPO),
    and shows what the run holds.

    Example:

        savi demo --dir /tmp/savi-demo
    """
    from stages import demo as demo_stage
    from stages.core.query import run_query

    say = lambda text: typer.echo(text, err=True)  # noqa: E731
    result = demo_stage.run(folder, say=say, progress=lambda total: progress_bar(total, "sample", "video"))
    columns, rows = run_query(
        "select regexp_extract(path, '[^/]+$') as video, status, coalesce(error, '') as error, rotation, "
        "width || 'x' || height as size, len(frame_indices) as frames from samples order by status desc, video",
        result.workspace)
    typer.echo(f"\nSampled videos ({result.samples.path}):\n")
    typer.echo(format_table(columns, rows))
    for r, stages in result.rounds.items():
        typer.echo(f"Round {r}, written by the policy itself, then filtered and trained on:\n")
        typer.echo(format_table(["stage", "table", "counts"],
                                [(name, res.path.name, ", ".join(f"{k} {v}" for k, v in res.counts.items()))
                                 for name, res in stages.items()]))
    columns, rows = run_query("select p.round, q.kind, q.text as question, p.chosen, p.chosen_clip, "
                              "p.rejected_clip from pairs p join questions q using (question_id, run, round) "
                              "where p.kept order by p.round, p.pair_id limit 3", result.workspace)
    typer.echo("A few kept pairs (chosen preferred over rejected; CLIP scores of each):\n")
    typer.echo(format_table(columns, rows))
    typer.echo("The tiny model writes meaningless text: it is random, and there only to run the real code path.")
    typer.echo(f"With a real model (a GPU and --model Qwen/Qwen2.5-VL-7B-Instruct) the same tables hold real "
               f"questions, answers and critiques. Model used here: {result.model}\n")
    workspace = result.workspace
    typer.echo("Look further:")
    typer.echo(f"  savi status -w {workspace}")
    typer.echo(f"  savi query \"select round, step, loss, reward_accuracy from train_log\" -w {workspace}")
