"""Questions per second of `savi eval`, likelihood mode against generate mode, on the same questions and model.

Run from the repository root:

    .venv/bin/python benchmarks/bench_eval.py --questions 24 --frames 8
    # = --benchmark egoschema --family qwen2_5_vl --batch-size 4 --max-new-tokens 16 --repeats 3 --threads 1

What it measures
----------------
``stages.eval.run``, the function behind ``savi eval``, called as the CLI calls it (inside the run's lock) with
``force=True``, so that every call evaluates every question again. A benchmark fixture is written in its real
layout by ``stages.core.synthetic_benchmarks.write_benchmark`` (``--questions`` per split; EgoSchema's default
subset split holds two thirds of them), and a tiny random model by ``stages.core.tiny_model.build_tiny_model``
(``--family``; it has no size presets). Neither is timed. Each timed call covers everything the stage does:
loading the model from its folder, decoding the frames, the model work, writing the table and summary.

* likelihood: one forward pass per question; the log-probability of each option's letter as the reply's first
  token picks the answer.
* generate: greedy generation of up to ``--max-new-tokens`` tokens after the same prompt, then ``parse_choice``.

One untimed warm-up call per mode comes first (one batch of questions). The modes are then interleaved
(likelihood, generate, likelihood, ...) ``--repeats`` times, so a slow spell on a shared machine hits both; the
table shows the median questions/s per mode and the ratio likelihood/generate. The fraction of generate replies
that no option could be read from is the summary's ``unparsed`` over its ``questions``; with a random model it
says nothing about a real one, only that generate mode can fail where likelihood mode cannot. To show how many
tokens generate mode decoded, ``Policy.generate`` is wrapped to keep the ``Generation`` rows it returns
(``num_tokens``, and whether each stopped at end-of-sequence); it runs unchanged.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from machine import cpu_model

from stages import eval as eval_stage
from stages.core.model import Generation, ModelConfig, Policy, resolve_device
from stages.core.store import open_run
from stages.core.synthetic_benchmarks import LAYOUTS, write_benchmark
from stages.core.tiny_model import DEFAULT_FAMILY, FAMILIES, build_tiny_model

MODES = ("likelihood", "generate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--benchmark", choices=sorted(LAYOUTS), default="egoschema")
    parser.add_argument("--questions", type=int, default=24, help="questions per split written to the fixture")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per question")
    parser.add_argument("--family", choices=FAMILIES, default=DEFAULT_FAMILY, help="tiny random model family")
    parser.add_argument("--batch-size", type=int, default=4, help="ModelConfig.batch_size (savi's default)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generate mode's longest reply")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--device", default="auto", help="ModelConfig.device")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = args.dir or Path(tempfile.mkdtemp(prefix="savi-bench-eval-"))
    data = write_benchmark(args.benchmark, scratch / "data", questions=args.questions)
    folder = build_tiny_model(scratch / "model", args.family)
    run = open_run("bench", scratch / "runs")
    source = eval_stage.BenchmarkSource(args.benchmark, data)
    model_cfg = ModelConfig(model=str(folder), batch_size=args.batch_size, device=args.device)

    def evaluate(mode: str, limit: int | None = None) -> tuple[float, eval_stage.EvalOutcome]:
        cfg = eval_stage.EvalConfig(mode=mode, frames=args.frames, limit=limit, max_new_tokens=args.max_new_tokens)
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
    unparsed = f"{generated['unparsed']}/{generated['questions']}"
    chance = statistics.mean(1 / len(o) for o in pq.read_table(last["generate"].result.path).column("options")
                             .to_pylist())
    print()
    print("| mode | wall s (median) | questions/s (median) | vs generate | unparsed |")
    print("|---|---:|---:|---:|---:|")
    for mode in MODES:
        print(f"| {mode} | {statistics.median(walls[mode]):.2f} | {qps[mode]:.2f} | "
              f"**{qps[mode] / qps['generate']:.2f}x** | {unparsed if mode == 'generate' else '0 (cannot fail)'} |")
    print()
    for mode in MODES:
        print(f"{mode} runs (s): " + ", ".join(f"{w:.2f}" for w in walls[mode]))
    print(f"ratio likelihood/generate questions/s: {qps['likelihood'] / qps['generate']:.2f}x")
    print(f"generate: unparsed {unparsed} ({generated['unparsed'] / generated['questions']:.0%}); replies "
          f"{statistics.mean(g.num_tokens for g in replies):.1f} tokens on average (limit {args.max_new_tokens}), "
          f"{sum(g.finished for g in replies)}/{len(replies)} stopped at end-of-sequence")
    print(f"accuracy: likelihood {last['likelihood'].summary['accuracy']}, generate {generated['accuracy']} "
          f"(random model; chance {chance:.2f})")
    print(f"setup: {args.benchmark} ({last['likelihood'].table}), {questions} questions, {args.frames} frames, "
          f"{args.family} tiny random model, batch size {args.batch_size}, {args.repeats} repeats; scratch {scratch}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, device {resolve_device(args.device)}, torch "
          f"{torch.__version__}, torch threads {torch.get_num_threads()}, Python {platform.python_version()}, load "
          f"average {os.getloadavg()[0]:.1f}; {datetime.now(UTC).isoformat(timespec='seconds')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
