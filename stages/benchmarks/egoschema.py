"""EgoSchema: the GitHub release (questions.json, with the answer key of the 500-question subset in a second
file, subset_answers.json) or the Hugging Face mirror lmms-lab/egoschema (Subset/ with answers, MC/ without).

The full split's answers are hidden: it is scored by EgoSchema's server, through `submission`.
"""

from __future__ import annotations

from pathlib import Path

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
    _read_parquet,
    _strip_letters,
    _text,
    _VideoFinder,
    _where,
)
from stages.core.errors import SaviError

INFO = BenchmarkInfo(
    "EgoSchema", ("subset", "full"), "subset", ("full",),
    "https://github.com/egoschema/EgoSchema (questions.json, subset_answers.json) or the Hugging Face dataset "
    "lmms-lab/egoschema (Subset/, MC/)")


def read(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    folder = _folder(data)
    questions_file = data if data.is_file() and data.suffix == ".json" else folder / "questions.json"
    if questions_file.is_file():
        return _egoschema_github(questions_file, folder / "subset_answers.json", split, finder)
    hf_subset = _first_file(folder, ["Subset/test-*.parquet"])
    hf_all = _first_file(folder, ["MC/test-*.parquet"])
    if data.is_file() and data.suffix == ".parquet":
        if split == "subset":
            hf_subset, hf_all = data, None
        else:
            hf_subset, hf_all = _first_file(data.parent.parent, ["Subset/test-*.parquet"]), data
    if hf_subset or hf_all:
        return _egoschema_hf(hf_subset, hf_all, split, finder)
    raise _missing(INFO, data, ["questions.json", "Subset/test-00000-of-00001.parquet"])


def _egoschema_github(questions_file: Path, answers_file: Path, split: str, finder: _VideoFinder) -> Benchmark:
    records = _load_json(questions_file)
    if not isinstance(records, list):
        raise SaviError(f"{questions_file}: expected a JSON list of questions, found {type(records).__name__}")
    sources = [questions_file]
    answers: dict[str, int] = {}
    if answers_file.is_file():
        answers = _egoschema_answers(answers_file)
        sources.append(answers_file)
    elif split == "subset":
        raise _missing(INFO, answers_file.parent, ["subset_answers.json"])
    questions = []
    for i, rec in enumerate(records):
        where = _where(i, rec, "q_uid")
        uid = str(_field(rec, "q_uid", questions_file, where))
        options = [_text(rec, f"option {k}", questions_file, where) for k in range(5)]
        questions.append((uid, _text(rec, "question", questions_file, where), options))
    return _egoschema_items(questions, answers, split, finder, sources, questions_file, answers_file)


def _egoschema_answers(path: Path) -> dict[str, int]:
    raw = _load_json(path)
    if not isinstance(raw, dict):
        raise SaviError(f"{path}: expected a JSON object {{q_uid: answer index}}, found {type(raw).__name__}")
    return {str(uid): _answer_index(value, 5, path, f"answer of {uid}") for uid, value in raw.items()}


def _egoschema_hf(subset_file: Path | None, all_file: Path | None, split: str, finder: _VideoFinder) -> Benchmark:
    # The HF mirror splits the questions into configs: Subset (500, answers as "0".."4") and MC (all, no answers).
    answers: dict[str, int] = {}
    questions: dict[str, tuple[str, str, list[str]]] = {}
    sources = []
    for path in (all_file, subset_file):
        if path is None:
            continue
        sources.append(path)
        for i, row in enumerate(_read_parquet(path, ["video_idx", "question", "option"])):
            where = _where(i, row, "video_idx")
            uid = str(row["video_idx"])
            options = _strip_letters(_options(row, "option", path, where))
            questions[uid] = (uid, _text(row, "question", path, where), options)
            if row.get("answer") not in (None, ""):
                answers[uid] = _answer_index(row["answer"], len(options), path, where)
    if split == "subset" and subset_file is None:
        raise _missing(INFO, all_file.parent.parent, ["Subset/test-00000-of-00001.parquet"])
    if split == "full" and all_file is None:
        raise _missing(INFO, subset_file.parent.parent, ["MC/test-00000-of-00001.parquet"])
    anchor = all_file or subset_file
    return _egoschema_items(list(questions.values()), answers, split, finder, sources, anchor, anchor)


def _egoschema_items(questions: list[tuple[str, str, list[str]]], answers: dict[str, int], split: str,
                     finder: _VideoFinder, sources: list[Path], questions_file: Path,
                     answers_file: Path) -> Benchmark:
    if split == "subset":
        known = {uid for uid, _, _ in questions}
        if not any(uid in answers for uid in known):
            raise SaviError(f"EgoSchema subset: none of the {len(questions)} questions in {questions_file} has an "
                            f"answer in {answers_file}; the subset needs the full questions.json (5,031 questions) "
                            f"from {INFO.download}")
        lost = [uid for uid in answers if uid not in known]
        if lost:
            raise SaviError(f"EgoSchema subset: {len(lost)} of the {len(answers)} answered questions are missing "
                            f"from {questions_file} (e.g. {lost[0]}); download the full questions.json")
        questions = [q for q in questions if q[0] in answers]
    items = []
    for uid, question, options in questions:
        items.append(EvalItem(
            question_id=uid, video_name=uid, video=finder.find([f"videos/{uid}", uid]), question=question,
            options=tuple(options), answer=answers.get(uid), category="all", meta={},
            prompt=f"{question}\n{_lettered(options)}\n{_ANSWER_WITH_LETTER}"))
    return Benchmark("egoschema", split, items, sources, answers_public=split == "subset")



def submission(chosen: list[tuple[EvalItem, int]]) -> dict[str, int]:
    # What EgoSchema's validate.py posts to its server: {q_uid: option index}.
    return {item.question_id: pred for item, pred in chosen}
