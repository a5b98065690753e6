"""One round, end to end: ask, [keyframes], answer, critique, filter, dpo, then eval of the new policy.

`savi round R` calls the same stage functions as the stage commands, in order, so whatever is already finished
(by `savi round`, by a stage command, or by a run that was killed) is skipped, and whatever was interrupted is
resumed. Nothing here knows how a stage works; it only decides what runs with which settings.

Settings: each stage has a section in the run's savi.toml (`[ask]`, `[keyframes]`, `[answer]`, `[critique]`,
`[filter]`, `[clip]`, `[dpo]`, `[eval]`, `[model]`), and `[benchmarks]` names what eval reads. The keyframes
stage runs when `[answer] keyframes = true` asks for its frames.

    [benchmarks]
    egoschema = "/data/egoschema"
    nextqa = { data = "/data/nextqa", split = "test" }

Overrides given on the command line win. The resolved settings of a round are written to
`round=<r>/config.toml` before its first stage runs, so every round records exactly what produced it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from stages import answer, ask, critique, dpo, keyframes
from stages import eval as eval_stage
from stages import filter as filter_stage
from stages.core.config import CONFIG_NAME, read_config, resolve, resolve_model
from stages.core.errors import SaviError
from stages.core.model import adapter_for_round
from stages.core.settings import (
    AnswerConfig,
    AskConfig,
    ClipConfig,
    CritiqueConfig,
    EvalConfig,
    FilterConfig,
    KeyframesConfig,
    LaunchConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)
from stages.core.store import Run, StageResult, atomic_path
from stages.eval import BenchmarkSource, EvalOutcome
from stages.report import true_order_change

# The settings a round runs with, by their savi.toml section ([model] is resolved apart: it is settled).
SECTIONS: dict[str, type] = {cls.SECTION: cls for cls in (AskConfig, KeyframesConfig, AnswerConfig, CritiqueConfig,
                                                           FilterConfig, ClipConfig, TrainConfig, EvalConfig)}
STAGES = ("ask", "keyframes", "answer", "critique", "filter", "dpo", "eval")
# The stages that run the policy: under `[launch] command` they run in the launched processes, the others here.
MODEL_STAGES = ("ask", "keyframes", "answer", "critique", "dpo", "eval")

RoundProgress = Callable[[str, str], Callable[[int], Callable[[], None]]]  # (stage, unit) -> progress callback


@dataclass(frozen=True)
class RoundConfig:
    model: ModelConfig
    ask: AskConfig
    keyframes: KeyframesConfig
    answer: AnswerConfig
    critique: CritiqueConfig
    filter: FilterConfig
    clip: ClipConfig
    dpo: TrainConfig
    eval: EvalConfig
    benchmarks: tuple[BenchmarkSource, ...] = ()


@dataclass(frozen=True)
class RoundSummary:
    round: int
    config_path: Path
    stages: dict[str, StageResult]
    evals: list[dict[str, Any]]  # per benchmark: accuracy now, of the base model, and of the previous round


def resolve_round(run: Run, overrides: dict[str, dict[str, Any]] | None = None,
                  benchmarks: list[BenchmarkSource] | None = None) -> RoundConfig:
    """savi.toml's sections, then `overrides` ({"dpo": {"beta": 0.2}, ...}), then the defaults."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(SECTIONS) - {"model"})
    if unknown:
        raise SaviError(f"unknown section {', '.join(unknown)}; known: model, {', '.join(SECTIONS)}")
    in_file = sorted(set(read_config(run)) - set(SECTIONS) - {"model", "sample", "launch", "benchmarks"})
    if in_file:
        raise SaviError(f"unknown section [{'], ['.join(in_file)}] in {run.path / CONFIG_NAME}; known: model, "
                        f"sample, {', '.join(SECTIONS)}, launch, benchmarks")
    sections = {name: resolve(run, cls, overrides.get(name)) for name, cls in SECTIONS.items()}
    resolve(run, SampleConfig)  # not a round's, but checked too: a bad value anywhere stops before any work
    resolve(run, LaunchConfig)
    listed = {b.name: b for b in benchmarks_from_config(run)}
    listed.update({b.name: b for b in benchmarks or []})
    return RoundConfig(model=resolve_model(run, overrides.get("model")), benchmarks=tuple(listed.values()),
                       **sections)


