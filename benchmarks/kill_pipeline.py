"""Kill the demo pipeline with SIGKILL (or interrupt it with SIGINT, as Ctrl-C does) again and again, rerun it
each time, and prove nothing was lost.

Run from the repository root:

    .venv/bin/python benchmarks/kill_pipeline.py --kills-per-stage 2 --seed 0
    .venv/bin/python benchmarks/kill_pipeline.py --kills-per-stage 1 --signal int   # Ctrl-C in every stage

`savi demo` runs the whole job: sampling, then two rounds of ask, answer, critique, filter, 4-bit DPO and eval.
This script builds the demo's inputs once (videos, benchmark, tiny model, tiny CLIP) and copies them into two
folders. In one, the demo runs uninterrupted. In the other it is started, killed with SIGKILL at a random moment
inside a chosen stage (a random delay after the demo announces the stage, no longer than the stage took in the
uninterrupted run), and started again, stage after stage
and round after round, until every stage has been hit `--kills-per-stage` times; then it runs to the end.

Then, for every table of both runs (samples; per round questions, answers, critiques, candidates, pairs and the
training log; every eval table):
- every key is present exactly once (nothing duplicated);
- the keys and the rows equal the uninterrupted run's (nothing lost, nothing changed), the model path aside;
- the manifests' counts are equal, and no unfinished part, temporary file or lock holder is left behind.

With `--signal int`, each interrupted demo must also exit with status 130 after saying, on one line, that
finished items are saved (Ctrl-C's way out), and the report counts those exits.

It prints one JSON report (kills, stages hit, rows checked), and exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.core.store import Run, open_run  # noqa: E402

SAVI = [sys.executable, "-c", "from savi_cli.main import app; app()"]
ASSETS = ("videos", "benchmark", "model", "clip")


def stage_lines(rounds: tuple[int, ...] = (1, 2)) -> list[str]:
    """The announcements the demo prints before each stage, in order."""
    lines = ["sampling "]
    for r in rounds:
        lines += [f"round {r}: {s}" for s in ("ask", "answer", "critique", "filter", "dpo")]
        lines += [f"eval egoschema: round {k}" for k in sorted({0, r - 1, r})]
    return lines


def build_inputs(folder: Path) -> None:
    """The demo's inputs, made by the demo itself: run it once with nothing to do after building them."""
    from stages.offline import videos as synthetic
    from stages.offline.benchmark_files import write_egoschema_demo
    from stages.offline.tiny_clip import build_tiny_clip
    from stages.offline.tiny_model import build_tiny_model

    synthetic.write_example_set(folder / "videos")
    write_egoschema_demo(folder / "benchmark", questions=20)
    build_tiny_model(folder / "model")
    build_tiny_clip(folder / "clip")


