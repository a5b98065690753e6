"""Peak memory of `savi sample` on a video of huge resolution (8000x8000), resized to a small --max-side.

Run from the repository root (CPU):

    .venv/bin/python benchmarks/bench_huge_video_peak_memory.py

Options: ``--side 8000 --frames 6 --max-side 64``; ``--workers N`` (default: one per core, so that each decode is
single-threaded and the figure does not depend on the number of cores); ``--ceiling-mib 1024`` (the script exits 1
above it); ``--json /tmp/savi-bench-huge-video-memory.json``.

What it measures
----------------
A clip of ``--frames`` frames of ``--side`` x ``--side`` pixels (flat grey with a red quarter, H.264, cheap to
encode) is written, then sampled by `savi sample` through its CLI in a child process, exactly as a user runs it. The
figure is the peak resident memory of that child and its decoding workers (``getrusage(RUSAGE_CHILDREN)`` of a
wrapper process that runs nothing else), so the benchmark's own memory is not counted.

Six 8000x8000 RGB frames alone are 1.15 GB. Only the first is ever decoded to RGB at full size (to probe the file);
the decoder scales the others as it goes. About 660 MiB were measured on a 2-core CPU machine. The figure depends on
the machine (decoder threads, allocator), which is why it is a benchmark and not a test: `tests/test_bad_inputs.py`
checks that such a video is sampled and resized correctly, not how much memory that took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402

from stages.offline.videos import write_huge  # noqa: E402

SAVI = [sys.executable, "-c", "from savi_cli.main import app; app()"]
MEASURE = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--max-side", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ceiling-mib", type=float, default=1024.0, help="exit 1 if the peak is above this")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="savi-bench-huge-video-"))
    try:
        (work / "videos").mkdir()
        write_huge(work / "videos" / "huge.mp4", side=args.side, frames=args.frames)
        cmd = SAVI + ["sample", str(work / "videos"), "--run", "huge", "--frames", str(args.frames),
                      "--max-side", str(args.max_side), "--workers", str(args.workers)]
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True,
                              env=dict(os.environ, SAVI_HOME=str(work / "runs")))
        seconds = time.monotonic() - start
        peak_kib, code = map(int, done.stdout.split())
        if code != 0:
            raise SystemExit(f"savi sample failed:\n{done.stderr}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    peak_mib = peak_kib / 1024
    full_rgb_mib = args.side * args.side * 3 * args.frames / 2**20
    print(f"{args.frames} frames of {args.side}x{args.side} -> max side {args.max_side}, {args.workers} workers: "
          f"peak {peak_mib:.0f} MiB (all frames as full-size RGB would be {full_rgb_mib:.0f} MiB), {seconds:.1f} s")
    over = peak_mib > args.ceiling_mib
    print(f"ceiling {args.ceiling_mib:.0f} MiB: " + ("exceeded" if over else "kept"))
    if args.json:
        args.json.write_text(json.dumps({
            "when": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "side": args.side, "frames": args.frames,
            "max_side": args.max_side, "workers": args.workers, "peak_mib": round(peak_mib, 1),
            "seconds": round(seconds, 2), "ceiling_mib": args.ceiling_mib}, indent=2))
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
