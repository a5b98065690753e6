"""Perception Test: the multiple-choice annotations of the GitHub release (mc_question_{valid,test}.json, or the
all_{valid,test}.json that carries every task) or the Hugging Face mirror lmms-lab/PerceptionTest_Val (parquet).

The test split's answers are hidden: it is scored by the eval.ai challenge, through `submission`.
"""

from __future__ import annotations

from pathlib import Path

from stages.benchmarks.common import (
    _ANSWER_WITH_LETTER,
    Benchmark,
    BenchmarkInfo,
    EvalItem,
    _answer_index,
    _first_file,
    _folder,
    _lettered,
    _load_json,
    _missing,
    _options,
    _read_parquet,
    _text,
    _VideoFinder,
)
from stages.core.errors import SaviError

INFO = BenchmarkInfo(
    "Perception Test", ("valid", "test"), "valid", ("test",),
    "https://github.com/google-deepmind/perception_test (mc_question_valid_annotations.zip) or the Hugging Face "
    "dataset lmms-lab/PerceptionTest_Val")


def read(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    folder = _folder(data)
    json_names = {"valid": ["mc_question_valid.json", "all_valid.json"], "test": ["mc_question_test.json",
                                                                                  "all_test.json"]}[split]
    parquet_names = {"valid": ["mc_question_val/validation-*.parquet"], "test": ["mc_question/test-*.parquet"]}[split]
    path = data if data.is_file() else _first_file(folder, json_names + parquet_names)
    if path is None:
        raise _missing(INFO, data, json_names + [parquet_names[0].replace("*", "00000-of-00001")])
    need_answer = split == "valid"
    questions: list[tuple[str, dict]] = []   # (video name, question record)
    id_key = "question_id" if path.suffix == ".parquet" else "id"
    if path.suffix == ".parquet":
        for row in _read_parquet(path, ["video_name", "question", "question_id", "options"]):
            questions.append((str(row["video_name"]), row))
    else:
        raw = _load_json(path)
        if not isinstance(raw, dict):
            raise SaviError(f"{path}: expected a JSON object keyed by video id, found {type(raw).__name__}")
        for video_id, entry in raw.items():
            if not isinstance(entry, dict):
                raise SaviError(f"{path}: entry {video_id!r} is not an object")
            # all_*.json carries every task; videos without multiple-choice questions have none here.
            records = entry.get("mc_question") or []
            if not isinstance(records, list):
                raise SaviError(f"{path}: {video_id}: 'mc_question' is not a list")
            questions.extend((str(video_id), rec) for rec in records)
    items = []
    for i, (video_name, rec) in enumerate(questions):
        where = f"question {i} (video {video_name})"
        raw_id = _text(rec, id_key, path, where)
        question = _text(rec, "question", path, where)
        options = _options(rec, "options", path, where)
        answer = None
        if rec.get("answer_id") not in (None, ""):
            answer = _answer_index(rec["answer_id"], len(options), path, where)
        elif need_answer:
            raise SaviError(f"{path}: {where} has no 'answer_id' field")
        tags = rec.get("tag") or []
        items.append(EvalItem(
            question_id=f"{video_name}_{raw_id}", video_name=video_name,
            video=finder.find([f"videos/{video_name}", video_name]), question=question, options=tuple(options),
            answer=answer, category=str(rec.get("area") or "unknown"),
            meta={"reasoning": str(rec.get("reasoning") or ""), "tag": ",".join(str(t) for t in tags)},
            prompt=f"{question}\n{_lettered(options)}\n{_ANSWER_WITH_LETTER}"))
    return Benchmark("perceptiontest", split, items, [path], answers_public=split == "valid")


def submission(chosen: list[tuple[EvalItem, int]]) -> list[dict[str, object]]:
    # The list lmms-eval writes for the eval.ai challenge; the server's exact schema is unverified.
    return [{"video_name": item.video_name, "question": item.question,
             "question_id": item.question_id.removeprefix(item.video_name + "_"), "pred_id": pred}
            for item, pred in chosen]
