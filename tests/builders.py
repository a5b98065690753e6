"""Tables and adapters that tests put in a run by hand, where the stage that makes them is not under test."""

from stages.core.records import Pair, Question
from stages.core.store import ArtifactWriter


def save_random_adapter(run, round, tiny_model):
    """A round's trained adapter with non-zero weights, where `savi dpo` saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(round)
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(tiny_model()),
                           LoraConfig(r=4, lora_alpha=64, init_lora_weights=False,
                                      target_modules=r".*language_model.*\.(q_proj|v_proj|o_proj)"))
    model.save_pretrained(run.round_dir(round) / "adapter")


def write_questions(run, round, questions):
    """The round's questions, one item per video, as `savi ask` writes them."""
    writer = ArtifactWriter(run.artifact("questions", round), params={}, inputs={})
    for video_id in sorted({q.video_id for q in questions}):
        writer.add_item(video_id, [q for q in questions if q.video_id == video_id])
    writer.finish()


def ask_about_each_video(run, round, n, kind, text):
    """`n` questions of one kind, "text (i)", spread over the run's videos, written as round `round`'s."""
    videos = [s.video_id for s in run.artifact("samples").read()]
    asked = [Question(f"q{i}", videos[i % len(videos)], kind, f"{text} ({i})", "json", "ask/1", "test")
             for i in range(n)]
    write_questions(run, round, asked)
    return asked


def write_pairs(run, round, n=4, prompt=""):
    """`n` kept pairs about the run's videos, as `savi filter` would leave them."""
    videos = [s.video_id for s in run.artifact("samples").read()]
    writer = ArtifactWriter(run.artifact("pairs", round), params={}, inputs={})
    for i in range(n):
        writer.add(Pair(f"p{i}", videos[i % len(videos)], f"q{i}", "Which way does the shape move?",
                        "It moves from left to right.", "It jumps up and then disappears.", 0.31, 0.22, False,
                        "critique", True, None, prompt=prompt))
    writer.finish()


# A run's savi.toml for a whole round on the tiny models, small enough for a test (format with model and clip).
SMALL = """\
[model]
id = "{model}"
batch_size = 8

[ask]
per_video = 2
max_new_tokens = 16

[answer]
max_new_tokens = 16

[critique]
max_new_tokens = 16

[filter]
drop_cut_off = false  # the tiny random model rarely ends a reply within 16 tokens

[clip]
model = "local-dir:{clip}"

[dpo]
learning_rate = 1e-3
batch_size = 2
grad_accum = 1
max_steps = 2
four_bit = false

[eval]
frames = 4
"""


def count_video_encodings(trainer):
    """The list to which each pass of the trainer's vision tower appends how many videos it encoded (its
    `get_video_features` wrapped to count them)."""
    core = trainer.model.get_base_model().model
    encoded, real = [], core.get_video_features

    def counted(pixels, *args, **kwargs):
        grid = args[0] if args else kwargs.get("video_grid_thw")
        encoded.append(len(grid) if grid is not None else len(pixels))  # LLaVA-OneVision: a row per video
        return real(pixels, *args, **kwargs)

    core.get_video_features = counted
    return encoded
