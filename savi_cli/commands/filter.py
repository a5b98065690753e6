from typing import Annotated, Literal

import typer

from savi_cli import pipes
from savi_cli.common import report
from savi_cli.errors import user_errors
from savi_cli.options import ForceOpt, InputArg, RoundOpt, StageRunOpt, WorkspaceOpt
from savi_cli.progress import progress_bar


@user_errors
def filter(
    input: InputArg = None,
    run: StageRunOpt = None,
    round: RoundOpt = None,
    swap_margin: Annotated[float, typer.Option(help="Swap when the rejected text is more grounded by more than "
                                                    "this (CLIP score).")] = 0.0,
    min_clip_margin: Annotated[float, typer.Option(help="Drop pairs whose chosen-minus-rejected CLIP score is below "
                                                        "this.")] = 0.0,
    near_duplicate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Drop pairs whose texts are this "
                                                                         "similar.")] = 0.9,
    max_length_ratio: Annotated[float, typer.Option(min=1.0, help="Drop pairs where one text is this many times "
                                                                  "longer.")] = 3.0,
    clip_model: Annotated[str, typer.Option(help="open_clip model name, or local-dir:DIR.")] = "ViT-B-32",
    clip_weights: Annotated[str, typer.Option(help="Pretrained tag, weights file, local-dir:DIR, or random "
                                                   "(tests only).")] = "openai",
    clip_pooling: Annotated[Literal["mean", "max", "topk"], typer.Option(
        help="How per-frame cosines become one score.")] = "mean",
    clip_topk: Annotated[int, typer.Option(min=1, help="k of --clip-pooling topk.")] = 4,
    text_pooling: Annotated[Literal["mean", "max"], typer.Option(
        help="How the sentences of a long text are pooled.")] = "mean",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    force: ForceOpt = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Keep the candidate pairs grounded in the video: critique verdicts, text rules, CLIP swap and margin.

    Every pair lands in pairs.parquet, the kept ones with their CLIP scores, the dropped ones with their reason.
    Frame embeddings are cached in the run, so later rounds and eval reuse them. Prints the pairs table's path.

    Example:

        savi filter --run kitchen --round 1 --min-clip-margin 0.01
    """
    from stages import filter as filter_stage
    from stages.core.clip import ClipConfig

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = filter_stage.FilterConfig(swap_margin=swap_margin, min_clip_margin=min_clip_margin,
                                    near_duplicate=near_duplicate, max_length_ratio=max_length_ratio)
    clip_cfg = ClipConfig(model=clip_model, weights=clip_weights, pooling=clip_pooling, topk=clip_topk,
                          text_pooling=text_pooling, device=device)
    with the_run.lock():
        result = filter_stage.run(the_run, the_round, cfg, clip_cfg, force=force,
                                  progress=lambda total: progress_bar(total, "filter", "pair"))
    report(result, "pairs")
