"""Throughput of `savi sample` against a naive "decode every frame with PyAV" baseline, on generated 720p clips.

Run from the repository root:

    .venv/bin/python benchmarks/bench_sample.py --clips 20 --seconds 60 --fps 24 --repeats 2

What it measures
----------------
Both methods turn a folder of 1280x720 H.264 clips into the same output: 32 frames per clip at uniform segment
midpoints, resized so the longer side is 448 px, saved as JPEG (quality 90).

* ``savi``: the real CLI, ``savi sample DATA --run bench-W --frames 32 --workers W --workspace TMP``, run as a
  subprocess with a fresh workspace each time, exactly as a user runs it. The wall-clock time includes Python
  start-up, hashing the files for their content ids, spawning the worker processes and writing the parquet table.
  Output frames are counted from that table with ``savi query``, not assumed.
* ``baseline``: for each clip, decode every frame with PyAV, convert each to an RGB array, keep the 32 wanted
  ones, resize them with PIL and save JPEGs. With W > 1 workers a spawn-context ``multiprocessing.Pool`` maps over
  the clips (spawn, as savi's workers use, so both pay the same process start-up).

Each is run with 1 worker and with N = os.cpu_count() workers. The four configurations are interleaved
(savi-1, baseline-1, savi-N, baseline-N, then again) so that noise from anything else on the machine hits all of
them alike, and the median of ``--repeats`` runs is reported. A markdown table goes to stdout and the raw timings
to ``--json``.

The clips are written with savi's own synthetic-video writer and cached in ``--data``; a later run with the same
parameters reuses them. Generation is slow at 720p (tens of milliseconds per frame, mostly drawing the frames in
numpy), so it is spread over all cores and timed separately.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import av
from machine import cpu_model
from PIL import Image

from stages.core.store import code_version
from stages.offline import videos as synthetic

# The output both methods must produce. These mirror savi's defaults (--frames 32, --max-side 448, JPEG quality 90)
# and are written out here rather than imported, because the benchmark treats savi as a black box run by its CLI.
FRAMES_PER_CLIP = 32
MAX_SIDE = 448
JPEG_QUALITY = 90
CLIP_SIZE = (1280, 720)
MANIFEST_NAME = "bench-manifest.json"


# ---------------------------------------------------------------------------------------------------------------
# Test data: generated once, reused while the parameters match


def clip_path(data: Path, index: int) -> Path:
    return data / f"clip_{index:03d}.mp4"


def _write_one_clip(job: tuple[str, int, int, float]) -> None:
    path, num_frames, seed, fps = job
    # Write under a temporary name and rename, so an interrupted generation never leaves a short clip that a
    # later run would mistake for a finished one.
    final = Path(path)
    partial = final.with_name(f".{final.stem}.partial{final.suffix}")
    synthetic.write_video(partial, num_frames=num_frames, fps=fps, size=CLIP_SIZE, seed=seed)
    partial.replace(final)


def ensure_clips(data: Path, clips: int, seconds: float, fps: float) -> tuple[list[Path], float | None]:
    """The clip paths, generating them unless ``data`` already holds clips made with these parameters.

    Returns the paths and the generation time in seconds (None when the cached clips were reused).
    """
    params = {"clips": clips, "seconds": seconds, "fps": fps, "size": list(CLIP_SIZE)}
    paths = [clip_path(data, i) for i in range(clips)]
    manifest = data / MANIFEST_NAME
    if manifest.is_file() and json.loads(manifest.read_text()).get("params") == params \
            and all(p.is_file() for p in paths):
        return paths, None

    # Remove only what this script writes: --data might point at a folder that also holds something else.
    manifest.unlink(missing_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    for stale in list(data.glob("clip_*.mp4")) + list(data.glob(".clip_*.partial.mp4")):
        stale.unlink()

    num_frames = round(seconds * fps)
    jobs = [(str(p), num_frames, i, fps) for i, p in enumerate(paths)]
    start = time.perf_counter()
    # Drawing and encoding a 720p frame is single-threaded enough that one process per core roughly divides the
    # generation time by the core count.
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        pool.map(_write_one_clip, jobs, chunksize=1)
    elapsed = time.perf_counter() - start
    # The manifest is written last: its presence means every clip finished.
    manifest.write_text(json.dumps({"params": params, "generation_s": round(elapsed, 3)}, indent=2))
    return paths, elapsed


def warm_page_cache(paths: list[Path]) -> None:
    # Read every clip once so that the first timed run does not pay for disk reads that later runs get for free.
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


# ---------------------------------------------------------------------------------------------------------------
# The two methods. Each returns the frames it wrote and the frames it decoded (None when it cannot tell).


@dataclass
class Timing:
    method: str
    workers: int
    repeat: int
    wall_s: float
    output_frames: int
    decoded_frames: int | None


def savi_executable() -> str:
    # The `savi` script installed next to this interpreter is the one a user of this virtualenv would run.
    beside = Path(sys.executable).parent / "savi"
    found = str(beside) if beside.is_file() else shutil.which("savi")
    if not found:
        raise SystemExit("cannot find the `savi` command; run this with the virtualenv's python")
    return found


def run_savi(savi: str, data: Path, workers: int) -> tuple[float, int]:
    """Time one `savi sample` run in a fresh workspace; return (wall seconds, frames in the samples table)."""
    workspace = Path(tempfile.mkdtemp(prefix="savi-bench-ws-"))
    try:
        command = [savi, "sample", str(data), "--run", f"bench-{workers}", "--frames", str(FRAMES_PER_CLIP),
                   "--max-side", str(MAX_SIDE), "--workers", str(workers), "--workspace", str(workspace)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"savi sample failed ({done.returncode}):\n{done.stderr}")
        # A fast run that silently skipped videos would look like a win, so count what was actually written.
        query = subprocess.run(
            [savi, "query", "select count(*) filter (where status <> 'ok') as errors, "
                            "sum(len(frame_indices)) as frames from samples",
             "--workspace", str(workspace), "--format", "json"],
            capture_output=True, text=True, check=True)
        result = json.loads(query.stdout)[0]
        if result["errors"]:
            raise SystemExit(f"savi sample reported {result['errors']} error rows; timings would be meaningless")
        return wall, int(result["frames"])
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def baseline_one_clip(job: tuple[str, str]) -> tuple[int, int]:
    """Decode every frame of one clip, keep 32 at segment midpoints, resize and save. Returns (saved, decoded)."""
    path, out_dir = job
    out = Path(out_dir)
    out.mkdir(parents=True)
    saved = decoded = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        total = stream.frames  # the frame count from the container header; our mp4s always carry it
        if total <= 0:
            raise ValueError(f"{path}: the container does not say how many frames it has")
        # The same choice savi makes: frame k is the middle of the k-th of 32 equal segments.
        wanted = {int((k + 0.5) * total / FRAMES_PER_CLIP) for k in range(FRAMES_PER_CLIP)}
        for index, frame in enumerate(container.decode(video=0)):
            # The naive pattern converts every frame to an array and picks afterwards; that conversion is part of
            # the cost being measured.
            rgb = frame.to_ndarray(format="rgb24")
            decoded += 1
            if index not in wanted:
                continue
            image = Image.fromarray(rgb)
            scale = MAX_SIDE / max(image.size)
            if scale < 1:
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
            image.save(out / f"{saved:04d}.jpg", quality=JPEG_QUALITY)
            saved += 1
    return saved, decoded


def run_baseline(paths: list[Path], workers: int) -> tuple[float, int, int]:
    """Time the baseline over every clip; return (wall seconds, frames saved, frames decoded)."""
    out_root = Path(tempfile.mkdtemp(prefix="savi-bench-baseline-"))
    try:
        jobs = [(str(p), str(out_root / p.stem)) for p in paths]
        start = time.perf_counter()
        if workers == 1:
            results = [baseline_one_clip(job) for job in jobs]
        else:
            # The pool is created inside the timed region: starting workers is a cost savi pays too.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                results = pool.map(baseline_one_clip, jobs, chunksize=1)
        wall = time.perf_counter() - start
        return wall, sum(r[0] for r in results), sum(r[1] for r in results)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Reporting


def summarize(timings: list[Timing], clips: int, video_seconds: float) -> list[dict]:
    """One row per (method, workers): the median wall time and the rates derived from it."""
    rows = []
    for method, workers in dict.fromkeys((t.method, t.workers) for t in timings):
        runs = [t for t in timings if t.method == method and t.workers == workers]
        wall = statistics.median(t.wall_s for t in runs)
        decoded = runs[0].decoded_frames
        rows.append({
            "method": method,
            "workers": workers,
            "runs": len(runs),
            "wall_s": wall,
            "clips_per_s": clips / wall,
            "output_frames_per_s": runs[0].output_frames / wall,
            "decoded_frames_per_s": None if decoded is None else decoded / wall,
            "video_s_per_s": video_seconds / wall,
            "output_frames": runs[0].output_frames,
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | workers | wall s (median) | clips/s | output frames/s | decoded frames/s | video s per s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        decoded = "n/a (seeks)" if r["decoded_frames_per_s"] is None else f"{r['decoded_frames_per_s']:.0f}"
        lines.append(f"| {r['method']} | {r['workers']} | {r['wall_s']:.2f} | {r['clips_per_s']:.3f} | "
                     f"{r['output_frames_per_s']:.1f} | {decoded} | {r['video_s_per_s']:.1f} |")
    return "\n".join(lines)


def ratios(rows: list[dict], worker_counts: list[int]) -> dict[str, float]:
    wall = {(r["method"], r["workers"]): r["wall_s"] for r in rows}
    out = {}
    # Both methods write the same frames, so a throughput ratio is simply the inverse ratio of wall times.
    for w in worker_counts:
        out[f"savi / baseline throughput, {w} worker{'s' if w > 1 else ''}"] = wall["baseline", w] / wall["savi", w]
    if len(worker_counts) > 1:
        n = worker_counts[-1]
        for method in ("savi", "baseline"):
            out[f"{method} scaling, {n} vs 1 workers"] = wall[method, 1] / wall[method, n]
    return out




# ---------------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=20, help="number of generated clips (default 20)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each clip in seconds (default 60)")
    parser.add_argument("--fps", type=float, default=24.0, help="frame rate of the clips (default 24)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/savi-bench-720p"),
                        help="folder for the generated clips, reused when the parameters match")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration; the median is shown")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="the parallel worker count N compared with 1 (default: os.cpu_count())")
    parser.add_argument("--json", type=Path, default=Path("/tmp/savi-bench-sample.json"),
                        help="where to write the raw timings")
    args = parser.parse_args()
    if args.clips < 1 or args.seconds <= 0 or args.fps <= 0 or args.repeats < 1 or args.workers < 1:
        parser.error("--clips, --seconds, --fps, --repeats and --workers must be positive")
    return args


def main() -> None:
    args = parse_args()
    data: Path = args.data.resolve()
    print(f"clips: {args.clips} x {args.seconds:g} s at {args.fps:g} fps, {CLIP_SIZE[0]}x{CLIP_SIZE[1]}, in {data}",
          flush=True)
    paths, generation_s = ensure_clips(data, args.clips, args.seconds, args.fps)
    if generation_s is None:
        print("reusing clips generated earlier with the same parameters", flush=True)
    else:
        print(f"generated {len(paths)} clips in {generation_s:.1f} s", flush=True)
    warm_page_cache(paths)

    savi = savi_executable()
    worker_counts = sorted({1, args.workers})
    # Interleaved: each repeat runs every configuration once, so slow spells on a shared machine are spread out.
    schedule = [(repeat, method, workers) for repeat in range(args.repeats)
                for workers in worker_counts for method in ("savi", "baseline")]
    timings: list[Timing] = []
    for repeat, method, workers in schedule:
        if method == "savi":
            wall, frames = run_savi(savi, data, workers)
            timing = Timing(method, workers, repeat, wall, frames, None)
        else:
            wall, frames, decoded = run_baseline(paths, workers)
            timing = Timing(method, workers, repeat, wall, frames, decoded)
        timings.append(timing)
        print(f"  repeat {repeat + 1}/{args.repeats}  {method:8s} workers={workers}  {wall:7.2f} s  "
              f"{frames} frames", flush=True)

    frame_counts = {t.output_frames for t in timings}
    if len(frame_counts) != 1:
        raise SystemExit(f"the methods wrote different numbers of frames: {sorted(frame_counts)}")

    video_seconds = args.clips * round(args.seconds * args.fps) / args.fps
    rows = summarize(timings, args.clips, video_seconds)
    ratio = ratios(rows, worker_counts)
    print()
    print(markdown_table(rows))
    print()
    for name, value in ratio.items():
        print(f"- {name}: {value:.2f}x")

    report = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "pyav": av.__version__},
        "savi_version": code_version(),  # the editable install runs the working tree
        "clips": {"count": args.clips, "seconds": args.seconds, "fps": args.fps, "size": list(CLIP_SIZE),
                  "frames_per_clip": round(args.seconds * args.fps), "folder": str(data)},
        "generation_s": generation_s,
        "output": {"frames_per_clip": FRAMES_PER_CLIP, "max_side": MAX_SIDE, "jpeg_quality": JPEG_QUALITY},
        "timings": [asdict(t) for t in timings],
        "summary": rows,
        "ratios": ratio,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nraw timings: {args.json}")


if __name__ == "__main__":
    main()
