"""What keyframe localization costs per question, for both localizers, as a share of one answer generation.

Run from the repository root (CPU; no weights needed: a tiny random policy and a tiny random CLIP are built):

    .venv/bin/python benchmarks/bench_keyframes.py
    # = --videos 6 --questions-per-video 2 --frames 32 --batch-size 4 --max-new-tokens 256 --top-k 4 --repeats 3

    # A quicker smoke run
    .venv/bin/python benchmarks/bench_keyframes.py --videos 3 --repeats 2 --max-new-tokens 64

Options: ``--data DIR`` keeps the scratch files there (an empty or new folder; default: a temporary folder,
removed at the end);
``--json FILE`` writes the raw timings, the settings, the mean reply length and the machine. The exit status is 1
if a goal below is missed, 0 otherwise.

What it measures
----------------
Setup, not timed: ``--videos`` synthetic clips (640x360, 48 frames, one moving shape each) are written with savi's
synthetic-video writer and sampled into a scratch run with ``stages.sample.run`` at ``--frames`` frames, longer
side 448 (savi's defaults). A tiny random Qwen2.5-VL (``build_tiny_model``) is loaded once as ``Policy``, a tiny
random CLIP (``build_tiny_clip``) once as ``ClipScorer``, and the CLIP frame cache of every video is filled, as
``savi filter`` leaves it. Each video gets ``--questions-per-video`` fixed questions. The frames of every video are
decoded once up front and handed to both policy operations, so JPEG decoding is in neither.

Three operations, each over every question of every video, timed with ``time.perf_counter`` and divided by the
number of questions:

* ``answer``: one reply per question, as ``savi answer`` writes it: ``Policy.generate`` on all sampled frames with
  the ``answer`` prompt, ``Decoding(max_new_tokens=--max-new-tokens, temperature=0.3)``, ``--batch-size``
  questions per call, videos kept together. A random model may stop at once or run to the limit, so the mean
  number of generated tokens (``Generation.num_tokens``) is reported next to the time.
* ``policy``: SeViLA's localizer, as ``savi keyframes --localizer policy`` runs it: ``keyframes.policy_scores``
  (one prompt per frame, a single frame each, P(yes) from the first reply token, every frame of ``--batch-size``
  questions batched together) and ``top_k``.
* ``clip``: ``savi keyframes --localizer clip``: ``ClipScorer.frame_embeddings`` (a read of the run's cache),
  ``keyframes.clip_scores`` (one CLIP text embedding and a matrix product) and ``top_k``.

One untimed warm-up of each comes first, then ``--repeats`` rounds, each running answer, policy and clip in turn,
so that a slow spell on a shared machine hits all three. The table shows the median seconds per question and the
ratios policy/answer and clip/answer (of the medians) against their goals: clip under 0.05 of an answer, policy
under 1 answer.

What the tiny model on CPU can and cannot tell
----------------------------------------------
It can tell what does not depend on the model's size: the clip localizer never runs the policy and never embeds a
frame again (a cache read, one short text through CLIP, a (frames x D) product), and both localizers are wired as
the stage runs them, with no hidden per-question work. The clip ratio is mostly fixed overhead over a cheap tiny
answer; a real CLIP's text tower adds milliseconds on a GPU, against seconds for a 7B answer, so it stays far
under its goal there.

It cannot tell the policy ratio of a real 7B on GPU. There the cost is the model's arithmetic: the policy localizer
is about frames x one short prefill (one frame, shown twice because Qwen's video processor groups frames in pairs,
plus the question and the yes/no prompt, and no decoding), while an answer is one long prefill of all the frames
plus up to --max-new-tokens decode steps, each a full pass over the 7B's weights. Which side wins depends on the
model's size, the GPU (prefill is compute-bound, decoding memory-bound) and how long the replies run, none of
which a tiny random model on CPU reproduces: here per-call overheads (the processor resizing frames, Python around
each forward pass) weigh far more than they would, and decode steps of a 0.7M-parameter model cost next to
nothing. The prompt lengths printed give the prefill side of that sum: at the defaults, 2,489 tokens for an answer
and 294 per frame (x 32 frames: about 9,400), of which 2,304 and 144 are video tokens, the same for any
Qwen2.5-VL; the text tokens come from the tiny model's own small tokenizer and differ from a real one's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# The repository root, for `stages` without an install; this folder (for `machine`) is on the path already when the
# script is run as a file.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402

VIDEO_SIZE = (640, 360)
VIDEO_FRAMES = 48
MAX_SIDE = 448  # savi's default
TEMPERATURE = 0.3  # the first (and default) temperature of `savi answer`
OPERATIONS = ("answer", "policy", "clip")
GOALS = {"policy": 1.0, "clip": 0.05}  # largest acceptable cost, in answers
QUESTIONS = (
    "What does the shape do over the course of the video?",
    "In which direction does the object move, and where is it at the end?",
    "What colour is the moving shape, and when does it reach the middle of the frame?",
    "Does anything change in the background while the shape moves?",
)


# ---------------------------------------------------------------------------------------------------------------
# Setup (untimed)


def write_videos(folder: Path, count: int) -> None:
    from stages.offline import videos as synthetic

    shapes = [synthetic.Shape(kind, color, direction) for kind in ("square", "circle")
              for color in ("red", "green", "blue") for direction in ("left_to_right", "top_to_bottom")]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        synthetic.write_video(folder / f"video_{i:03d}.mp4", num_frames=VIDEO_FRAMES, fps=12, size=VIDEO_SIZE,
                              seed=i, shapes=(shapes[i % len(shapes)],))


def prompt_tokens(policy, video, text: str) -> int:
    """How many tokens the policy prefills for one (video, prompt), as `Policy.generate` builds it."""
    from stages.core.model import chat, processor_inputs

    rendered = policy.processor.apply_chat_template(chat(text), tokenize=False, add_generation_prompt=True)
    return int(processor_inputs(policy.processor, [video], [rendered])["input_ids"].shape[1])


# ---------------------------------------------------------------------------------------------------------------
# Reporting


def markdown_table(per_question: dict[str, float], ratios: dict[str, float], passed: dict[str, bool]) -> str:
    label = {"answer": "answer (one generation)", "policy": "policy localizer (P(yes) per frame)",
             "clip": "clip localizer (cached frames)"}
    lines = ["| operation | s per question (median) | x answer | goal | |", "|---|---:|---:|---:|---|"]
    for op in OPERATIONS:
        if op == "answer":
            lines.append(f"| {label[op]} | {per_question[op]:.4f} | 1 | | |")
        else:
            lines.append(f"| {label[op]} | {per_question[op]:.4f} | {ratios[op]:.4f} | < {GOALS[op]:g} | "
                         f"{'PASS' if passed[op] else 'FAIL'} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--videos", type=int, default=6, help="synthetic videos")
    parser.add_argument("--questions-per-video", type=int, default=2, help=f"at most {len(QUESTIONS)}")
    parser.add_argument("--frames", type=int, default=32, help="sampled frames per video (savi's default)")
    parser.add_argument("--batch-size", type=int, default=4, help="ModelConfig.batch_size (savi's default)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest answer (savi's default)")
    parser.add_argument("--top-k", type=int, default=4, help="keyframes kept per question (savi's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the three operations, interleaved")
    parser.add_argument("--data", type=Path, default=None,
                        help="scratch folder, empty or new, kept afterwards (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, default=None, help="write the raw timings here too")
    args = parser.parse_args()
    if min(args.videos, args.questions_per_video, args.frames, args.batch_size, args.max_new_tokens, args.top_k,
           args.repeats) < 1:
        parser.error("every count must be positive")
    if args.questions_per_video > len(QUESTIONS):
        parser.error(f"--questions-per-video must be at most {len(QUESTIONS)}")
    if args.frames > VIDEO_FRAMES:
        parser.error(f"--frames must be at most {VIDEO_FRAMES} (the synthetic videos' length)")
    if args.data is not None and args.data.exists() and any(args.data.iterdir()):
        parser.error(f"--data {args.data} is not empty: give an empty or new folder (nothing there is replaced)")
    return args


def main() -> int:
    args = parse_args()
    # Heavy imports here, so that --help is instant.
    import torch

    from stages import keyframes, sample
    from stages.core.clip import ClipConfig, ClipScorer
    from stages.core.model import Decoding, Policy, Video, load_video
    from stages.core.prompts import load_prompts
    from stages.core.settings import ModelConfig
    from stages.core.store import open_run
    from stages.offline.tiny_clip import build_tiny_clip
    from stages.offline.tiny_model import build_tiny_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    scratch = args.data.resolve() if args.data else Path(tempfile.mkdtemp(prefix="savi-bench-keyframes-"))
    try:
        write_videos(scratch / "videos", args.videos)
        run = open_run("bench", scratch / "runs")
        sample.run(run, [scratch / "videos"], sample.SampleConfig(frames=args.frames, max_side=MAX_SIDE, workers=1))
        samples = sorted(run.artifact("samples").read(), key=lambda s: s.video_id)
        bad = [s for s in samples if s.status != "ok" or len(s.frame_indices) != args.frames]
        if len(samples) != args.videos or bad:
            raise SystemExit(f"sampling failed: {len(samples)} rows for {args.videos} videos, {len(bad)} bad")
        print(f"setup: {args.videos} videos x {args.frames} frames (longer side {MAX_SIDE}) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)

        model_cfg = ModelConfig(id=str(build_tiny_model(scratch / "model")), batch_size=args.batch_size, device="cpu")
        policy = Policy.load(model_cfg)
        scorer = ClipScorer.load(ClipConfig(model=f"local-dir:{build_tiny_clip(scratch / 'clip')}", device="cpu"))
        for s in samples:  # as `savi filter` leaves the run
            scorer.frame_embeddings(run, s)
        prompts = load_prompts()
        answer_prompt, frame_prompt = prompts["answer"], prompts["keyframes"]
        decoding = Decoding(max_new_tokens=args.max_new_tokens, temperature=TEMPERATURE)

        # Questions in video order, as both stages sort them; each video's frames decoded once, outside the timings.
        videos = {s.video_id: load_video(run, s) for s in samples}
        asked = [(s.video_id, q) for s in samples for q in QUESTIONS[:args.questions_per_video]]
        n = len(asked)
        params_m = sum(p.numel() for p in policy.model.parameters()) / 1e6
        first_video = videos[asked[0][0]]
        answer_len = prompt_tokens(policy, first_video, answer_prompt.render("answer", question=asked[0][1]))
        frame_len = prompt_tokens(policy, Video.of(first_video.frames[:1], first_video.total_frames, first_video.fps,
                                                   first_video.indices[:1]),
                                  frame_prompt.render("frame", question=asked[0][1]))
        print(f"policy: tiny Qwen2.5-VL ({params_m:.1f}M parameters), batch size {args.batch_size}; prompt tokens: "
              f"answer {answer_len}, one frame {frame_len}; {n} questions; torch threads {torch.get_num_threads()}",
              flush=True)

        # The three operations. Each covers every question and returns what it produced, to check it did the work.
        def answer(items: list[tuple[str, str]]) -> list[int]:
            tokens = []
            for start in range(0, len(items), args.batch_size):
                batch = items[start:start + args.batch_size]
                replies = policy.generate([videos[vid] for vid, _ in batch],
                                          [answer_prompt.render("answer", question=q) for _, q in batch],
                                          keys=[f"{vid}:{q}" for vid, q in batch], decoding=decoding)
                tokens += [r.num_tokens for r in replies]
            return tokens

        def policy_localizer(items: list[tuple[str, str]]) -> list[list[int]]:
            chosen = []
            for start in range(0, len(items), args.batch_size):  # as the stage: a few questions' frames per call
                batch = items[start:start + args.batch_size]
                scores = keyframes.policy_scores(policy, frame_prompt, [videos[vid] for vid, _ in batch],
                                                 [q for _, q in batch])
                chosen += [keyframes.top_k(s, args.top_k) for s in scores]
            return chosen

        by_id = {s.video_id: s for s in samples}

        def clip_localizer(items: list[tuple[str, str]]) -> list[list[int]]:
            return [keyframes.top_k(keyframes.clip_scores(scorer, scorer.frame_embeddings(run, by_id[vid]), q),
                                    args.top_k) for vid, q in items]

        operations = {"answer": answer, "policy": policy_localizer, "clip": clip_localizer}

        # Warm-up: lazy imports, first-call allocations and kernel selection, on one batch each.
        for op in OPERATIONS:
            operations[op](asked[:args.batch_size])

        walls: dict[str, list[float]] = {op: [] for op in OPERATIONS}
        tokens: list[int] = []
        for repeat in range(args.repeats):
            for op in OPERATIONS:
                start = time.perf_counter()
                out = operations[op](asked)
                walls[op].append(time.perf_counter() - start)
                assert len(out) == n, f"{op} covered {len(out)} of {n} questions"
                if op == "answer":
                    tokens += out
                print(f"  repeat {repeat + 1}/{args.repeats} {op:>6}: {walls[op][-1]:8.3f} s, "
                      f"{walls[op][-1] / n:.4f} s per question", flush=True)

        per_question = {op: statistics.median(walls[op]) / n for op in OPERATIONS}
        ratios = {op: per_question[op] / per_question["answer"] for op in GOALS}
        passed = {op: ratios[op] < GOALS[op] for op in GOALS}
        mean_tokens = statistics.mean(tokens)
        table = markdown_table(per_question, ratios, passed)
        print()
        print(table)
        print()
        for op in OPERATIONS:
            print(f"{op} runs (s per question): " + ", ".join(f"{w / n:.4f}" for w in walls[op]))
        print(f"answers: {mean_tokens:.1f} generated tokens on average (limit {args.max_new_tokens}), "
              f"{sum(t >= args.max_new_tokens for t in tokens)}/{len(tokens)} at the limit")
        machine = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
        print(f"machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, "
              f"{machine['torch_threads']} threads; total {time.perf_counter() - started:.0f} s")
        verdict = "all goals met" if all(passed.values()) else \
            "goal missed: " + ", ".join(f"{op} {ratios[op]:.3f} >= {GOALS[op]:g}" for op in GOALS if not passed[op])
        print(verdict)

        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "benchmark": "bench_keyframes", "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join([sys.executable, *sys.argv]),
                "settings": {"videos": args.videos, "questions_per_video": args.questions_per_video, "questions": n,
                             "frames": args.frames, "max_side": MAX_SIDE, "batch_size": args.batch_size,
                             "max_new_tokens": args.max_new_tokens, "temperature": TEMPERATURE, "top_k": args.top_k,
                             "repeats": args.repeats, "policy_params_m": params_m,
                             "prompt_tokens": {"answer": answer_len, "frame": frame_len}},
                "walls_s": walls, "per_question_s": per_question, "ratios": ratios, "goals": GOALS,
                "passed": passed, "answer_tokens": tokens, "mean_answer_tokens": mean_tokens, "machine": machine,
                "table": table}, indent=2))
            print(f"JSON: {args.json}")
        return 0 if all(passed.values()) else 1
    finally:
        if args.data is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
