"""NExT-QA: the GitHub release (dataset/nextqa/{val,test}.csv, and map_vid_vidorID.json for the nested
NExTVideo/ folders of the original archive) or the Hugging Face mirror lmms-lab/NExTQA (MC/ parquet).
"""

from __future__ import annotations

from pathlib import Path

from stages.benchmarks.common import (
    Benchmark,
    BenchmarkInfo,
    EvalItem,
    _answer_index,
    _first_file,
    _folder,
    _lettered,
    _load_json,
    _missing,
    _read_csv,
    _read_parquet,
    _text,
    _VideoFinder,
    _where,
)
from stages.core.errors import SaviError

INFO = BenchmarkInfo(
    "NExT-QA", ("test", "val"), "test", (),
    "https://github.com/doc-doc/NExT-QA (dataset/nextqa/{val,test}.csv, map_vid_vidorID.json) or the Hugging "
    "Face dataset lmms-lab/NExTQA (MC/)")

_NEXTQA_GROUPS = {"C": "causal", "T": "temporal", "D": "descriptive"}
_NEXTQA_FIELDS = ["video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"]


def read(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    folder = _folder(data)
    if data.is_file():
        path = data
    else:
        path = _first_file(folder, [f"{split}.csv", f"dataset/nextqa/{split}.csv", f"nextqa/{split}.csv",
                                    f"MC/{split}-*.parquet"])
        if path is None:
            raise _missing(INFO, data, [f"{split}.csv", f"MC/{split}-00000-of-00001.parquet"])
    rows = _read_parquet(path, _NEXTQA_FIELDS) if path.suffix == ".parquet" else _read_csv(path, _NEXTQA_FIELDS)
    sources = [path]
    # The map file names the VidOR folder of each video, for the nested layout of the original NExTVideo.zip.
    video_map: dict[str, str] = {}
    for candidate in (path.parent / "map_vid_vidorID.json", folder / "map_vid_vidorID.json"):
        if candidate.is_file():
            raw = _load_json(candidate)
            if not isinstance(raw, dict):
                raise SaviError(f"{candidate}: expected a JSON object {{video: folder/id}}")
            video_map = {str(k): str(v) for k, v in raw.items()}
            sources.append(candidate)
            break
    first_row = 2 if path.suffix == ".csv" else 0
    items = []
    for i, row in enumerate(rows):
        where = f"row {i + first_row}" if path.suffix == ".csv" else _where(i, row, "video")
        video_name, qid, qtype = str(row["video"]), str(row["qid"]), str(row["type"])
        options = [_text(row, f"a{k}", path, where) for k in range(5)]
        group = _NEXTQA_GROUPS.get(qtype[:1])
        if group is None:
            raise SaviError(f"{path}: {where}: unknown question type {qtype!r} (expected C*, T* or D*)")
        rels = [f"NExTVideo/{video_name}", video_name]
        if video_name in video_map:
            rels[1:1] = [f"NExTVideo/{video_map[video_name]}", video_map[video_name]]
        question = _text(row, "question", path, where)
        items.append(EvalItem(
            question_id=f"{video_name}_{qid}", video_name=video_name, video=finder.find(rels), question=question,
            options=tuple(options), answer=_answer_index(row["answer"], 5, path, where), category=group,
            meta={"type": qtype}, prompt=f"{question}\n{_lettered(options)}"))
    return Benchmark("nextqa", split, items, sources, answers_public=True)
