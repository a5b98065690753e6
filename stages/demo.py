"""The demo: the main job on an embedded default, offline, on a CPU, in a few minutes.

It writes the example videos (moving shapes, several containers, a rotated phone clip, a variable-frame-rate
clip and a few broken files), builds a tiny random video model and a tiny random CLIP, samples the videos into a
run of its own workspace (so it never mixes with the user's runs), and runs two full rounds: questions, answers,
critiques, CLIP filtering and 4-bit DPO, the second round starting from the first round's policy. Everything it
makes lives under one folder; running it again reuses what is there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stages import answer, ask, critique, dpo, sample
from stages import filter as filter_stage
from stages.core import synthetic
from stages.core.clip import ClipConfig
from stages.core.model import ModelConfig
from stages.core.store import StageResult, open_run

RUN_NAME = "demo"
ROUNDS = (1, 2)


@dataclass(frozen=True)
class DemoResult:
    folder: Path
    model: Path
    workspace: Path
    samples: sample.SampleResult
    rounds: dict[int, dict[str, StageResult]]


def run(folder: Path, *, say: Callable[[str], None] = lambda _: None,
        progress: Callable[[int], Callable[[], None]] | None = None) -> DemoResult:
    videos, model, clip, workspace = folder / "videos", folder / "model", folder / "clip", folder / "runs"
    if not videos.is_dir():
        say(f"writing example videos to {videos}")
        synthetic.write_example_set(videos)
    if not (model / "config.json").is_file():
        say(f"building a tiny random model in {model}")
        from stages.core.tiny_model import build_tiny_model

        build_tiny_model(model)
    if not (clip / "open_clip_config.json").is_file():
        say(f"building a tiny random CLIP in {clip}")
        from stages.core.clip import build_tiny_clip

        build_tiny_clip(clip)

    demo_run = open_run(RUN_NAME, workspace)
    # Small settings: a tiny model babbles, so long generations and long training would only cost time.
    model_cfg = ModelConfig(model=str(model.resolve()), batch_size=8)
    train_model_cfg = ModelConfig(model=str(model.resolve()), load_in_4bit=True)
    clip_cfg = ClipConfig(model=f"local-dir:{clip.resolve()}")
    rounds: dict[int, dict[str, StageResult]] = {}
    with demo_run.lock():
        sampled = sample.run(demo_run, [videos], sample.SampleConfig(frames=8, workers=2), progress=progress)
        for r in ROUNDS:
            say(f"round {r}: ask, answer, critique, filter, dpo")
            done = rounds[r] = {}
            done["ask"] = ask.run(demo_run, r, ask.AskConfig(per_video=2, max_new_tokens=32), model_cfg)
            done["answer"] = answer.run(demo_run, r, answer.AnswerConfig(max_new_tokens=32), model_cfg)
            done["critique"] = critique.run(demo_run, r, critique.CritiqueConfig(max_new_tokens=32), model_cfg)
            done["filter"] = filter_stage.run(demo_run, r, filter_stage.FilterConfig(), clip_cfg)
            done["dpo"] = dpo.run(demo_run, r, dpo.TrainConfig(learning_rate=1e-3, batch_size=2, grad_accum=1,
                                                               max_steps=4), train_model_cfg)
    return DemoResult(folder, model, workspace, sampled, rounds)
