"""`savi export pairs`: a round's kept pairs as a dataset other tools can train on.

- `trl`: a Hugging Face dataset (`save_to_disk`) in trl's conversational preference form: `prompt` (the user turn
  the answers were sampled from, with a video part), `chosen` and `rejected` (assistant turns), plus `video` (the
  paths of the sampled frames, in order), `frame_timestamps`, `video_id` and the CLIP scores. Load it with
  `datasets.load_from_disk`.
- `jsonl`: the same fields, one JSON object per line.

An export replaces only what savi wrote: an earlier export (a trl folder carries `savi_export.json`; a jsonl file
starts with a pair), an empty folder, or nothing. Any other `--out` is refused, never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.core.errors import SaviError
from stages.core.model import preference_row
from stages.core.store import Run, atomic_dir, atomic_path, check_output_folder, write_json

FORMATS = ("trl", "jsonl")
MARKER = "savi_export.json"  # in every trl export folder: what it holds, and that savi may replace it


def export_pairs(run: Run, round: int, fmt: str, out: Path | None = None) -> Path:
    if fmt not in FORMATS:
        raise SaviError(f"unknown --format {fmt!r}: use trl or jsonl")
    pairs_art = run.require("pairs", round)
    out = out or run.round_dir(round) / "export" / ("pairs" if fmt == "trl" else "pairs.jsonl")
    _check_replaceable(out, fmt)
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    rows = [_row(run, p, samples[p.video_id]) for p in pairs_art.read() if p.kept]
    if fmt == "jsonl":
        with atomic_path(out) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return out
    from datasets import Dataset

    with atomic_dir(out) as tmp:
        Dataset.from_list(rows).save_to_disk(str(tmp))
        write_json(tmp / MARKER, {"run": run.name, "round": round, "pairs": len(rows)})
    return out


def _check_replaceable(out: Path, fmt: str) -> None:
    """Refuse an `--out` that holds something savi did not write."""
    if fmt == "jsonl":
        if out.is_dir():
            raise SaviError(f"--out {out} is a folder; the jsonl format writes one file, e.g. {out / 'pairs.jsonl'}")
        if out.exists() and not _is_jsonl_export(out):
            raise SaviError(f"--out {out} exists and is not an earlier savi export; savi does not overwrite "
                            "files it did not write: choose another --out")
        return
    check_output_folder(out, (MARKER,), "a trl export")


def _is_jsonl_export(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    if not first.strip():
        return path.stat().st_size == 0  # an empty export: no kept pairs
    try:
        return {"prompt", "chosen", "rejected", "pair_id"} <= set(json.loads(first))
    except (ValueError, TypeError):
        return False


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
