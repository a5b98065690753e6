from savi_cli import pipes
from savi_cli.errors import user_errors
from savi_cli.options import ForceOpt, InputArg, RoundOpt, StageRunOpt, WorkspaceOpt, with_settings
from savi_cli.output import report
from savi_cli.progress import progress_bar
from stages.core.settings import ClipConfig, FilterConfig


@user_errors
@with_settings(FilterConfig, ClipConfig)
def filter(input: InputArg = None, run: StageRunOpt = None, round: RoundOpt = None, force: ForceOpt = False,
           workspace: WorkspaceOpt = None, *, settings: dict) -> None:
    """Keep the candidate pairs grounded in the video: critique verdicts, cut-off and text rules, CLIP swap and
    margin.

    Every pair lands in pairs.parquet, the kept ones with their CLIP scores, the dropped ones with their reason.
    Frame embeddings are cached in the run, so later rounds reuse them. Options not given come from the run's
    savi.toml ([filter] and [clip]), then the defaults. Prints the pairs table's path.

    Example:

        savi filter --run kitchen --round 1 --min-clip-margin 0.01
    """
    from stages import filter as filter_stage
    from stages.core.config import resolve

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = resolve(the_run, FilterConfig, settings[FilterConfig])
    clip_cfg = resolve(the_run, ClipConfig, settings[ClipConfig])
    with the_run.lock():
        result = filter_stage.run(the_run, the_round, cfg, clip_cfg, force=force,
                                  progress=lambda total: progress_bar(total, "filter", "pair"))
    agreement = result.counts.get("judge_agreement")
    report(result, "pairs", extra=filter_stage.agreement_summary(agreement) if agreement else None)
