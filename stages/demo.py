"""The demo: the main job on an embedded default, offline, on a CPU, in a few minutes.

It writes the example videos (moving shapes, several containers, a rotated phone clip, a variable-frame-rate
clip and a few broken files), a small benchmark in EgoSchema's format about other generated clips, a tiny
random video model and a tiny random CLIP. It samples the videos into a run of its own workspace (so it never
mixes with the user's runs) and runs two full rounds, each `savi round`'s work: questions, keyframes, answers from
them (with temporal negatives for half of them), critiques, CLIP filtering, 4-bit DPO at VistaDPO's three levels,
then eval of the new policy (and once, of the base model) on the benchmark.

The run's settings are an ordinary savi.toml, written once, so the demo doubles as an example of one. Everything
it makes lives under one folder; running it again reuses what is there and redoes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stages import round as round_stage
from stages import sample
from stages.core.config import CONFIG_NAME, resolve
from stages.core.query import run_query
from stages.core.settings import SampleConfig
from stages.core.store import check_output_folder, open_run
from stages.offline import videos as synthetic
from stages.offline.benchmark_files import write_egoschema_demo

RUN_NAME = "demo"
ROUNDS = (1, 2)

# Small settings: a tiny random model babbles, so long generations and long training would only cost time.
SETTINGS = """\
# Settings of the demo run, one section per stage (see `savi round --help`). The tiny random model only
# babbles, so everything is small: short generations, a few training steps, few frames.
[model]
id = "{model}"
batch_size = 8

[sample]
frames = 8
workers = 2

[ask]
per_video = 2
max_new_tokens = 32

[keyframes]
# SeViLA's localizer: the policy scores each of the 8 frames for each question; the best 4 are kept in order.
localizer = "policy"
top_k = 4

[answer]
max_new_tokens = 32
# Answer from the keyframes. Temporal negatives: half the questions are also answered from their keyframes
# reversed and shuffled, and the answer from the true order is preferred (temporal:reverse, temporal:shuffle).
keyframes = true
temporal = ["reverse", "shuffle"]
temporal_share = 0.5

[critique]
max_new_tokens = 32

[filter]
# A real run drops pairs whose text was cut off at max_new_tokens (DPO would teach the model to stop
# mid-sentence). The tiny random model rarely ends a reply by itself, so the demo keeps them to have pairs.
drop_cut_off = false

[clip]
model = "local-dir:{clip}"

[dpo]
learning_rate = 1e-3
batch_size = 2
grad_accum = 1
max_steps = 4
# VistaDPO's three levels: chosen over rejected (instance), the chosen reply under the true video over it under the
# video reversed (temporal) and over it with the question's keyframes masked (perceptive).
levels = [1.0, 0.5, 0.5]

[eval]
frames = 8

[benchmarks]
egoschema = "{benchmark}"
"""


@dataclass(frozen=True)
class DemoResult:
    folder: Path
    model: Path
    workspace: Path
    samples: sample.SampleResult
    rounds: dict[int, round_stage.RoundSummary]


def run(folder: Path, *, say: Callable[[str], None] = lambda _: None,
        progress: round_stage.RoundProgress | None = None) -> DemoResult:
    check_output_folder(folder, ("videos", "runs", "model"), "the demo")
    videos, model, clip, workspace = folder / "videos", folder / "model", folder / "clip", folder / "runs"
    benchmark = folder / "benchmark" / "egoschema"
    if not videos.is_dir():
        say(f"writing example videos to {videos}")
        synthetic.write_example_set(videos)
    if not (benchmark / "questions.json").is_file():
        say(f"writing a small EgoSchema-format benchmark to {benchmark}")
        write_egoschema_demo(benchmark.parent, questions=20)
    if not (model / "config.json").is_file():
        say(f"building a tiny random model in {model}")
        from stages.offline.tiny_model import build_tiny_model

        build_tiny_model(model)
    if not (clip / "open_clip_config.json").is_file():
        say(f"building a tiny random CLIP in {clip}")
        from stages.offline.tiny_clip import build_tiny_clip

        build_tiny_clip(clip)

    demo_run = open_run(RUN_NAME, workspace)
    settings = demo_run.path / CONFIG_NAME
    if not settings.is_file():
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(SETTINGS.format(model=model.resolve(), clip=clip.resolve(),
                                            benchmark=benchmark.resolve()))
    rounds: dict[int, round_stage.RoundSummary] = {}
    with demo_run.lock():
        say(f"sampling {videos}")
        sampled = sample.run(demo_run, [videos], resolve(demo_run, SampleConfig),
                             progress=progress("sample", "video") if progress else None)
        for r in ROUNDS:
            rounds[r] = round_stage.run_round(demo_run, r, round_stage.resolve_round(demo_run), say=say,
                                           progress=progress)
    return DemoResult(folder, model, workspace, sampled, rounds)


def sampled_videos(workspace: Path) -> tuple[list[str], list[tuple]]:
    """What `savi sample` made of each example video: its status, error, rotation, size and frames."""
    return run_query("select regexp_extract(path, '[^/]+$') as video, status, coalesce(error, '') as error, "
                     "rotation, width || 'x' || height as size, len(frame_indices) as frames from samples "
                     "order by status desc, video", workspace)


def some_kept_pairs(workspace: Path, limit: int = 3) -> tuple[list[str], list[tuple]]:
    """A few pairs the filter kept, with their question and CLIP scores."""
    return run_query("select p.round, q.kind, q.text as question, p.chosen, p.chosen_clip, p.rejected_clip "
                     "from pairs p join questions q using (question_id, run, round) where p.kept "
                     f"order by p.round, p.pair_id limit {int(limit)}", workspace)