def benchmarks_from_config(run: Run) -> list[BenchmarkSource]:
    """`[benchmarks]` of savi.toml: `name = "path"`, or `name = { data = "path", split = ..., videos = ... }`."""
    found = []
    for name, value in read_config(run).get("benchmarks", {}).items():
        spec = {"data": value} if isinstance(value, str) else value
        if not isinstance(spec, dict) or "data" not in spec or set(spec) - {"data", "split", "videos"}:
            raise SaviError(f"[benchmarks] {name} in {run.path / CONFIG_NAME} must be a path, or a table with "
                            "data (and optionally split, videos)")
        found.append(BenchmarkSource(name, Path(spec["data"]).expanduser(), spec.get("split"),
                                     Path(spec["videos"]).expanduser() if spec.get("videos") else None))
    return found


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` (as `--set` takes it) to (section, key, typed value)."""
    target, sep, raw = text.partition("=")
    section, dot, key = target.strip().partition(".")
    if not sep or not dot or not key:
        raise SaviError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. dpo.beta=0.2")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: take it as a string (mode=judge)
    return section, key, value


def parse_benchmark(text: str) -> BenchmarkSource:
    """`name=path` (as `--eval` takes it) to the benchmark to evaluate."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise SaviError(f"--eval {text!r}: expected NAME=PATH, e.g. egoschema=~/data/egoschema")
    return BenchmarkSource(name.strip(), Path(path.strip()).expanduser())


def model_overrides(flags: dict[str, Any]) -> list[str]:
    """The [model] settings given as flags, as `--set model.KEY=VALUE` texts (TOML values)."""
    import json

    def toml(value: Any) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)

    return [f"model.{key}={toml(value)}" for key, value in flags.items() if value is not None]


def launcher(command: str, round_args: list[str], env: dict[str, str]) -> Callable[[str], None]:
    """What runs one model stage of a round under `command` (e.g. "accelerate launch --num_processes 8"): the same
    `savi round` with `--stage`, in the launched processes, which may write to the run this process holds (`env`).
    A stage that fails there stops the round here, with the launcher's exit status."""
    import os
    import shlex
    import shutil
    import subprocess

    try:
        words = shlex.split(command)
    except ValueError as e:
        raise SaviError(f"--launch {command!r} cannot be read as a command ({e})") from None
    if not words or shutil.which(words[0]) is None:
        raise SaviError(f"--launch {command!r}: no program {words[0] if words else ''!r} on the PATH; give the "
                        "launcher's command, e.g. \"accelerate launch --num_processes 8\"")

    def run_stage(stage: str) -> None:
        argv = [*words, "-m", "savi_cli", *round_args, f"--stage={stage}"]
        done = subprocess.run(argv, env={**os.environ, **env})
        if done.returncode != 0:
            raise SaviError(f"the {stage} stage failed under `{command}` (exit status {done.returncode}; its "
                            "processes' errors are above); fix it and run the round again: it resumes there")

    return run_stage


def save_resolved(run: Run, round: int, cfg: RoundConfig) -> Path:
    """Write what this round runs with to `round=<r>/config.toml` (TOML has no null, so unset values are left out)."""
    import tomli_w

    def plain(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        return str(obj) if isinstance(obj, Path) else obj

    resolved = {"model": asdict(cfg.model),
                **{name: asdict(getattr(cfg, name)) for name in SECTIONS},
                "benchmarks": {b.name: {f.name: getattr(b, f.name) for f in fields(b) if f.name != "name"}
                               for b in cfg.benchmarks}}
    path = run.round_dir(round) / "config.toml"
    with atomic_path(path) as tmp:
        tmp.write_text(f"# The resolved settings of round {round} (written by savi round; edit savi.toml "
                       "instead).\n" + tomli_w.dumps(plain(resolved)))
    return path


def run_round(run: Run, round: int, cfg: RoundConfig, *, redo: str | None = None,
              say: Callable[[str], None] = lambda _: None, progress: RoundProgress | None = None,
              only: str | None = None, launched: Callable[[str], None] | None = None) -> RoundSummary:
    """Run round `round`. `redo` names a stage to do again, with every later one (their inputs change with it),
    for example after changing its settings; the stages before it are kept.

    `only` runs that one stage of the round (what a launched process of `savi round --launch` does). `launched`
    runs one model stage in launched processes (`savi round --launch`, which passes them `only`); the stage is then
    called here too, where it finds its table finished and only reads it for the summary."""
    for name, value in (("redo", redo), ("only", only)):
        if value is not None and value not in STAGES:
            raise SaviError(f"unknown stage {value!r} to {name}; the stages of a round are {', '.join(STAGES)}")
    force = {stage: redo is not None and k >= STAGES.index(redo) for k, stage in enumerate(STAGES)}
    run.require("samples")
    # Fail now, not after hours of generation, if round r-1 is not trained or a benchmark cannot be read.
    adapter_for_round(run, round)
    for source in cfg.benchmarks:
        eval_stage.questions(source, cfg.eval)
    model = cfg.model
    config_path = save_resolved(run, round, cfg)

    def bar(stage: str, unit: str):
        return progress(stage, unit) if progress else None

    def stage(name: str, call: Callable[[bool], Any]) -> Any:
        """Run one stage (`call(force)`): here, or, for a model stage with a launcher, in the launched processes."""
        if only not in (None, name):
            return None
        say(f"round {round}: {name}")
        if launched is not None and name in MODEL_STAGES:
            launched(name)
            return call(False)
        return call(force[name])

    done: dict[str, StageResult] = {}
    done["ask"] = stage("ask", lambda f: ask.run(run, round, cfg.ask, model, force=f, progress=bar("ask", "video")))
    if cfg.answer.keyframes:
        done["keyframes"] = stage("keyframes", lambda f: keyframes.run(
            run, round, cfg.keyframes, model, cfg.clip, force=f, progress=bar("keyframes", "question")))
    done["answer"] = stage("answer", lambda f: answer.run(run, round, cfg.answer, model, force=f,
                                                          progress=bar("answer", "answer")))
    done["critique"] = stage("critique", lambda f: critique.run(run, round, cfg.critique, model, force=f,
                                                                progress=bar("critique", "answer")))
    done["filter"] = stage("filter", lambda f: filter_stage.run(run, round, cfg.filter, cfg.clip, force=f,
                                                                progress=bar("filter", "pair")))
    done["dpo"] = stage("dpo", lambda f: dpo.run(run, round, cfg.dpo, model, cfg.clip, force=f,
                                                 progress=bar("dpo", "step")))
    evals = stage("eval", lambda f: _evaluate(run, round, cfg, f, done, say, bar, compare=only is None)
                  ) if cfg.benchmarks else []
    done = {name: result for name, result in done.items() if result is not None}
    return RoundSummary(round, config_path, done, evals or [])


def _evaluate(run: Run, round: int, cfg: RoundConfig, force: bool, done: dict[str, StageResult],
              say: Callable[[str], None], bar: Callable[[str, str], Any], *, compare: bool) -> list[dict[str, Any]]:
    """Evaluate the new policy on every benchmark beside the base model and the previous round; each result goes
    into `done`, and, with `compare`, the comparisons are returned (a launched process evaluates only)."""
    evals = []
    for source in cfg.benchmarks:
        # The base model is the yardstick of every later round: evaluate it once, the first time it is needed.
        # With [eval] perturb, each round is evaluated on the perturbed frames too (after the true order).
        outcomes: dict[int, list[EvalOutcome]] = {}
        for r in sorted({0, round - 1, round}):
            say(f"eval {source.name}: round {r}" + (" (the base model)" if r == 0 else ""))
            outcomes[r] = eval_stage.evaluate(run, r, source, cfg.eval, cfg.model, cfg.clip,
                                              force=force and r == round,
                                              progress=bar(f"eval {source.name}", "question"))
        if not compare:
            continue
        for k, now in enumerate(outcomes[round]):
            drop = true_order_change(run, now.table, round)
            line = eval_stage.summary_line(now.summary) + (f"; vs the true order {drop}" if drop else "")
            evals.append({"table": now.table, "accuracy": now.summary["accuracy"],
                          "base": outcomes[0][k].summary["accuracy"],
                          "previous": outcomes[round - 1][k].summary["accuracy"],
                          "questions": now.summary["questions"], "line": line})
            done[f"eval {now.table}"] = now.result
    return evals


def describe(summary: RoundSummary) -> list[str]:
    """The round in a few lines: counts per stage, what the filter kept and why it dropped, training, eval."""
    c = {name: result.counts for name, result in summary.stages.items()}
    lines = [f"round {summary.round} done (settings: {summary.config_path})"]
    ask_c, answer_c, critique_c, filter_c, dpo_c = (c[s] for s in ("ask", "answer", "critique", "filter", "dpo"))
    lines.append(f"  ask       {ask_c['questions']} questions about {ask_c['videos']} videos"
                 f" ({ask_c['parse_failures']} unparsed generations)")
    if "keyframes" in c:
        k = c["keyframes"]
        lines.append(f"  keyframes {k['keyframes']} of {k['frames_scored']} frames kept for {k['questions']} "
                     f"questions ({k['localizer']} localizer)")
    temporal = answer_c.get("temporal", {})
    kinds = ", ".join(f"{kind} {n}" for kind, n in temporal.items())
    negatives = f"{sum(temporal.values())} from perturbed frames: {kinds}; " if temporal else ""
    lines.append(f"  answer    {answer_c['answers']} answers ({negatives}{answer_c['cut_off']} cut off at the token "
                 "limit)")
    if "judged" in critique_c:
        lines.append(f"  critique  {critique_c['judged']} answers judged, {critique_c['scored']} scored")
    else:
        lines.append(f"  critique  {critique_c['critiques']} critiques, {critique_c['found_errors']} found errors")
    drops = {k.removeprefix("dropped_"): v for k, v in filter_c.items() if k.startswith("dropped_")}
    dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(drops.items(), key=lambda x: -x[1])) or "none"
    scored = filter_c.get("clip_scored", 0)
    swap_rate = f" ({100 * filter_c['swapped'] / scored:.0f}%)" if scored else ""
    lines.append(f"  filter    kept {filter_c['kept']} of {filter_c['candidates']} pairs; CLIP swapped "
                 f"{filter_c['swapped']} of {scored} scored{swap_rate}; dropped: {dropped}")
    by_source = filter_c.get("kept_by_source", {})
    if any(source.startswith("temporal:") for source in by_source):
        lines.append("            kept by source: " + ", ".join(f"{source} {n}" for source, n in by_source.items()))
    accuracy = dpo_c.get("final_reward_accuracy")
    levels = "".join(f"; {level} margin {dpo_c[f'final_{level}_margin']:+.3f} (accuracy "
                     f"{dpo_c[f'final_{level}_accuracy']:.2f})" for level in ("temporal", "perceptive")
                     if dpo_c.get(f"final_{level}_margin") is not None)
    lines.append(f"  dpo       {dpo_c['steps']} steps on {dpo_c['pairs']} pairs; reward accuracy on them "
                 f"{'n/a' if accuracy is None else f'{accuracy:.2f}'}{levels}")
    for e in summary.evals:
        versus = f"{_delta(e['accuracy'], e['base'])} vs base"
        if summary.round > 1:
            versus += f", {_delta(e['accuracy'], e['previous'])} vs round {summary.round - 1}"
        lines.append(f"  eval      {e['table']}: {e['line']}; {versus}")
    return lines


def _delta(now: float | None, then: float | None) -> str:
    return "n/a" if now is None or then is None else f"{100 * (now - then):+.1f} points"
