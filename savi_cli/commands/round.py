from typing import Annotated

import typer

from savi_cli.errors import user_errors
from savi_cli.options import WorkspaceOpt, with_settings
from savi_cli.progress import progress_bar
from stages.core.launch import current as current_launch
from stages.core.settings import LaunchConfig, ModelConfig


@user_errors
@with_settings(ModelConfig, LaunchConfig)
def round_command(
    round: Annotated[int, typer.Argument(min=1, help="The round to run (round R trains on M(R-1)'s own data).",
                                         show_default=False)],
    run: Annotated[str, typer.Option("--run", "-r", help="Name of the run (sampled with `savi sample`).")] =
    "default",
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override one setting of savi.toml, as SECTION.KEY=VALUE (repeatable): dpo.beta=0.2, "
                      "answer.candidates=5, critique.mode=judge.")] = None,
    evals: Annotated[list[str] | None, typer.Option(
        "--eval", help="Also evaluate on a benchmark, as NAME=PATH (repeatable); adds to [benchmarks] of "
                       "savi.toml. The base model is evaluated too, once.")] = None,
    redo: Annotated[str | None, typer.Option(
        help="Redo this stage and every later one (ask, keyframes, answer, critique, filter, dpo, eval), e.g. "
             "after changing its settings; the earlier stages are kept.")] = None,
    stage: Annotated[str | None, typer.Option(
        help="Run only this stage of the round, with the round's settings (what each launched process of --launch "
             "does).", hidden=True)] = None,
    workspace: WorkspaceOpt = None,
    *,
    settings: dict,
) -> None:
    """Run a whole round: ask, answer, critique, filter, dpo, then eval of the new policy.

    With answer.keyframes=true, the keyframes stage (SeViLA's localizer) runs before answer; answer.temporal adds
    temporal negatives (reverse, shuffle, drop) to the pairs; eval.perturb evaluates each round on perturbed frames
    too. Stages already finished are skipped and interrupted ones resume, so rerunning after a crash continues
    where it stopped; --redo STAGE does a finished stage again, with every later one. Settings come from the
    run's savi.toml, one section per stage, with --set overriding;
    what the round ran with is saved to round=R/config.toml. Ends with one summary: counts per stage, pairs
    kept and why the others were dropped, reward accuracy, and accuracy against the base and the last round.

    --launch "accelerate launch --num_processes 8" (or [launch] command in savi.toml) runs each model stage
    under that launcher, one process per GPU, and filter once, here (docs/SCALING.md).

    Example:

        savi round 2 --run kitchen --eval egoschema=~/data/egoschema --set dpo.beta=0.2
    """
    from stages import round as round_stage
    from stages.core.config import resolve
    from stages.core.errors import SaviError
    from stages.core.store import existing_run

    the_run = existing_run(run, workspace)
    sections: dict = {ModelConfig.SECTION: settings[ModelConfig]}
    for text in overrides or []:
        section, key, value = round_stage.parse_override(text)
        sections.setdefault(section, {})[key] = value
    sources = [round_stage.parse_benchmark(text) for text in evals or []]
    cfg = round_stage.resolve_round(the_run, sections, sources)
    say = lambda text: typer.echo(text, err=True)  # noqa: E731
    progress = lambda stage, unit: lambda total: progress_bar(total, stage, unit)  # noqa: E731
    if current_launch().parallel and stage is None:
        raise SaviError("savi round starts its own launches: run `savi round ... --launch \"accelerate launch "
                        "--num_processes N\"` instead of launching savi round")
    if stage is not None:  # one stage, in a process that --launch started
        with the_run.lock(current_launch()):
            round_stage.run_round(the_run, round, cfg, redo=redo, progress=progress, only=stage)
        return
    launcher = resolve(the_run, LaunchConfig, settings[LaunchConfig]).command
    with the_run.lock():
        launched = None
        if launcher:
            child = ["round", str(round), "--run", the_run.name, "--workspace", str(the_run.path.parent),
                     *[f"--set={text}" for text in round_stage.model_overrides(settings[ModelConfig])],
                     *[f"--set={text}" for text in overrides or []], *[f"--eval={text}" for text in evals or []],
                     *([f"--redo={redo}"] if redo else [])]
            launched = round_stage.launcher(launcher, child, the_run.holder_for_children())
        summary = round_stage.run_round(the_run, round, cfg, redo=redo, say=say, progress=progress,
                                        launched=launched)
    for line in round_stage.describe(summary):
        typer.echo(line, err=True)
    typer.echo(str(summary.stages["dpo"].path))
