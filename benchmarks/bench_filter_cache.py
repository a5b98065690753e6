"""Throughput of the CLIP filter with the run's frame-embedding cache, against re-embedding frames for every pair.

Run from the repository root (CPU; no weights needed, since timing does not depend on what the weights are):

    .venv/bin/python benchmarks/bench_filter_cache.py --clip-model tiny --clip-model ViT-B-32 --clip-weights random

The default, with no ``--clip-model``, is the tiny CLIP alone (seconds). Options: ``--videos 20 --frames 32
--pairs 6 --repeats 2``; ``--json /tmp/savi-bench-filter-cache.json``; ``--data /tmp/savi-bench-filter-data``.

What it measures
----------------
``--videos`` synthetic clips (640x360, 48 frames) are written with savi's synthetic-video writer (cached in
``--data``) and sampled into a scratch workspace with ``stages.sample.run`` at ``--frames`` frames each (JPEGs, longer
side 448, savi's defaults). Each video gets ``--pairs`` preference pairs, i.e. 2 x pairs texts, made from a fixed bank
of answer-like sentences: 1, 2, 4 or 7 sentences each, so some texts exceed CLIP's 77 tokens and are split into
sentences. Filtering a pair means scoring its chosen and rejected text against the video's frames with
``ClipScorer`` (frame embeddings, text embeddings of both texts, pooled cosine), exactly what the filter does.

Per CLIP model, three ways of filtering every pair of every video:

* ``naive``: for each pair, load the video's JPEGs and embed all frames again (``load_frames`` +
  ``ClipScorer.encode_frames``). What a filter without a cache does.
* ``cold``: the cache folder ``<run>/clip/<key>/`` is deleted first; ``ClipScorer.frame_embeddings`` embeds each
  video once (first pair) and every later pair reads the ``.npy``. What the first filter of a run costs.
* ``warm``: the cache is already filled; every pair reads the ``.npy``. What every later round and every evaluation
  get.

Text embeddings are computed in all three modes alike (they differ per pair). The three modes must give the same
scores; the largest difference is printed and the script stops if it exceeds 1e-4. Configurations are interleaved
(each repeat runs model x mode in turn), so a slow spell on a shared machine hits all of them; the table shows the
median of ``--repeats`` runs, pairs per second, and the speed-up over ``naive``. Raw timings go to ``--json``.

``tiny`` is ``build_tiny_clip`` (1.6M parameters, 64-px images); ``ViT-B-32`` with ``--clip-weights random`` is the
real architecture (151M parameters, 224-px images) with seeded random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from machine import cpu_model

from stages.core.clip import ClipConfig, ClipScorer
from stages.core.store import Run, code_version, open_run
from stages.core.video import load_frames
from stages.offline import videos as synthetic
from stages.offline.tiny_clip import build_tiny_clip

VIDEO_SIZE = (640, 360)
VIDEO_FRAMES = 48
MODES = ("naive", "cold", "warm")
SENTENCE_COUNTS = (1, 2, 4, 7)
MANIFEST_NAME = "bench-manifest.json"

_SUBJECTS = ("The red square", "A blue circle", "The green square", "A small yellow shape", "The object",
             "The white circle")
_ACTIONS = ("moves from the left edge toward the right side of the frame",
            "drifts slowly downward without touching anything else",
            "stays in the centre of the picture for most of the clip",
            "speeds up halfway through and leaves the frame on the right",
            "turns around near the edge and comes back toward the middle",
            "passes in front of the dark grey background at a steady speed")
_TAILS = ("while the camera stays completely still.", "and nothing else in the scene changes.",
          "before the video ends.", "as the background remains dark grey.", "in the last few frames.",
          "at a constant, gentle speed.")


def make_texts(video_index: int, pairs: int) -> list[tuple[str, str]]:
    """Deterministic (chosen, rejected) texts of 1, 2, 4 or 7 sentences."""
    rng = random.Random(video_index)

    def text() -> str:
        n = rng.choice(SENTENCE_COUNTS)
        return " ".join(f"{rng.choice(_SUBJECTS)} {rng.choice(_ACTIONS)} {rng.choice(_TAILS)}" for _ in range(n))

    return [(text(), text()) for _ in range(pairs)]


# ---------------------------------------------------------------------------------------------------------------
# Data


def ensure_videos(data: Path, videos: int) -> tuple[list[Path], float | None]:
    params = {"videos": videos, "size": list(VIDEO_SIZE), "frames": VIDEO_FRAMES}
    paths = [data / f"video_{i:03d}.mp4" for i in range(videos)]
    manifest = data / MANIFEST_NAME
    if manifest.is_file() and json.loads(manifest.read_text()).get("params") == params \
            and all(p.is_file() for p in paths):
        return paths, None
    manifest.unlink(missing_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    shapes = [synthetic.Shape(kind, color, direction) for kind in ("square", "circle")
              for color in ("red", "green", "blue") for direction in ("left_to_right", "top_to_bottom")]
    for i, path in enumerate(paths):
        partial = path.with_name(f".{path.stem}.partial{path.suffix}")
        synthetic.write_video(partial, num_frames=VIDEO_FRAMES, fps=12, size=VIDEO_SIZE, seed=i,
                              shapes=(shapes[i % len(shapes)],))
        partial.replace(path)
    elapsed = time.perf_counter() - start
    manifest.write_text(json.dumps({"params": params, "generation_s": round(elapsed, 3)}, indent=2))
    return paths, elapsed


def sample_videos(workspace: Path, data: Path, frames: int) -> tuple[Run, list, float]:
    from stages import sample

    run = open_run("bench", workspace)
    start = time.perf_counter()
    sample.run(run, [data], sample.SampleConfig(frames=frames, workers=os.cpu_count() or 1))
    elapsed = time.perf_counter() - start
    rows = run.artifact("samples").read()
    bad = [r for r in rows if r.status != "ok" or len(r.frame_indices) != frames]
    if bad:
        raise SystemExit(f"{len(bad)} videos were not sampled at {frames} frames: {bad[0]}")
    return run, rows, elapsed


# ---------------------------------------------------------------------------------------------------------------
# The filter, three ways


def filter_pairs(scorer: ClipScorer, run: Run, rows: list, texts: dict[str, list[tuple[str, str]]],
                 mode: str) -> tuple[float, list[float]]:
    """Score every pair of every video; return (wall seconds, scores in order)."""
    if mode == "cold":
        shutil.rmtree(scorer.cache_dir(run), ignore_errors=True)
    scores: list[float] = []
    start = time.perf_counter()
    for row in rows:
        for chosen, rejected in texts[row.video_id]:
            if mode == "naive":
                frames = scorer.encode_frames(load_frames(run.path / row.frames_dir))
            else:
                frames = scorer.frame_embeddings(run, row)
            scores.extend(scorer.score(frames, t) for t in scorer.text_embeddings([chosen, rejected]))
    return time.perf_counter() - start, scores


def load_scorers(models: list[str], weights: str, scratch: Path) -> dict[str, ClipScorer]:
    scorers = {}
    for name in models:
        if name == "tiny":
            cfg = ClipConfig(model=f"local-dir:{build_tiny_clip(scratch / 'tiny-clip')}", device="cpu")
        else:
            cfg = ClipConfig(model=name, weights=weights, device="cpu")
        start = time.perf_counter()
        scorers[name] = ClipScorer.load(cfg)
        params = sum(p.numel() for p in scorers[name].model.parameters())
        print(f"loaded {name} ({params / 1e6:.1f}M parameters, key {scorers[name].key}) "
              f"in {time.perf_counter() - start:.1f} s", flush=True)
    return scorers


# ---------------------------------------------------------------------------------------------------------------
# Reporting


def summarize(timings: list[dict], pairs: int) -> list[dict]:
    rows = []
    for model in dict.fromkeys(t["model"] for t in timings):
        walls = {mode: statistics.median(t["wall_s"] for t in timings if t["model"] == model and t["mode"] == mode)
                 for mode in MODES}
        for mode in MODES:
            rows.append({"model": model, "mode": mode, "pairs": pairs, "wall_s": walls[mode],
                         "pairs_per_s": pairs / walls[mode], "speedup_vs_naive": walls["naive"] / walls[mode],
                         "runs": [round(t["wall_s"], 3) for t in timings
                                  if t["model"] == model and t["mode"] == mode]})
    return rows


def markdown_table(rows: list[dict], params: dict[str, float]) -> str:
    lines = ["| CLIP | frame embeddings | pairs | wall s (median) | pairs/s | vs naive |",
             "|---|---|---:|---:|---:|---:|"]
    label = {"naive": "naive: re-embedded per pair", "cold": "cache, cold (first filter of a run)",
             "warm": "cache, warm (later rounds, evals)"}
    for r in rows:
        lines.append(f"| {r['model']} ({params[r['model']]:.1f}M) | {label[r['mode']]} | {r['pairs']} | "
                     f"{r['wall_s']:.2f} | {_rate(r['pairs_per_s'])} | {r['speedup_vs_naive']:.1f}x |")
    return "\n".join(lines)


def _rate(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.3f}" if value < 1 else f"{value:.2f}"




def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-model", action="append", dest="models",
                        help="'tiny' (build_tiny_clip) or an open_clip model name; repeat to compare several "
                             "(default: tiny)")
    parser.add_argument("--clip-weights", default="random",
                        help="weights for named models (default random: timing needs no real weights)")
    parser.add_argument("--videos", type=int, default=20, help="videos (default 20)")
    parser.add_argument("--frames", type=int, default=32, help="sampled frames per video (default 32)")
    parser.add_argument("--pairs", type=int, default=6, help="preference pairs per video (default 6)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration; the median is shown")
    parser.add_argument("--data", type=Path, default=Path("/tmp/savi-bench-filter-data"),
                        help="folder for the generated videos, reused when the parameters match")
    parser.add_argument("--json", type=Path, default=Path("/tmp/savi-bench-filter-cache.json"),
                        help="where to write the raw timings")
    args = parser.parse_args()
    args.models = args.models or ["tiny"]
    if min(args.videos, args.frames, args.pairs, args.repeats) < 1:
        parser.error("--videos, --frames, --pairs and --repeats must be positive")
    if args.frames > VIDEO_FRAMES:
        parser.error(f"--frames must be at most {VIDEO_FRAMES} (the generated videos' length)")
    return args


def main() -> None:
    import torch

    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="savi-bench-filter-"))
    try:
        data = args.data.resolve()
        paths, generation_s = ensure_videos(data, args.videos)
        print(f"videos: {len(paths)} x {VIDEO_FRAMES} frames at {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} in {data} "
              f"({'reused' if generation_s is None else f'generated in {generation_s:.1f} s'})", flush=True)
        run, rows, sample_s = sample_videos(scratch / "runs", data, args.frames)
        print(f"sampled {len(rows)} videos x {args.frames} frames in {sample_s:.1f} s", flush=True)
        texts = {row.video_id: make_texts(i, args.pairs) for i, row in enumerate(rows)}
        pairs = len(rows) * args.pairs

        scorers = load_scorers(args.models, args.clip_weights, scratch)
        params = {name: sum(p.numel() for p in s.model.parameters()) / 1e6 for name, s in scorers.items()}
        segments = [len(s) for s in next(iter(scorers.values())).text_embeddings(
            [t for pair in texts[rows[0].video_id] for t in pair])]
        print(f"{pairs} pairs; segments per text for the first video: {segments}; torch threads "
              f"{torch.get_num_threads()}", flush=True)
        for name, scorer in scorers.items():  # fill the cache once, untimed, so that `warm` is warm in repeat 1
            fill = time.perf_counter()
            for row in rows:
                scorer.frame_embeddings(run, row)
            print(f"  {name}: cache filled in {time.perf_counter() - fill:.1f} s", flush=True)

        timings: list[dict] = []
        reference: dict[str, list[float]] = {}
        max_diff = 0.0
        for repeat in range(args.repeats):
            for name, scorer in scorers.items():
                for mode in MODES:
                    wall, scores = filter_pairs(scorer, run, rows, texts, mode)
                    if name in reference:
                        max_diff = max(max_diff, float(np.max(np.abs(np.subtract(scores, reference[name])))))
                    else:
                        reference[name] = scores
                    timings.append({"model": name, "mode": mode, "repeat": repeat, "wall_s": wall})
                    print(f"  repeat {repeat + 1}/{args.repeats}  {name:10s} {mode:5s} {wall:8.2f} s  "
                          f"{_rate(pairs / wall):>8s} pairs/s", flush=True)
        if max_diff > 1e-4:
            raise SystemExit(f"the modes disagree on scores by up to {max_diff:.2e}; timings would be meaningless")

        summary = summarize(timings, pairs)
        cache_bytes = {name: sum(p.stat().st_size for p in s.cache_dir(run).glob("*.npy"))
                       for name, s in scorers.items()}
        print()
        print(markdown_table(summary, params))
        print()
        print(f"- scores agree across modes (max abs difference {max_diff:.1e})")
        for name in scorers:
            print(f"- {name}: cache {cache_bytes[name] / len(rows) / 1024:.1f} KiB per video")
        total_s = time.perf_counter() - started
        print(f"- total {total_s:.0f} s")

        report = {
            "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([sys.executable, *sys.argv]),
            "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "python": platform.python_version(), "torch": torch.__version__},
            "savi_version": code_version(),  # the editable install runs the working tree
            "videos": {"count": len(rows), "size": list(VIDEO_SIZE), "frames_sampled": args.frames,
                       "generation_s": generation_s, "sample_s": sample_s},
            "pairs_per_video": args.pairs, "pairs": pairs,
            "models": {name: {"key": s.key, "params_m": params[name], "cache_bytes": cache_bytes[name],
                              "config": {"model": s.cfg.model, "weights": s.cfg.weights}}
                       for name, s in scorers.items()},
            "timings": timings, "summary": summary, "max_score_diff": max_diff, "total_s": total_s,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nraw timings: {args.json}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
