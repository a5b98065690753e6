"""Every setting savi has, declared once: its default, its help, and its bounds.

Each stage's settings are one frozen dataclass, and each field is a `setting(...)`. Everything else derives from
these declarations: the command-line flags and their help (`savi_cli/options.py`), the sections of a run's
`savi.toml` (`[ask]` holds AskConfig's fields, and so on: `stages/core/config.py`), and the settings a round
records in `round=<r>/config.toml`. A setting no flag gives comes from the run's savi.toml, then from its default.

This module imports nothing heavy, so `savi --help` can build every option from it at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_CLIP = "ViT-B-32"
DEFAULT_CLIP_WEIGHTS = "openai"

KINDS = ("spatial", "temporal", "what", "why", "how")
CRITIQUE_MODES = ("critique", "judge")
# Temporal perturbations of the sampled frames (stages/core/temporal.py): TimeWarp's, TPO's and TEMPLE's negatives.
PERTURBATIONS = ("reverse", "shuffle", "drop")
# The temporal level of DPO perturbs the vision tower's features, so only their order: a cut would change the tokens.
PATCH_PERTURBATIONS = ("reverse", "shuffle")
# VistaDPO's levels, in the order `[dpo] levels` weighs them.
LEVELS = ("instance", "temporal", "perceptive")
# SeViLA's keyframe localizers: the policy asked about each frame, or CLIP's question-frame similarity.
LOCALIZERS = ("policy", "clip")
SWAPS = ("auto", "on", "off")
POOLINGS = ("mean", "max", "topk")
TEXT_POOLINGS = ("mean", "max")
CLIP_FRAMES = ("each", "grid")
LOSSES = ("sigmoid", "clip-weighted", "rpo")
TUNES = ("lora", "full")
# The families `savi tiny-model` builds (the folders of stages/offline/checkpoints/), the default first.
TINY_FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava_onevision")
EVAL_PROTOCOLS = ("lmms-eval", "likelihood")
DTYPES = ("auto", "bfloat16", "float16", "float32")
# transformers' learning-rate schedulers (`SchedulerType`), named here so that a typo fails before any work.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
              "warmup_stable_decay", "greedy")


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            choices: tuple[str, ...] | None = None, flag: str | None = None, short: str | None = None) -> Any:
    """A settings field: its default and help, its bounds (`min`, `max`, `choices`), and its flag where the derived
    `--field-name` will not do (`flag`; for a bool, "--on/--off") plus an optional one-letter alias (`short`)."""
    metadata = {"help": help, "min": min, "max": max, "choices": choices, "flag": flag, "short": short}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ModelConfig:
    """The policy model and how it runs. `id` is settled once per command (`config.resolve_model`): a run keeps
    the model it started with."""

    SECTION: ClassVar[str] = "model"

    id: str = setting(DEFAULT_MODEL, "Hub id or local folder of the base model (a run keeps the one it started "
                                     "with).", flag="--model", short="-m")
    load_in_4bit: bool = setting(False, "Load the model in 4-bit NF4 (bitsandbytes) to generate and evaluate.")
    dtype: str = setting("auto", "auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32.", choices=DTYPES)
    device: str = setting("auto", "auto (cuda if available), cpu, cuda or cuda:N.")
    batch_size: int = setting(4, "Prompts per batch; halved on CUDA out-of-memory.", min=1, short="-b")
    seed: int = setting(0, "Seed of every sampled generation (each item draws from its own stream).")


@dataclass(frozen=True)
class SampleConfig:
    SECTION: ClassVar[str] = "sample"

    frames: int = setting(32, "Frames per video (uniform segment midpoints), or the cap when --fps is set.", min=1)
    fps: float | None = setting(None, "Sample at this rate instead, at most --frames frames.", min=0.001)
    # The vision towers need frames of at least 28 px (Qwen's merged patches) to 32 px (Qwen3-VL's).
    max_side: int = setting(448, "Resize so the longer side is at most this many pixels.", min=32)
    workers: int = setting(1, "Videos decoded in parallel.", min=1, short="-j")


@dataclass(frozen=True)
class AskConfig:
    SECTION: ClassVar[str] = "ask"

    per_video: int = setting(6, "Questions per video, split evenly across the kinds.", min=1)
    kinds: tuple[str, ...] = setting(("spatial", "temporal"), "Question kinds: spatial,temporal (VideoSAVi v3) or "
                                                               "what,why,how (v1).", choices=KINDS)
    max_new_tokens: int = setting(256, "Longest generation, in tokens.", min=1)
    temperature: float = setting(0.7, "Sampling temperature (0: greedy).", min=0.0)
    max_chars: int = setting(300, "Questions longer than this are dropped.", min=1)


@dataclass(frozen=True)
class KeyframesConfig:
    SECTION: ClassVar[str] = "keyframes"

    localizer: str = setting("policy", "policy: ask the policy of each sampled frame whether it holds what the "
                                       "question needs, and score P(yes) (SeViLA's localizer, without training). "
                                       "clip: the cosine between the question and each frame's cached CLIP "
                                       "embedding (a cheap stand-in).", choices=LOCALIZERS)
    top_k: int = setting(4, "Keyframes kept per question, in temporal order.", min=1)


@dataclass(frozen=True)
class AnswerConfig:
    SECTION: ClassVar[str] = "answer"

    candidates: int = setting(1, "Answers per question.", min=1)
    temperatures: tuple[float, ...] = setting((0.3, 0.5, 0.7, 0.9, 1.0), "Candidate k is sampled at the k-th of "
                                                                         "these (cycling).", min=0.0)
    max_new_tokens: int = setting(256, "Longest generation, in tokens.", min=1)
    temporal: tuple[str, ...] = setting((), "Temporal negatives (TimeWarp, TPO, TEMPLE): also answer from frames "
                                            "perturbed each way named (reverse, shuffle, drop); the answer from the "
                                            "true frames is chosen over each. Unset: none.", choices=PERTURBATIONS)
    temporal_share: float = setting(1.0, "Share of the questions given temporal negatives (a seeded choice).",
                                    min=0.0, max=1.0)
    keyframes: bool = setting(False, "Answer from each question's keyframes (`savi keyframes`, SeViLA's answerer) "
                                     "instead of every sampled frame.")


@dataclass(frozen=True)
class CritiqueConfig:
    SECTION: ClassVar[str] = "critique"

    mode: str = setting("critique", "critique: critique each answer, then revise it (VideoSAVi v3). judge: score the "
                                    "candidates 1-5 and pair the best with the worst (v1).", choices=CRITIQUE_MODES)
    max_new_tokens: int = setting(256, "Longest generation, in tokens.", min=1)
    temperature: float = setting(0.0, "Sampling temperature (0: greedy; a verdict should not depend on luck).",
                                 min=0.0)
    unchanged_similarity: float = setting(0.9, "A revision this similar to the answer (0-1) counts as unchanged.",
                                          min=0.0, max=1.0)


@dataclass(frozen=True)
class FilterConfig:
    SECTION: ClassVar[str] = "filter"

    swap: str = setting("auto", "When CLIP may swap chosen and rejected: auto (judge mode only, as VideoSAVi v1; a "
                                "critique's revision is never overturned), on, or off.", choices=SWAPS)
    swap_margin: float = setting(0.0, "Swap when the rejected text is more grounded by more than this (CLIP score).")
    min_clip_margin: float | None = setting(None, "Drop pairs whose chosen-minus-rejected CLIP score (after any swap) "
                                                  "is below this; unset: no drop.")
    near_duplicate: float = setting(0.9, "Drop pairs whose two texts are at least this similar (0-1).", min=0.0,
                                    max=1.0)
    max_length_ratio: float = setting(3.0, "Drop pairs where one text is more than this many times longer than the "
                                           "other.", min=1.0)
    drop_cut_off: bool = setting(True, "Drop pairs where either text was cut off at the token limit.",
                                 flag="--drop-cut-off/--keep-cut-off")


@dataclass(frozen=True)
class ClipConfig:
    SECTION: ClassVar[str] = "clip"
    FLAG_PREFIX: ClassVar[str] = "clip-"

    model: str = setting(DEFAULT_CLIP, "open_clip model name (e.g. ViT-B-32), local-dir:DIR (open_clip's folder "
                                       "layout), or hf-hub:ORG/REPO.")
    weights: str = setting(DEFAULT_CLIP_WEIGHTS, "Pretrained tag, weights file, local-dir:DIR, or random (tests "
                                                 "only); a local-dir: model brings its own.")
    pooling: str = setting("mean", "Per-frame cosines to one score: mean (robust to one odd frame), max, or topk "
                                   "(mean of the top k).", choices=POOLINGS)
    topk: int = setting(4, "k of --clip-pooling topk (capped at the number of frames).", min=1)
    text_pooling: str = setting("mean", "How the sentences of a long text are pooled: mean (every claim counts) or "
                                        "max.", choices=TEXT_POOLINGS, flag="--text-pooling")
    frames: str = setting("each", "What CLIP embeds: each (every frame alone, cosines pooled: blind to frame order) "
                                  "or grid (4 evenly spaced frames tiled 2x2 in time order, one image per video: sees "
                                  "which way things move).", choices=CLIP_FRAMES)
    device: str = setting("auto", "auto (cuda if available), cpu, cuda, cuda:N or mps.", flag="--device")
    batch_size: int = setting(32, "Frames or text segments per CLIP forward pass.", min=1)

    def __post_init__(self) -> None:
        from stages.core.errors import SaviError

        if self.pooling not in POOLINGS:
            raise SaviError(f"unknown CLIP pooling {self.pooling!r}: use one of {', '.join(POOLINGS)}")
        if self.text_pooling not in TEXT_POOLINGS:
            raise SaviError(f"unknown CLIP text pooling {self.text_pooling!r}: use one of {', '.join(TEXT_POOLINGS)}")
        if self.frames not in CLIP_FRAMES:
            raise SaviError(f"unknown CLIP frames {self.frames!r}: use one of {', '.join(CLIP_FRAMES)}")
        if self.topk < 1:
            raise SaviError(f"CLIP topk must be at least 1, got {self.topk}")
        if self.batch_size < 1:
            raise SaviError(f"CLIP batch size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class TrainConfig:
    SECTION: ClassVar[str] = "dpo"

    beta: float = setting(0.1, "DPO β: how far the policy may move from the reference.", min=0.0)
    loss: str = setting("sigmoid", "sigmoid: standard DPO. clip-weighted: -log σ(β·Δ - γ·(clip_chosen - "
                                   "clip_rejected)). rpo: DPO plus --rpo-alpha times the chosen reply's NLL.",
                        choices=LOSSES)
    rpo_alpha: float = setting(1.0, "Weight of the chosen reply's negative log-likelihood in --loss rpo.", min=0.0)
    clip_gamma: float = setting(10.0, "γ of clip-weighted: reward margin demanded per unit of CLIP score gap.",
                                min=0.0)
    learning_rate: float = setting(5e-6, "Learning rate.", min=0.0, flag="--lr")
    lr_scheduler: str = setting("linear", "How the learning rate decays (transformers' scheduler names).",
                                choices=SCHEDULERS)
    warmup: float = setting(0.0, "Warm-up: a fraction of the training steps if below 1, else a number of steps.",
                            min=0.0)
    epochs: float = setting(1.0, "Passes over the pairs.", min=0.0)
    batch_size: int = setting(1, "Pairs per device step.", min=1, short="-b")
    grad_accum: int = setting(8, "Steps accumulated per optimizer step.", min=1)
    tune: str = setting("lora", "What trains: lora (an adapter on the language model, as VideoSAVi; works in 4-bit) or "
                                "full (every weight of the language model's layers and of the vision-language "
                                "projector, the vision encoder frozen: for small models, needs --no-4bit).",
                        choices=TUNES)
    lora_r: int = setting(16, "LoRA rank (round 1; later rounds continue its adapter).", min=1)
    lora_alpha: int = setting(32, "LoRA alpha.", min=1)
    lora_dropout: float = setting(0.05, "Dropout on the trained LoRA adapter (never on the reference).", min=0.0,
                                  max=1.0)
    max_steps: int = setting(-1, "Stop after this many optimizer steps (-1: train for --epochs).")
    save_steps: int = setting(50, "Checkpoint every this many steps, for resuming after a crash.", min=1)
    gradient_checkpointing: bool = setting(True, "Recompute activations in backward instead of keeping them.")
    shared_prompts: bool = setting(True, "Run each pair as one sequence: its prompt, video tokens and all, once, then "
                                         "the chosen and the rejected reply, each masked from the other (prefix "
                                         "sharing). The same loss from fewer tokens. Needs sdpa or eager attention; "
                                         "with flash attention each reply has a row of its own.")
    four_bit: bool = setting(True, "QLoRA on a 4-bit NF4 base; --no-4bit trains plain LoRA on a bf16/fp32 base.",
                             flag="--4bit/--no-4bit")
    levels: tuple[float, ...] = setting((1.0, 0.0, 0.0), "VistaDPO's levels, the weight of each term: instance (the "
                                                         "chosen reply over the rejected one), temporal (the chosen "
                                                         "reply under the true video over it under a perturbed one) "
                                                         "and perceptive (over it with the question's keyframes "
                                                         "masked). 1,0,0: plain DPO.", min=0.0)
    level_perturbation: str = setting("reverse", "The temporal level's perturbed video: its temporal patches "
                                                 "reversed or shuffled (seeded by the pair).",
                                      choices=PATCH_PERTURBATIONS)


@dataclass(frozen=True)
class EvalConfig:
    SECTION: ClassVar[str] = "eval"

    protocol: str = setting("lmms-eval", "lmms-eval: write a reply greedily to the benchmark's lmms-eval prompt and "
                                         "read it with the task's answer extractor (lmms-eval 0.7.3), with the "
                                         "strict accuracy of the same replies beside it. likelihood: score each "
                                         "option's label, or its whole reply where the benchmark gives one (a fast "
                                         "diagnostic, never unparsed).", choices=EVAL_PROTOCOLS)
    frames: int = setting(32, "Frames per question: under lmms-eval the most that the model family's lmms-eval "
                              "path takes (its rule picks them and sizes them to its pixel budget); under "
                              "likelihood, uniform segment midpoints.", min=1)
    max_side: int = setting(448, "Longest frame side in pixels, under --protocol likelihood.", min=32)
    limit: int | None = setting(None, "Evaluate only the first N questions (in the benchmark's order).", min=1)
    allow_missing: bool = setting(False, "Evaluate the questions whose video exists, instead of stopping at missing "
                                         "videos.")
    max_new_tokens: int | None = setting(None, "Longest reply under --protocol lmms-eval. Unset: the benchmark's "
                                               "lmms-eval length (16: EgoSchema, MVBench, Video-MME; 32: "
                                               "LongVideoBench; 128: NExT-QA, Perception Test, TempCompass).", min=1)
    keyframes: int | None = setting(None, "Answer from the K frames most relevant to each question, in temporal "
                                          "order (SeViLA), as --localizer scores them. Unset: every frame.", min=1)
    localizer: str = setting("policy", "What scores the frames for --keyframes: policy (P(yes) that the frame "
                                       "answers the question) or clip (the [clip] model's question-frame cosine).",
                             choices=LOCALIZERS)
    perturb: str | None = setting(None, "Also evaluate on each video's frames perturbed in time (reverse, shuffle, "
                                        "drop), into BENCH@KIND; the report shows the change from the true order. "
                                        "A model that ignores time loses nothing.", choices=PERTURBATIONS)


@dataclass(frozen=True)
class WorldModelConfig:
    """How `savi tiny-model DIR --world W` builds and trains a model that knows the world (not a run's setting)."""

    SECTION: ClassVar[str] = "world_model"

    family: str = setting(TINY_FAMILIES[0], "Model family: qwen2_5_vl, qwen2_vl, qwen3_vl or llava_onevision.",
                          choices=TINY_FAMILIES)
    seed: int = setting(0, "Seed of the initial weights and of the order of the training examples.", min=0)
    target: float = setting(0.55, "Stop at the first evaluation whose val accuracy reaches this (chance: 0.25).",
                            min=0.0, max=1.0)
    kind_target: float = setting(0.4, "And stop only once every kind of question (direction, colour) reaches this "
                                      "val accuracy: a model at chance on one kind, its vision blind to it, cannot "
                                      "learn that kind from a round.", min=0.0, max=1.0)
    kind_ceiling: float = setting(0.7, "A kind of question whose val accuracy reaches this rests (leaves the "
                                       "training batches) until every kind reaches it: trained on, colour reaches "
                                       "0.98 before direction leaves chance, and a round then has only direction "
                                       "left to teach.", min=0.0, max=1.0)
    max_steps: int = setting(3000, "Stop after this many training steps even below the target (with a warning).",
                             min=1)
    eval_every: int = setting(50, "Evaluate on the val split every this many steps (often enough to stop near the "
                                  "target: at 100, seed 2 of the default world passed it by 18 points in one "
                                  "interval, leaving a round little to teach).", min=1)
    batch_size: int = setting(32, "Training examples per step.", min=1)
    learning_rate: float = setting(1e-3, "AdamW learning rate (a full fine-tune of a 0.7M-parameter model).",
                                   min=0.0, flag="--lr")

    def __post_init__(self) -> None:
        from stages.core.errors import SaviError

        if self.family not in TINY_FAMILIES:
            raise SaviError(f"unknown model family {self.family!r}; choose one of {', '.join(TINY_FAMILIES)}")
        for name in ("target", "kind_target", "kind_ceiling"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SaviError(f"the {name.replace('_', ' ')} is a validation accuracy from 0 to 1, got "
                                f"{getattr(self, name)}")
        for name in ("max_steps", "eval_every", "batch_size"):
            if getattr(self, name) < 1:
                raise SaviError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise SaviError(f"the learning rate must be above 0, got {self.learning_rate}")


@dataclass(frozen=True)
class LaunchConfig:
    """How `savi round` starts its model stages: in its own process, or under a launcher, one process per GPU."""

    SECTION: ClassVar[str] = "launch"

    command: str = setting("", "Run each model stage of the round (ask, keyframes, answer, critique, dpo, eval) "
                               "under this launcher, e.g. \"accelerate launch --num_processes 8\"; filter and the "
                               "summary run once, here. Empty: every stage in this process.", flag="--launch")


# Every section of a run's savi.toml that holds settings (`[benchmarks]` names eval's data instead).
SECTIONS: dict[str, type] = {cls.SECTION: cls for cls in (ModelConfig, SampleConfig, AskConfig, AnswerConfig,
                                                             CritiqueConfig, FilterConfig, ClipConfig, TrainConfig,
                                                             EvalConfig, LaunchConfig)}


def default_text(field: dataclasses.Field) -> str:
    """A setting's default as `--help` shows it."""
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)
