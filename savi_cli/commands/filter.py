from typing import Annotated, Literal

import typer

from savi_cli import pipes
from savi_cli.common import report
from savi_cli.errors import user_errors
from savi_cli.options import DeviceOpt, ForceOpt, InputArg, RoundOpt, StageRunOpt, WorkspaceOpt
from savi_cli.progress import progress_bar


@user_errors
def filter(
    input: InputArg = None,
    run: StageRunOpt = None,
    round: RoundOpt = None,
    swap: Annotated[Literal["auto", "on", "off"] | None, typer.Option(
        show_default="auto", help="When CLIP may swap chosen and rejected: auto (judge mode only, as VideoSAVi "
                                  "v1; a critique's revision is never overturned), on, or off.")] = None,
    swap_margin: Annotated[float | None, typer.Option(
        show_default="0.0", help="Swap when the rejected text is more grounded by more than this (CLIP score).")] =
    None,
    min_clip_margin: Annotated[float | None, typer.Option(
        show_default="unset", help="Drop pairs whose chosen-minus-rejected CLIP score is below this.")] = None,
    drop_cut_off: Annotated[bool | None, typer.Option(
        "--drop-cut-off/--keep-cut-off", show_default="--drop-cut-off",
        help="Drop pairs where either text was cut off at the token limit.")] = None,
    near_duplicate: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, show_default="0.9", help="Drop pairs whose texts are this similar.")] = None,
    max_length_ratio: Annotated[float | None, typer.Option(
        min=1.0, show_default="3.0", help="Drop pairs where one text is this many times longer.")] = None,
    clip_model: Annotated[str | None, typer.Option(show_default="ViT-B-32",
                                                   help="open_clip model name, or local-dir:DIR.")] = None,
    clip_weights: Annotated[str | None, typer.Option(
        show_default="openai", help="Pretrained tag, weights file, local-dir:DIR, or random (tests only).")] = None,
    clip_pooling: Annotated[Literal["mean", "max", "topk"] | None, typer.Option(
        show_default="mean", help="How per-frame cosines become one score.")] = None,
    clip_topk: Annotated[int | None, typer.Option(min=1, show_default="4", help="k of --clip-pooling topk.")] = None,
    text_pooling: Annotated[Literal["mean", "max"] | None, typer.Option(
        show_default="mean", help="How the sentences of a long text are pooled.")] = None,
    device: DeviceOpt = None,
    force: ForceOpt = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Keep the candidate pairs grounded in the video: critique verdicts, cut-off and text rules, CLIP swap and
    margin.

    Every pair lands in pairs.parquet, the kept ones with their CLIP scores, the dropped ones with their reason.
    Frame embeddings are cached in the run, so later rounds reuse them. Options not given come from the run's
    savi.toml ([filter] and [clip]), then the defaults. Prints the pairs table's path.

    Example:

        savi filter --run kitchen --round 1 --min-clip-margin 0.01
    """
    from stages import filter as filter_stage
    from stages.core.clip import ClipConfig
    from stages.core.config import resolve

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = resolve(the_run, "filter", filter_stage.FilterConfig, dict(
        swap=swap, swap_margin=swap_margin, min_clip_margin=min_clip_margin, near_duplicate=near_duplicate,
        max_length_ratio=max_length_ratio, drop_cut_off=drop_cut_off))
    clip_cfg = resolve(the_run, "clip", ClipConfig, dict(
        model=clip_model, weights=clip_weights, pooling=clip_pooling, topk=clip_topk, text_pooling=text_pooling,
        device=device))
    with the_run.lock():
        result = filter_stage.run(the_run, the_round, cfg, clip_cfg, force=force,
                                  progress=lambda total: progress_bar(total, "filter", "pair"))
    report(result, "pairs")
