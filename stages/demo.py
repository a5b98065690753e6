"""The demo: the main job on an embedded default, offline, on a CPU, in a minute.

It writes the example videos (moving shapes, several containers, a rotated phone clip, a variable-frame-rate
clip and a few broken files), builds a tiny random model, samples the videos into a run of its own workspace
(so it never mixes with the user's runs), and runs round 1's self-generation: questions, answers, critiques and
candidate pairs. Everything it makes lives under one folder; running it again reuses what is there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stages import answer, ask, critique, sample
from stages.core import synthetic
from stages.core.model import ModelConfig
from stages.core.store import StageResult, open_run

RUN_NAME = "demo"


@dataclass(frozen=True)
class DemoResult:
    folder: Path
    videos: Path
    model: Path
    workspace: Path
    samples: sample.SampleResult
    stages: dict[str, StageResult]


def run(folder: Path, *, say: Callable[[str], None] = lambda _: None,
        progress: Callable[[int], Callable[[], None]] | None = None) -> DemoResult:
    videos, model, workspace = folder / "videos", folder / "model", folder / "runs"
    if not videos.is_dir():
        say(f"writing example videos to {videos}")
        synthetic.write_example_set(videos)
    if not (model / "config.json").is_file():
        say(f"building a tiny random model in {model} (it writes meaningless text, but runs the real code path)")
        from stages.core.tiny_model import build_tiny_model

        build_tiny_model(model)
    demo_run = open_run(RUN_NAME, workspace)
    # Small settings: a tiny model babbles, so long generations would only cost time.
    model_cfg = ModelConfig(model=str(model.resolve()), batch_size=8)
    with demo_run.lock():
        sampled = sample.run(demo_run, [videos], sample.SampleConfig(frames=8, workers=2), progress=progress)
        stages = {"ask": ask.run(demo_run, 1, ask.AskConfig(per_video=2, max_new_tokens=32), model_cfg)}
        stages["answer"] = answer.run(demo_run, 1, answer.AnswerConfig(max_new_tokens=32), model_cfg)
        stages["critique"] = critique.run(demo_run, 1, critique.CritiqueConfig(max_new_tokens=32), model_cfg)
    return DemoResult(folder, videos, model, workspace, sampled, stages)
