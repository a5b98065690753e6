"""Questions per second of `savi eval`, likelihood mode against generate mode, on the same questions and model.

Run from the repository root:

    .venv/bin/python benchmarks/bench_eval.py --questions 24 --frames 8
    # = --preset tiny --benchmark egoschema --family qwen2_5_vl --batch-size 4 --max-new-tokens 16 --repeats 3
    #   --threads 1

    # GPU only: random-weight Qwen2.5-VL-7B, 32 frames of 448 px per question (what `benchmarks/gpu_check.sh` runs)
    .venv/bin/python benchmarks/bench_eval.py --preset qwen2.5-vl-7b --questions 32 --repeats 1
    # The same on CPU with the 7B config shrunk and small frames (a smoke test, not a measurement)
    .venv/bin/python benchmarks/bench_eval.py --preset qwen2.5-vl-7b --dry-run-cpu

What it measures
----------------
``stages.eval.run``, the function behind ``savi eval``, called as the CLI calls it (inside the run's lock) with
``force=True``, so that every call evaluates every question again. A benchmark fixture is written in its real
layout by ``stages.offline.benchmark_files.write_benchmark`` (``--questions`` per split; EgoSchema's default
subset split holds two thirds of them), and a tiny random model by ``stages.offline.tiny_model.build_tiny_model``
(``--family``; it has no size presets). Neither is timed. Each timed call covers everything the stage does:
loading the model from its folder, decoding the frames, the model work, writing the table and summary.

* likelihood: one forward pass per question; the log-probability of each option's letter as the reply's first
  token picks the answer.
* generate: the lmms-eval protocol: greedy generation of up to ``--max-new-tokens`` tokens after the same prompt, on
  lmms-eval's frames and pixels for the model family, then the benchmark's lmms-eval answer extractor.

One untimed warm-up call per mode comes first (one batch of questions). The modes are then interleaved
(likelihood, generate, likelihood, ...) ``--repeats`` times, so a slow spell on a shared machine hits both; the
table shows the median questions/s per mode and the ratio likelihood/generate. The fraction of generate replies
that no option could be read from is the summary's ``unmatched`` over its ``questions``; with a random model it
says nothing about a real one, only that generate mode can fail where likelihood mode cannot. To show how many
tokens generate mode decoded, ``Policy.generate`` is wrapped to keep the ``Generation`` rows it returns
(``num_tokens``, and whether each stopped at end-of-sequence); it runs unchanged.

The real shape (``--preset qwen2.5-vl-7b``)
-----------------------------------------
The published Qwen2.5-VL-7B-Instruct config with random bf16 weights, in the model folder ``benchmarks/qwen_7b.py``
builds (shared with the other GPU benchmarks), on CUDA, ``--frames`` 32 of 448 px per question: 4,096 video tokens
per prompt. The GPU machine has no video decoder, so the fixture is MVBench's ``episodic_reasoning`` task in its
published layout, the one MVBench task whose videos are folders of JPEG frames at 3 fps (``read_frame_folder``,
which savi reads with PIL): 64 frames of 448 x 448 per video (drawn with numpy), 4 questions per video, 5 options
each. Loading the 7B takes seconds that have nothing to do with the mode, so ``Policy.load`` is wrapped to load
the model once and hand the same ``Policy`` to every later call; the stage otherwise runs unchanged, and the load
time is reported on its own. The questions/s of each mode are then the stage without loading: reading the
benchmark, decoding the frames (in a thread ahead of the model, as savi does), the model work and writing the
table. ``--dry-run-cpu`` runs the same on CPU with the shrunk config and 8 frames of 112 px, and fails if the path
imported duckdb, PyAV, decord or open_clip, which the GPU machine does not have.
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
from typing import Any

import pyarrow.parquet as pq
import qwen_7b
from machine import cpu_model

from stages import eval as eval_stage
from stages.benchmarks import BENCHMARKS
from stages.core.model import Generation, ModelConfig, Policy, resolve_device
from stages.core.store import open_run
from stages.offline.tiny_model import DEFAULT_FAMILY, FAMILIES, build_tiny_model

MODES = ("likelihood", "generate")
# What the GPU machine lacks; a dry run fails if any of them was imported on this path.
NOT_ON_THE_GPU_MACHINE = ("duckdb", "av", "decord", "open_clip")


def write_frame_folder_benchmark(data: Path, questions: int, frames: int, size: int) -> Path:
    """MVBench's episodic_reasoning task in its published layout: json/episodic_reasoning.json, and each video a
    folder of 1-based JPEG frames at 3 fps under video/tvqa/frames_fps3_hq/. Four questions per video."""
    from PIL import Image

    shutil.rmtree(data, ignore_errors=True)
    records = []
    for i in range(questions):
        name = f"s01e{i // 4 + 1:02d}_seg02_clip_00"
        folder = data / "video" / "tvqa" / "frames_fps3_hq" / name
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for k, frame in enumerate(qwen_7b.frames(2 * frames, size, seed=i // 4)):
                Image.fromarray(frame).save(folder / f"{k + 1:05d}.jpg", quality=90)
        options = ["It moves to the right.", "It moves to the left.", "It moves up.", "It moves down.",
                   "It does not move."]
        records.append({"video": name, "question": f"Question {i}: where does the square go?",
                        "candidates": options, "answer": options[i % 5]})
    (data / "json").mkdir(parents=True)
    (data / "json" / "episodic_reasoning.json").write_text(json.dumps(records, indent=1))
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "qwen2.5-vl-7b"), default="tiny",
                        help="tiny: savi's tiny model on any device; qwen2.5-vl-7b: the 7B shape, CUDA only")
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="with --preset qwen2.5-vl-7b: run its code path on CPU with a shrunk config")
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="egoschema", help="(tiny preset)")
    parser.add_argument("--questions", type=int, default=24, help="questions per split written to the fixture")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames sampled per question (default 8; 32 for qwen2.5-vl-7b, 8 in its dry run)")
    parser.add_argument("--size", type=int, default=None,
                        help="frame side of the qwen2.5-vl-7b fixture (default 448; 112 in its dry run)")
    parser.add_argument("--family", choices=FAMILIES, default=DEFAULT_FAMILY, help="tiny random model family")
    parser.add_argument("--batch-size", type=int, default=4, help="ModelConfig.batch_size (savi's default)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generate mode's longest reply")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--device", default="auto", help="ModelConfig.device (tiny preset)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/savi-bench-eval-models"),
                        help="model folders of the qwen2.5-vl-7b preset, reused")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args(argv)
    if args.dry_run_cpu and args.preset != "qwen2.5-vl-7b":
        parser.error("--dry-run-cpu only applies to --preset qwen2.5-vl-7b")
    real = args.preset == "qwen2.5-vl-7b"
    args.frames = args.frames or (32 if real and not args.dry_run_cpu else 8)
    args.size = args.size or (112 if args.dry_run_cpu else 448)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    real = args.preset == "qwen2.5-vl-7b"
    if real and not args.dry_run_cpu and not torch.cuda.is_available():
        print("bench_eval: --preset qwen2.5-vl-7b needs a CUDA GPU and none is available here (add --dry-run-cpu to "
              "exercise the code path on CPU with a shrunk config)")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = args.dir or Path(tempfile.mkdtemp(prefix="savi-bench-eval-"))
    if real:
        folder, _ = qwen_7b.ensure_model_folder_in_child(args.cache, shrunk=args.dry_run_cpu)
        data = write_frame_folder_benchmark(scratch / "MVBench", args.questions, args.frames, args.size)
        source = eval_stage.BenchmarkSource("mvbench", data, split="episodic_reasoning")
        device = "cpu" if args.dry_run_cpu else "cuda"
        model_name = f"Qwen2.5-VL-7B shape ({folder.name}), random weights"
    else:
        # Imported here: it writes videos with PyAV, which the GPU machine does not have.
        from stages.offline.benchmark_files import write_benchmark

        data = write_benchmark(args.benchmark, scratch / "data", questions=args.questions)
        folder = build_tiny_model(scratch / "model", args.family)
        source = eval_stage.BenchmarkSource(args.benchmark, data)
        device = args.device
        model_name = f"{args.family} tiny random model"
    shutil.rmtree(scratch / "runs", ignore_errors=True)
    run = open_run("bench", scratch / "runs")
    model_cfg = ModelConfig(id=str(folder), batch_size=args.batch_size, device=device)

    def evaluate(mode: str, limit: int | None = None) -> tuple[float, eval_stage.EvalOutcome]:
        # "generate" is the lmms-eval protocol (its frames and pixels for the family, --max-new-tokens tokens).
        cfg = eval_stage.EvalConfig(protocol="lmms-eval" if mode == "generate" else "likelihood", frames=args.frames,
                                    max_side=args.size if real else 448, limit=limit,
                                    max_new_tokens=args.max_new_tokens)
        start = time.perf_counter()
        outcome = eval_stage.run(run, 0, source, cfg, model_cfg, force=True)
        return time.perf_counter() - start, outcome

    # Keep what Policy.generate returns, to count the tokens each reply took; the stage itself is unchanged.
    replies: list[Generation] = []
    generate = Policy.generate

    def recording_generate(self: Policy, *a: Any, **kw: Any) -> list[Generation]:
        replies.extend(out := generate(self, *a, **kw))
        return out

    Policy.generate = recording_generate
    # At the real shape, load the model once (see the module docstring) and time that load on its own.
    loads: list[float] = []
    if real:
        load = Policy.load.__func__
        loaded: dict[Any, Policy] = {}

        def load_once(cls: type[Policy], cfg: ModelConfig, adapter: Path | None = None, **kwargs: Any) -> Policy:
            if (cfg, adapter) not in loaded:
                start = time.perf_counter()
                loaded[cfg, adapter] = load(cls, cfg, adapter, **kwargs)
                loads.append(time.perf_counter() - start)
            policy = loaded[cfg, adapter]
            policy.batch_size = cfg.batch_size  # as a fresh load would have it
            return policy

        Policy.load = classmethod(load_once)

    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    last: dict[str, eval_stage.EvalOutcome] = {}
    with run.lock():
        for mode in MODES:
            evaluate(mode, limit=args.batch_size)  # warm-up: lazy imports and first-call work, not timed
        for repeat in range(args.repeats):
            for mode in MODES:
                if mode == "generate":
                    replies.clear()  # so that it ends holding the last timed generate call's replies
                wall, last[mode] = evaluate(mode)
                walls[mode].append(wall)
                print(f"  repeat {repeat + 1} {mode:>10}: {wall:6.2f} s, {last[mode].summary['evaluated']} "
                      f"questions", flush=True)

    questions = last["likelihood"].summary["evaluated"]
    assert all(o.summary["evaluated"] == questions and not o.summary["video_errors"] for o in last.values())
    qps = {mode: statistics.median(questions / w for w in walls[mode]) for mode in MODES}
    generated = last["generate"].summary
    unparsed = f"{generated['unmatched']}/{generated['questions']}"
    chance = statistics.mean(1 / len(o) for o in pq.read_table(last["generate"].result.path).column("options")
                             .to_pylist())
    lines = ["| mode | wall s (median) | questions/s (median) | vs generate | unparsed |", "|---|---:|---:|---:|---:|"]
    for mode in MODES:
        lines.append(f"| {mode} | {statistics.median(walls[mode]):.2f} | {qps[mode]:.2f} | "
                     f"**{qps[mode] / qps['generate']:.2f}x** | "
                     f"{unparsed if mode == 'generate' else '0 (cannot fail)'} |")
    table = "\n".join(lines)
    print()
    print(table)
    print()
    for mode in MODES:
        print(f"{mode} runs (s): " + ", ".join(f"{w:.2f}" for w in walls[mode]))
    print(f"ratio likelihood/generate questions/s: {qps['likelihood'] / qps['generate']:.2f}x")
    print(f"generate: unparsed {unparsed} ({generated['unmatched'] / generated['questions']:.0%}); replies "
          f"{statistics.mean(g.num_tokens for g in replies):.1f} tokens on average (limit {args.max_new_tokens}), "
          f"{sum(g.finished for g in replies)}/{len(replies)} stopped at end-of-sequence")
    print(f"accuracy: likelihood {last['likelihood'].summary['accuracy']}, generate {generated['accuracy']} "
          f"(random model; chance {chance:.2f})")
    frames = f"{args.frames} frames" + (f" of {args.size} px" if real else "")
    setup = (f"{source.name} ({last['likelihood'].table}), {questions} questions, {frames}, {model_name}, batch "
             f"size {args.batch_size}, {args.repeats} repeats"
             + (f"; model loaded once, in {loads[0]:.1f} s, not in the walls" if loads else ""))
    print(f"setup: {setup}; scratch {scratch}")
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") or (device == "auto" and
                                                                         torch.cuda.is_available()) else None
    machine = (f"{gpu or cpu_model()}, {os.cpu_count()} CPUs, device {resolve_device(device)}, torch "
               f"{torch.__version__}, torch threads {torch.get_num_threads()}, Python {platform.python_version()}, "
               f"load average {os.getloadavg()[0]:.1f}")
    print(f"machine: {machine}; {datetime.now(UTC).isoformat(timespec='seconds')}")
    absent = [m for m in NOT_ON_THE_GPU_MACHINE if m in sys.modules]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "bench_eval", "preset": args.preset, "dry_run": args.dry_run_cpu, "setup": setup,
            "machine": machine, "questions": questions, "walls_s": walls, "questions_per_s": qps,
            "likelihood_over_generate": qps["likelihood"] / qps["generate"], "load_s": loads,
            "generate_unparsed": generated["unmatched"], "generate_mean_tokens":
                statistics.mean(g.num_tokens for g in replies), "table": table,
            "imported_but_absent_on_gpu_machine": absent}, indent=2))
        print(f"JSON: {args.json}")
    if args.dry_run_cpu and absent:
        print(f"bench_eval: this path imported {', '.join(absent)}, which the GPU machine does not have")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
