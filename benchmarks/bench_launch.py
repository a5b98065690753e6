"""Scaling of `savi answer` from one process to N under `accelerate launch`, measured side by side.

Run from the repository root (no weights needed: a tiny random Qwen2.5-VL is built):

    .venv/bin/python benchmarks/bench_launch.py                  # CPU: 1 process, then 2, one thread each
    .venv/bin/python benchmarks/bench_launch.py --device cuda --processes 8     # a machine with 8 GPUs

Options: ``--processes N`` (default 2); ``--videos``, ``--questions-per-video``, ``--candidates``,
``--max-new-tokens``, ``--batch-size`` (the work: default 4 videos x 64 questions x 2 candidates, 64 new tokens,
batch 4); ``--repeats`` (default 2); ``--json FILE`` (the timings, the settings, the machine). Exit status 1 if the
two tables differ (they must be equal row for row), else 0.

What it measures
----------------
Setup, not timed: synthetic clips sampled into a scratch run at 8 frames, the questions written, and the run
copied once per repeat and process count. Then, per repeat, the same `savi answer` command (a fresh process, as a
user runs it) on its own copy, once alone and once under `accelerate launch --multi_gpu --num_processes N` (on the
CPU, accelerate's `--cpu` starts one process unless MPI is set up; `--multi_gpu` starts N through torchrun, and savi
runs them on the CPU), alternating which goes first. The wall time is the whole command: start-up, model load and
launch overhead included, as a user waits for it. Reported: the median seconds of each, the speedup t1/tN and the
efficiency speedup/N.

What it can tell
----------------
On this 2-core CPU, each process gets one core and one thread: the speedup says how much of the stage's time the
shares divide (generation) against what each process pays again (Python and torch start-up, model load, the
run's tables read, the processor per batch). A tiny model generates fast, so that fixed share weighs far more than
it would at 7B, where minutes of generation per process dwarf a few seconds of start-up: the CPU figure is a floor.
On GPUs, each process takes its own GPU; run it there with --device cuda.

Measured on the 2-core VM (docs/SCALING.md): 512 answers, 26.3 s alone and 20.6 s on two processes (1.27x,
efficiency 0.64); 192 answers of 32 tokens, 10.0 s and 12.6 s (0.79x: start-up outweighs the work divided).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402

from stages import sample  # noqa: E402
from stages.core.launch import accelerate_command  # noqa: E402
from stages.core.records import Question  # noqa: E402
from stages.core.store import ArtifactWriter, open_run  # noqa: E402
from stages.offline import videos as synthetic  # noqa: E402
from stages.offline.tiny_model import build_tiny_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--questions-per-video", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="savi-bench-launch-"))
    try:
        return measure(scratch, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure(scratch: Path, args: argparse.Namespace) -> int:
    workspace = scratch / "runs"
    model = build_tiny_model(scratch / "model", "qwen2_5_vl")
    base = open_run("base", workspace)
    for n in range(args.videos):
        synthetic.write_video(scratch / "clips" / f"clip{n}.mp4", num_frames=16, fps=8, seed=n,
                              shapes=(synthetic.Shape("square", "red", "left_to_right"),))
    sample.run(base, [scratch / "clips"], sample.SampleConfig(frames=8, workers=1))
    write_questions(base, args.questions_per_video)

    env = {**os.environ, "SAVI_HOME": str(workspace), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    answer = ["answer", "--round", "1", "--model", str(model), "--candidates", str(args.candidates),
              "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
              "--device", args.device]
    seconds: dict[int, list[float]] = {1: [], args.processes: []}
    tables = {}
    for repeat in range(args.repeats):
        order = [1, args.processes] if repeat % 2 == 0 else [args.processes, 1]
        for processes in order:
            name = f"r{repeat}-p{processes}"
            shutil.copytree(base.path, workspace / name, ignore=shutil.ignore_patterns(".lock"))
            command = [*launcher(processes), *answer, "--run", name]
            start = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            seconds[processes].append(time.perf_counter() - start)
            if done.returncode != 0:
                sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
            tables[processes] = open_run(name, workspace).artifact("answers", 1).read()

    one, many = statistics.median(seconds[1]), statistics.median(seconds[args.processes])
    same = tables[1] == tables[args.processes]
    speedup = one / many
    print(f"savi answer, {len(tables[1])} answers ({args.videos} videos x {args.questions_per_video} questions x "
          f"{args.candidates} candidates, {args.max_new_tokens} new tokens, batch {args.batch_size}, "
          f"{args.device}):")
    print(f"  1 process        {one:7.1f} s  (runs: {', '.join(f'{s:.1f}' for s in seconds[1])})")
    print(f"  {args.processes} processes      {many:7.1f} s  (runs: "
          f"{', '.join(f'{s:.1f}' for s in seconds[args.processes])})")
    print(f"  speedup {speedup:.2f}x, efficiency {speedup / args.processes:.2f}; tables equal row for row: {same}")
    if args.json:
        args.json.write_text(json.dumps({
            "processes": args.processes, "device": args.device, "answers": len(tables[1]),
            "seconds": {str(k): v for k, v in seconds.items()}, "speedup": speedup,
            "efficiency": speedup / args.processes, "tables_equal": same, "settings": vars(args) | {"json": None},
            "cpu": cpu_model(), "cores": os.cpu_count()}, indent=2) + "\n")
    return 0 if same else 1


def write_questions(run, per_video: int) -> None:
    writer = ArtifactWriter(run.artifact("questions", 1), params={}, inputs={})
    for sampled in run.artifact("samples").read():
        writer.add_item(sampled.video_id, [
            Question(f"{sampled.video_id}-{i}", sampled.video_id, "what", f"What happens in the video? ({i})",
                     "json", "ask/1", "bench") for i in range(per_video)])
    writer.finish()


def launcher(processes: int) -> list[str]:
    return [str(Path(sys.executable).with_name("savi"))] if processes == 1 else accelerate_command(processes)


if __name__ == "__main__":
    sys.exit(main())
