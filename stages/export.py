"""`savi export pairs`: a round's kept pairs as a dataset other tools can train on.

- `trl`: a Hugging Face dataset (`save_to_disk`) in trl's conversational preference form: `prompt` (a user turn
  with a video part and the question), `chosen` and `rejected` (assistant turns), plus `video` (the paths of
  the sampled frames, in order), `frame_timestamps`, `video_id` and the CLIP scores. Load it with
  `datasets.load_from_disk`.
- `jsonl`: the same fields, one JSON object per line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.core.errors import SaviError
from stages.core.model import preference_row
from stages.core.store import Run, atomic_dir, atomic_path

FORMATS = ("trl", "jsonl")


def export_pairs(run: Run, round: int, fmt: str, out: Path | None = None) -> Path:
    if fmt not in FORMATS:
        raise SaviError(f"unknown --format {fmt!r}: use trl or jsonl")
    pairs_art = run.require("pairs", round)
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    rows = [_row(run, p, samples[p.video_id]) for p in pairs_art.read() if p.kept]
    out = out or run.round_dir(round) / "export" / ("pairs" if fmt == "trl" else "pairs.jsonl")
    if fmt == "jsonl":
        with atomic_path(out) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return out
    from datasets import Dataset

    with atomic_dir(out) as tmp:
        Dataset.from_list(rows).save_to_disk(str(tmp))
    return out


def _row(run: Run, pair: Any, sample: Any) -> dict[str, Any]:
    frames = sorted((run.path / sample.frames_dir).glob("*.jpg"))
    return {
        **preference_row(pair),
        "video": [str(f.resolve()) for f in frames],
        "frame_timestamps": list(sample.timestamps_s),
        "video_id": pair.video_id,
        "pair_id": pair.pair_id,
        "chosen_clip": pair.chosen_clip,
        "rejected_clip": pair.rejected_clip,
    }
