"""LongVideoBench: the Hugging Face dataset longvideobench/LongVideoBench, as JSON (lvb_val.json,
lvb_test_wo_gt.json) or as parquet, which flattens the candidates to option0..option4 padded with "N/A".

The test split's answers are hidden: it is scored by a leaderboard, through `submission`.
"""

from __future__ import annotations

from pathlib import Path

from stages.benchmarks.choice import LETTERS
from stages.benchmarks.common import (
    _ANSWER_WITH_LETTER,
    Benchmark,
    BenchmarkInfo,
    EvalItem,
    _answer_index,
    _field,
    _first_file,
    _folder,
    _lettered,
    _load_json,
    _missing,
    _options,
    _plain,
    _read_parquet,
    _text,
    _VideoFinder,
    _where,
)
from stages.core.errors import SaviError

INFO = BenchmarkInfo(
    "LongVideoBench", ("val", "test"), "val", ("test",),
    "the Hugging Face dataset longvideobench/LongVideoBench (lvb_val.json, lvb_test_wo_gt.json)")


def read(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    folder = _folder(data)
    json_name = {"val": "lvb_val.json", "test": "lvb_test_wo_gt.json"}[split]
    parquet_name = {"val": "validation", "test": "test"}[split]
    path = data if data.is_file() else _first_file(
        folder, [json_name, f"{parquet_name}-*.parquet", f"data/{parquet_name}-*.parquet"])
    if path is None:
        raise _missing(INFO, data, [json_name, f"{parquet_name}-00000-of-00001.parquet"])
    if path.suffix == ".parquet":
        records = _read_parquet(path, ["id", "video_path", "question", "option0", "question_category"])
    else:
        records = _load_json(path)
        if not isinstance(records, list):
            raise SaviError(f"{path}: expected a JSON list of questions, found {type(records).__name__}")
    items = []
    for i, rec in enumerate(records):
        where = _where(i, rec, "id")
        qid = str(_field(rec, "id", path, where))
        video_path = _text(rec, "video_path", path, where)
        question = _text(rec, "question", path, where)
        if "candidates" in rec:
            options = _options(rec, "candidates", path, where)
        else:
            # The parquet flattens candidates to option0..option4 and pads the missing ones with "N/A".
            options = [str(rec[f"option{k}"]) for k in range(5) if rec.get(f"option{k}") not in (None, "N/A")]
        answer = None
        if split == "val":
            answer = _answer_index(_field(rec, "correct_choice", path, where), len(options), path, where)
        meta = {"duration_group": _plain(_field(rec, "duration_group", path, where))}
        for key in ("topic_category", "level"):
            if rec.get(key) is not None:
                meta[key] = str(rec[key])
        items.append(EvalItem(
            question_id=qid, video_name=video_path, video=finder.find([f"videos/{video_path}", video_path]),
            question=question, options=tuple(options), answer=answer,
            category=str(_field(rec, "question_category", path, where)), meta=meta,
            prompt=f"{question}\n{_lettered(options)}\n{_ANSWER_WITH_LETTER}\n"))
    return Benchmark("longvideobench", split, items, [path], answers_public=split == "val")


def submission(chosen: list[tuple[EvalItem, int]]) -> dict[str, str]:
    return {item.question_id: LETTERS[pred] for item, pred in chosen}
