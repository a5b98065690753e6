"""The savi world: clips of moving shapes whose every fact is known, built offline by `savi world DIR`.

`DIR/questions.jsonl` holds one question per line (question_id, clip_id, split, kind, question, 4 options, each
as a whole reply too, the answer's index, and the clip's facts); the clips are `DIR/videos/<clip_id>.mp4`. All
answers are public. The category is the question's kind (direction or colour), and `meta` carries the facts of the
shape asked about and of its clip, so a summary breaks accuracy down by direction, colour, axis or number of shapes.

Unlike the published benchmarks, the world is savi's own: its prompt is the user turn `savi answer` writes for
the question, and likelihood mode scores each option's whole reply after it. So what a round trains (replies to
that turn) is exactly what the evaluation measures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.benchmarks.common import (
    Benchmark,
    BenchmarkInfo,
    EvalItem,
    _answer_index,
    _field,
    _folder,
    _options,
    _text,
    _VideoFinder,
    _where,
)
from stages.core.errors import SaviError
from stages.core.prompts import load_prompts

# The splits `savi world` writes (stages/offline/world.py), the test split being the one scored by default.
INFO = BenchmarkInfo("savi world", ("train", "judge", "pool", "val", "test"), "test", (),
                     "`savi world DIR` (the world is built offline, not downloaded)")


def read(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    path = data if data.is_file() and data.suffix == ".jsonl" else _folder(data) / "questions.jsonl"
    if not path.is_file():
        raise SaviError(f"savi world: found no questions.jsonl in {_folder(data)}; build the world with "
                        f"`savi world {_folder(data)}`")
    answer_prompt = load_prompts()["answer"]  # savi's packaged answer turn, as `savi answer` renders it
    items = []
    for line_number, rec in _records(path):
        where = _where(line_number, rec, "question_id").replace("record", "line", 1)
        if _text(rec, "split", path, where) != split:
            continue
        clip_id = _text(rec, "clip_id", path, where)
        question = _text(rec, "question", path, where)
        options = _options(rec, "options", path, where)
        answer = _answer_index(_field(rec, "answer", path, where), len(options), path, where)
        replies = _options(rec, "replies", path, where)
        if len(replies) != len(options):
            raise SaviError(f"savi world: {path}, {where}: {len(replies)} replies for {len(options)} options; "
                            "build the world again with `savi world`")
        items.append(EvalItem(
            question_id=_text(rec, "question_id", path, where), video_name=clip_id,
            video=finder.find([f"videos/{clip_id}", clip_id]), question=question, options=tuple(options),
            answer=answer, category=_text(rec, "kind", path, where), meta=_facts(rec, path, where),
            prompt=answer_prompt.render("answer", question=question), replies=tuple(replies)))
    return Benchmark("world", split, items, [path], answers_public=True)


def _records(path: Path) -> list[tuple[int, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SaviError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is it a JSONL file?") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise SaviError(f"{path}: invalid JSON on line {number}: {e.msg}; the world is damaged: build it again "
                            "with `savi world`") from None
    return records


def _facts(rec: Any, path: Path, where: str) -> dict[str, str]:
    """The asked-about shape's facts, plus its clip's axis and number of shapes, all as text."""
    shapes = _field(rec, "shapes", path, where)
    if not isinstance(shapes, list) or not shapes:
        raise SaviError(f"{path}: {where}: 'shapes' should be a list of the clip's shapes, found {shapes!r}")
    target = _field(rec, "target", path, where)
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(shapes):
        raise SaviError(f"{path}: {where}: 'target' {target!r} is not the index of one of its {len(shapes)} shapes")
    facts = {key: _text(shapes[target], key, path, where) for key in ("shape", "colour", "direction", "lane")}
    return {**facts, "axis": _text(rec, "axis", path, where), "shapes": str(len(shapes))}
