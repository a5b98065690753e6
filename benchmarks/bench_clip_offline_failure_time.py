"""Seconds until `ClipScorer.load` gives up on CLIP weights that are not on the machine and cannot be downloaded.

Run from the repository root (CPU; nothing is downloaded):

    .venv/bin/python benchmarks/bench_clip_offline_failure_time.py

Options: ``--repeats 3``; ``--ceiling 10`` (seconds; the script exits 1 if any attempt took longer);
``--json /tmp/savi-bench-clip-offline.json``.

What it measures
----------------
Without a network, huggingface_hub retries for minutes before it gives up; savi probes the hub once, with a short
timeout, and stops at once with what to do (`stages.core.hub`). This times that, for pretrained tags of ViT-B-32
whose weights are in no cache (the Hugging Face cache and ~/.cache point at empty temporary folders), in four
situations:

* ``declared-offline``: HF_HUB_OFFLINE=1 (weights ``openai``); savi must not even probe.
* ``unreachable``: not declared, and every connection fails at once (``laion2b_s34b_b79k``), as on a machine
  without a route out.
* ``silent``: not declared, and every connection hangs until its timeout (``laion2b_s34b_b79k``), as behind a
  firewall that drops packets: the worst case, bounded by the probe's timeout.
* ``this-machine``: not declared, and the machine's own network as it is. Skipped when the hub is reachable (the
  weights would then be downloaded).

The figures are this machine's, which is why they are a benchmark and not a test: `tests/test_clip.py` checks what
the error says and that the network is probed once (or not at all), not how long it took. Each attempt runs in the
same process, after one untimed warm-up that imports open_clip and torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Empty caches, before huggingface_hub reads where they are.
SCRATCH = Path(tempfile.mkdtemp(prefix="savi-bench-clip-offline-"))
os.environ["HF_HOME"] = str(SCRATCH / "hf")
os.environ["HF_HUB_CACHE"] = str(SCRATCH / "hf" / "hub")
os.environ["HOME"] = str(SCRATCH / "home")
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("TRANSFORMERS_OFFLINE", None)

from machine import cpu_model  # noqa: E402

from stages.core import hub  # noqa: E402
from stages.core.clip import ClipConfig, ClipScorer  # noqa: E402
from stages.core.errors import SaviError  # noqa: E402

REAL_CONNECT = socket.create_connection


def unreachable(address, timeout=None, *args, **kwargs):
    raise OSError("network is unreachable")


def silent(address, timeout=None, *args, **kwargs):
    time.sleep(timeout if timeout is not None else 60)
    raise TimeoutError("timed out")


SITUATIONS = {
    "declared-offline": ("openai", {"HF_HUB_OFFLINE": "1"}, REAL_CONNECT),
    "unreachable": ("laion2b_s34b_b79k", {}, unreachable),
    "silent": ("laion2b_s34b_b79k", {}, silent),
    "this-machine": ("laion2b_s34b_b79k", {}, REAL_CONNECT),
}


def attempt(weights: str, env: dict[str, str], connect) -> tuple[float, str]:
    """Seconds until ClipScorer.load raised, and the first words of its message."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    socket.create_connection = connect
    try:
        start = time.monotonic()
        try:
            ClipScorer.load(ClipConfig(model="ViT-B-32", weights=weights, device="cpu"))
        except SaviError as error:
            return time.monotonic() - start, str(error)[:80]
        raise SystemExit(f"ClipScorer.load({weights!r}) succeeded: the weights are on this machine after all")
    finally:
        socket.create_connection = REAL_CONNECT
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ceiling", type=float, default=10.0, help="seconds; exit 1 if any attempt took longer")
    parser.add_argument("--json", type=Path, help="write the raw timings here")
    args = parser.parse_args()

    attempt("openai", {"HF_HUB_OFFLINE": "1"}, REAL_CONNECT)  # warm-up: imports open_clip and torch
    host = hub.hub_host()
    results = {}
    for name, (weights, env, connect) in SITUATIONS.items():
        if name == "this-machine" and host is not None and hub.reachable(host):
            results[name] = {"skipped": f"{host[0]} is reachable: the weights would be downloaded"}
            continue
        runs = [attempt(weights, env, connect) for _ in range(args.repeats)]
        seconds = [round(s, 3) for s, _ in runs]
        results[name] = {"seconds": seconds, "median_s": statistics.median(seconds), "max_s": max(seconds),
                         "message": runs[0][1]}

    print(f"{'situation':<18} {'median s':>9} {'max s':>7}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<18} skipped: {r['skipped']}")
        else:
            print(f"{name:<18} {r['median_s']:>9.3f} {r['max_s']:>7.3f}")
    over = [name for name, r in results.items() if r.get("max_s", 0) > args.ceiling]
    print(f"ceiling {args.ceiling:g} s: " + (f"exceeded by {', '.join(over)}" if over else "kept"))
    if args.json:
        args.json.write_text(json.dumps({
            "when": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu_model(),
            "python": platform.python_version(), "probe_seconds": hub.PROBE_SECONDS, "ceiling_s": args.ceiling,
            "results": results}, indent=2))
    return 1 if over else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
