"""A round at the real input shape: 32 frames of 448 px, through every stage, with a tiny model that carries
Qwen2.5-VL-7B-Instruct's own configuration (its processor's pixel budget, patch and merge sizes, chat template).

Every other test uses small frames to stay fast; this one checks what a real user's prompts hold. A square
448 px clip is 16 temporal groups of 32 x 32 patches, merged 2 x 2: 4,096 video tokens per prompt. A 16:9 clip
(448 x 252) is 16 x 18 x 32 patches: 2,304 tokens. Every prompt the model sees, in every stage and in DPO, must
hold all of them.
"""

import pytest
from typer.testing import CliRunner

from savi_cli.main import app
from stages import dpo, sample
from stages.core.model import Policy
from stages.core.store import open_run
from stages.offline import videos as synthetic
from stages.offline.benchmark_files import write_benchmark

pytestmark = pytest.mark.slow

# Frame size (height, width) -> video tokens of a 32-frame prompt.
VIDEO_TOKENS = {(448, 448): 4096, (252, 448): 2304}

SETTINGS = """\
[model]
id = "{model}"
batch_size = 2

# Enough questions, and replies long enough, that the random model's babble leaves some pairs to train on.
[ask]
per_video = 4
max_new_tokens = 16

[answer]
max_new_tokens = 16

[critique]
max_new_tokens = 16

[filter]
drop_cut_off = false  # the random model rarely ends a reply within 16 tokens

[clip]
model = "local-dir:{clip}"

[dpo]
learning_rate = 1e-3
max_steps = 1

[eval]
frames = 32
max_side = 448
"""


def video_tokens_per_row(input_ids, attention_mask, video_token_id):
    return [int(((row == video_token_id) & (mask == 1)).sum()) for row, mask in zip(input_ids, attention_mask)]


def test_a_round_at_32_frames_of_448_px_keeps_every_video_token(tiny_model, tmp_path, workspace, monkeypatch):
    from stages.offline.tiny_clip import build_tiny_clip

    videos = tmp_path / "videos"
    synthetic.write_video(videos / "square.mp4", num_frames=40, fps=8, size=(448, 448))
    synthetic.write_video(videos / "wide.mp4", num_frames=40, fps=8, size=(448, 252),
                          shapes=(synthetic.Shape("circle", "blue", "top_to_bottom", 48),))
    bench = write_benchmark("egoschema", tmp_path / "bench", questions=2)
    for clip in bench.rglob("*.mp4"):  # the benchmark's own clips, at the real size too
        synthetic.write_video(clip, num_frames=40, fps=8, size=(448, 448))

    run = open_run("real")
    sample.run(run, [videos], sample.SampleConfig(frames=32, max_side=448))
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    assert {(s.frame_height, s.frame_width) for s in samples.values()} == set(VIDEO_TOKENS)
    model = tiny_model("qwen2_5_vl")
    (run.path / "savi.toml").write_text(SETTINGS.format(model=model, clip=build_tiny_clip(tmp_path / "clip")))

    seen = []  # (frame size, video tokens) of every prompt row any stage gave the model
    real_inputs = Policy._inputs

    def counting_inputs(self, videos, prompts, *args, **kwargs):
        inputs = real_inputs(self, videos, prompts, *args, **kwargs)
        counts = video_tokens_per_row(inputs["input_ids"], inputs["attention_mask"],
                                      self.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>"))
        for video, count in zip(videos, counts):
            assert len(video.frames) == 32
            seen.append(("generate or score", video.frames.shape[1:3], count))
        return inputs

    real_collate = dpo.VideoPreferenceCollator.__call__

    def counting_collate(self, examples):
        batch = real_collate(self, examples)
        counts = video_tokens_per_row(batch["input_ids"], batch["attention_mask"],
                                      self.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>"))
        sizes = [(samples[e["video_id"]].frame_height, samples[e["video_id"]].frame_width) for e in examples] * 2
        seen.extend(("dpo", size, count) for size, count in zip(sizes, counts))
        return batch

    monkeypatch.setattr(Policy, "_inputs", counting_inputs)
    monkeypatch.setattr(dpo.VideoPreferenceCollator, "__call__", counting_collate)
    result = CliRunner().invoke(app, ["round", "1", "--run", "real", "--eval", f"egoschema={bench}"])
    assert result.exit_code == 0, result.output

    assert {where for where, _, _ in seen} == {"generate or score", "dpo"}
    assert {tuple(size) for _, size, _ in seen} == set(VIDEO_TOKENS)
    wrong = [(where, tuple(size), count) for where, size, count in seen if count != VIDEO_TOKENS[tuple(size)]]
    assert not wrong, f"prompts that lost video tokens: {wrong[:5]}"
    evals = run.eval_artifact("egoschema", 1).read()
    assert evals and all(r.num_frames == 32 and r.error is None for r in evals)