def start_demo(folder: Path) -> tuple[subprocess.Popen, list[tuple[float, str]]]:
    """Start `savi demo`; its stderr lines are collected, with their arrival times, as they arrive."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(SAVI + ["demo", "--dir", str(folder)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def kill_in_stage(folder: Path, announcement: str, delay: float,
                  sig: signal.Signals = signal.SIGKILL) -> tuple[str, int, list[str]] | None:
    """Start the demo, wait for `announcement`, send `sig` `delay` seconds later. Returns the stage it was last in
    when killed, its exit status and its last lines, or None if it finished (or failed) first."""
    proc, lines = start_demo(folder)
    while proc.poll() is None and not any(line.startswith(announcement) for _, line in lines):
        time.sleep(0.005)
    if proc.poll() is not None:
        return None
    time.sleep(delay)
    if proc.poll() is not None:
        return None
    proc.send_signal(sig)
    status = proc.wait()
    time.sleep(0.05)  # let the reader thread take the last lines
    announced = [a.strip() for _, line in lines for a in stage_lines() if line.startswith(a)]
    return (announced[-1], status, [line for _, line in lines[-3:]]) if announced else None


def run_to_end(folder: Path) -> dict[str, float]:
    """Run the demo uninterrupted; returns how long each stage took, by its announcement."""
    proc, lines = start_demo(folder)
    if proc.wait() != 0:
        raise SystemExit(f"the demo failed in {folder}:\n" + "\n".join(line for _, line in lines[-20:]))
    time.sleep(0.05)
    marks = [(t, a) for t, line in lines for a in stage_lines() if line.startswith(a)]
    ends = [t for t, _ in marks[1:]] + [lines[-1][0]]
    durations: dict[str, float] = {}
    for (t, a), end in zip(marks, ends):
        durations.setdefault(a, end - t)  # round 2 announces round 0's eval again; the first one did the work
    return durations


def tables(run: Run) -> dict[str, object]:
    found = {"samples": run.artifact("samples")}
    for r in [r for r in run.rounds() if r > 0]:  # round 0 (the base model) has only evals
        for name in ("questions", "answers", "critiques", "candidates", "pairs", "train_log"):
            found[f"round={r}/{name}"] = run.artifact(name, r)
    for art in run.artifacts("evals"):
        found[f"{art.path.parent.parent.name}/eval/{art.name}"] = art
    return found


def compare(clean: Run, killed: Run) -> tuple[int, list[str]]:
    """Rows checked, and every difference found."""
    problems, rows_checked = [], 0
    clean_tables, killed_tables = tables(clean), tables(killed)
    if set(clean_tables) != set(killed_tables):
        problems.append(f"tables differ: {sorted(set(clean_tables) ^ set(killed_tables))}")
    for name in sorted(set(clean_tables) & set(killed_tables)):
        a, b = clean_tables[name], killed_tables[name]
        if not (a.complete and b.complete):
            problems.append(f"{name}: not finished (clean {a.complete}, killed {b.complete})")
            continue
        key = a.spec.key
        drop = [c for c in ("model", "path", "frames_dir", "mtime_ns") if c in a.read_table().column_names]
        rows_a = a.read_table().drop_columns(drop).to_pylist()
        rows_b = b.read_table().drop_columns(drop).to_pylist()
        keys_b = [row[key] for row in rows_b]
        duplicated = [k for k, n in Counter(keys_b).items() if n > 1]
        if duplicated:
            problems.append(f"{name}: {len(duplicated)} keys duplicated, e.g. {duplicated[0]}")
        if rows_a != rows_b:
            missing = {r[key] for r in rows_a} - set(keys_b)
            problems.append(f"{name}: rows differ ({len(missing)} missing of {len(rows_a)})")
        if a.manifest()["counts"] != b.manifest()["counts"]:
            problems.append(f"{name}: counts differ: {a.manifest()['counts']} vs {b.manifest()['counts']}")
        rows_checked += len(rows_b)
    leftovers = [p for p in killed.path.rglob("*") if ".parts" in p.name or ".tmp-" in p.name]
    if leftovers:
        problems.append(f"left behind: {[str(p.relative_to(killed.path)) for p in leftovers[:5]]}")
    clean_frames = sorted(p.name for p in clean.frames_dir.iterdir())
    if sorted(p.name for p in killed.frames_dir.iterdir()) != clean_frames:
        problems.append("frame folders differ")
    return rows_checked, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills-per-stage", type=int, default=2,
                        help="SIGKILLs inside each stage of each round (each is followed by a rerun)")
    parser.add_argument("--max-delay", type=float, default=10.0,
                        help="a kill comes at most this many seconds after its stage starts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--signal", choices=("kill", "int"), default="kill",
                        help="SIGKILL (no chance to clean up), or SIGINT (Ctrl-C: must exit 130, saying so)")
    args = parser.parse_args()
    sig = signal.SIGKILL if args.signal == "kill" else signal.SIGINT

    work = args.dir or Path(tempfile.mkdtemp(prefix="savi-kill-"))
    rng = random.Random(args.seed)
    started = time.monotonic()
    try:
        inputs = work / "inputs"
        if not (inputs / "model" / "config.json").is_file():
            build_inputs(inputs)
        for name in ("clean", "killed"):
            shutil.rmtree(work / name, ignore_errors=True)
            for asset in ASSETS:
                shutil.copytree(inputs / asset, work / name / asset)

        durations = run_to_end(work / "clean")
        kills: list[str] = []
        interrupted_badly: list[str] = []
        for announcement in stage_lines():
            for _ in range(args.kills_per_stage):
                # A random moment inside the stage, as long as it took in the uninterrupted run.
                delay = rng.uniform(0.0, min(args.max_delay, durations.get(announcement, args.max_delay)))
                killed = kill_in_stage(work / "killed", announcement, delay, sig)
                if killed is None:
                    continue
                stage, status, last = killed
                kills.append(stage)
                if sig == signal.SIGINT and (status != 130 or not any(line.startswith("Interrupted:")
                                                                      for line in last)):
                    interrupted_badly.append(f"{stage}: exit {status}, last lines {last}")
        run_to_end(work / "killed")

        clean = open_run("demo", work / "clean" / "runs")
        killed = open_run("demo", work / "killed" / "runs")
        rows_checked, problems = compare(clean, killed)
        problems += [f"SIGINT in {bad}" for bad in interrupted_badly]
        report = {
            "signal": sig.name,
            "kills": len(kills),
            "stages_hit": dict(Counter(kills)),
            "tables_checked": len(tables(killed)),
            "rows_checked": rows_checked,
            "problems": problems,
            "seconds": round(time.monotonic() - started, 1),
        }
        print(json.dumps(report, indent=2))
        return 1 if problems else 0
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
