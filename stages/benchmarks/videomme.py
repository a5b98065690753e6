"""Video-MME: the Hugging Face dataset lmms-lab/Video-MME (videomme/test-*.parquet), or the official
results-template JSON (one object per video, its questions nested inside). Every option is prefixed with its letter.
"""

from __future__ import annotations

import re
from pathlib import Path

from stages.benchmarks.choice import LETTERS
from stages.benchmarks.common import (
    _ANSWER_WITH_LETTER,
    Benchmark,
    BenchmarkInfo,
    EvalItem,
    _field,
    _folder,
    _lettered,
    _load_json,
    _missing,
    _options,
    _read_parquet,
    _strip_letters,
    _text,
    _VideoFinder,
    _where,
)
from stages.core.errors import SaviError

INFO = BenchmarkInfo(
    "Video-MME", ("test",), "test", (),
    "the Hugging Face dataset lmms-lab/Video-MME (videomme/test-00000-of-00001.parquet)")

_VIDEOMME_PREAMBLE = ("Select the best answer to the following multiple-choice question based on the video and the "
                      "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
_VIDEOMME_QUESTION_FIELDS = ("question_id", "task_type", "question", "options", "answer")
_VIDEOMME_VIDEO_FIELDS = ("video_id", "duration", "domain")


def read(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    folder = _folder(data)
    if data.is_file():
        paths = [data]
    else:
        paths = (sorted((folder / "videomme").glob("*.parquet")) or sorted(folder.glob("*.parquet"))
                 or sorted(folder.glob("*.json")))
        if len(paths) > 1 and paths[0].suffix == ".json":
            raise SaviError(f"Video-MME: several JSON files in {folder} ({', '.join(p.name for p in paths)}); "
                            "pass the one to read as the data path")
    if not paths:
        raise _missing(INFO, data, ["videomme/test-00000-of-00001.parquet", "a results-template .json"])
    rows: list[tuple[Path, str, dict]] = []   # (file, where, one question with its video's fields)
    for path in paths:
        if path.suffix == ".parquet":
            for i, row in enumerate(_read_parquet(path, _VIDEOMME_QUESTION_FIELDS + _VIDEOMME_VIDEO_FIELDS)):
                rows.append((path, _where(i, row, "question_id"), row))
        else:
            rows.extend(_videomme_template_rows(path))
    items = []
    for path, where, row in rows:
        video_name = _videomme_video_name(row)
        options = _strip_letters(_options(row, "options", path, where))
        question = _text(row, "question", path, where)
        answer = _text(row, "answer", path, where).strip()
        if len(answer) != 1 or LETTERS.find(answer) not in range(len(options)):
            raise SaviError(f"{path}: {where}: answer {answer!r} is not a letter of its {len(options)} options")
        meta = {key: str(row[key]) for key in ("duration", "domain", "sub_category") if row.get(key) is not None}
        items.append(EvalItem(
            question_id=str(row["question_id"]), video_name=video_name,
            video=finder.find([f"data/{video_name}", f"videos/{video_name}", video_name]), question=question,
            options=tuple(options), answer=LETTERS.index(answer), category=str(row["task_type"]), meta=meta,
            prompt=(f"{_VIDEOMME_PREAMBLE}\n{question}\n{_lettered(options)}\n\n{_ANSWER_WITH_LETTER}"),
            # lmms-eval's videomme.yaml gives Qwen3-VL a format of its own (after VLMEvalKit's).
            family_prompts={"qwen3_vl": f"Question: {question}\nOptions:\n{_lettered(options)}\n"
                                        "Answer with the option letter only."}))
    return Benchmark("videomme", split, items, paths, answers_public=True)


def _videomme_template_rows(path: Path) -> list[tuple[Path, str, dict]]:
    # The official results-file layout: one dict per video with its questions nested inside.
    videos = _load_json(path)
    if not isinstance(videos, list):
        raise SaviError(f"{path}: expected a JSON list of videos, found {type(videos).__name__}")
    rows = []
    for i, video in enumerate(videos):
        where = _where(i, video, "video_id")
        for key in _VIDEOMME_VIDEO_FIELDS:
            _field(video, key, path, where)
        questions = _field(video, "questions", path, where)
        if not isinstance(questions, list):
            raise SaviError(f"{path}: {where}: 'questions' is not a list")
        shared = {k: v for k, v in video.items() if k != "questions"}
        for k, question in enumerate(questions):
            q_where = f"{where}, question {k}"
            for key in _VIDEOMME_QUESTION_FIELDS:
                _field(question, key, path, q_where)
            rows.append((path, q_where, {**shared, **question}))
    return rows


def _videomme_video_name(row: dict) -> str:
    # Videos are named by YouTube id (videoID); the results template only has the "001" ids.
    if row.get("videoID"):
        return str(row["videoID"])
    m = re.search(r"[?&]v=([\w-]+)", str(row.get("url") or ""))
    return m.group(1) if m else str(row["video_id"])
