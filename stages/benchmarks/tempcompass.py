"""TempCompass: the GitHub release (questions/<task>.json, with meta_info.json for each dimension's aspect), which
embeds the options in the question text. The captioning task is not read: its free-form answers need an LLM judge.
"""

from __future__ import annotations

import re
from pathlib import Path

from stages.benchmarks.common import (
    Benchmark,
    BenchmarkInfo,
    EvalItem,
    _first_file,
    _folder,
    _load_json,
    _missing,
    _text,
    _VideoFinder,
)
from stages.core.errors import SaviError

TEMPCOMPASS_TASKS = ("multi-choice", "yes_no", "caption_matching")

INFO = BenchmarkInfo(
    "TempCompass", TEMPCOMPASS_TASKS, "multi-choice", (),
    "https://github.com/llyx97/TempCompass (questions/<task>.json, meta_info.json)")

_MC_LINE = re.compile(r"^\s*([A-Z])\s*\.\s*(.*?)\s*$")
_GLUED_OPTION = re.compile(r"^(.*\?)\s*([A-Z]\.\s*\S.*)$")
_CAPTION_LINE = re.compile(r"^\s*((?:Option|Sentence|Caption)\s+[A-Z0-9])\s*:\s*(.*?)\s*$")
_TEMPCOMPASS_ANSWER_PROMPT = {"multi-choice": "\nPlease directly give the best option:",
                              "caption_matching": "\nPlease directly give the best option:",
                              "yes_no": "\nPlease answer yes or no:"}


def read(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    folder = _folder(data)
    path = data if data.is_file() else _first_file(folder, [f"questions/{split}.json", f"{split}.json"])
    if path is None:
        raise _missing(INFO, data, [f"questions/{split}.json"])
    if finder.default and path.parent.name == "questions":
        finder = _VideoFinder([path.parent.parent])
    raw = _load_json(path)
    if not isinstance(raw, dict):
        raise SaviError(f"{path}: expected a JSON object keyed by video id, found {type(raw).__name__}")
    sources = [path]
    aspects: dict[tuple[str, str], str] = {}
    for meta_path in (path.parent / "meta_info.json", path.parent.parent / "meta_info.json"):
        if meta_path.is_file():
            aspects = _tempcompass_aspects(meta_path)
            sources.append(meta_path)
            break
    items = []
    for video_id, dims in raw.items():
        if not isinstance(dims, dict):
            raise SaviError(f"{path}: entry {video_id!r} is not an object of dimensions")
        video = finder.find([f"videos/{video_id}", video_id])
        for dim, records in dims.items():
            if not isinstance(records, list):
                raise SaviError(f"{path}: {video_id}/{dim} is not a list of questions")
            for k, rec in enumerate(records):
                qid = f"{video_id}_{dim}_{k}"
                where = f"question {video_id}/{dim}/{k}"
                text = _text(rec, "question", path, where)
                answer = _text(rec, "answer", path, where)
                meta = {"task": split}
                if (video_id, dim) in aspects:
                    meta["type"] = aspects[(video_id, dim)]
                common = dict(question_id=qid, video_name=video_id, video=video, category=dim, meta=meta)
                if split == "yes_no":
                    label = answer.strip().lower()
                    if label not in ("yes", "no"):
                        raise SaviError(f"{path}: {where}: answer {answer!r} is neither yes nor no")
                    items.append(EvalItem(**common, question=text, options=("yes", "no"),
                                          answer=0 if label == "yes" else 1, yes_no=True,
                                          prompt=text + _TEMPCOMPASS_ANSWER_PROMPT[split]))
                    continue
                line = _MC_LINE if split == "multi-choice" else _CAPTION_LINE
                question, labels, options = _split_embedded_options(text, line, path, where)
                index = _embedded_answer(answer, line, labels, options, path, where)
                # The question as the file writes it, options and their labels included ("A. ...", "Option 1:
                # ...", "Sentence B: ..."), as lmms-eval asks it; caption matching's labels are read back as such.
                items.append(EvalItem(**common, question=question, options=tuple(options), answer=index,
                                      prompt=text + _TEMPCOMPASS_ANSWER_PROMPT[split],
                                      labels=tuple(labels) if split == "caption_matching" else None))
    return Benchmark("tempcompass", split, items, sources, answers_public=True)


def _tempcompass_aspects(path: Path) -> dict[tuple[str, str], str]:
    raw = _load_json(path)
    if not isinstance(raw, dict):
        raise SaviError(f"{path}: expected a JSON object keyed by video id")
    aspects = {}
    for video_id, entry in raw.items():
        dims = entry.get("eval_dim") if isinstance(entry, dict) else None
        for dim, info in (dims or {}).items():
            if isinstance(info, dict) and info.get("type"):
                aspects[(video_id, dim)] = str(info["type"])
    return aspects


def _split_embedded_options(text: str, line: re.Pattern[str], path: Path,
                            where: str) -> tuple[str, list[str], list[str]]:
    # The first line is the question; every further line is one option. The pattern tolerates the published
    # quirks (" D. away from the screen", "C.Both events ...") so that no option is silently dropped.
    first, *rest = text.split("\n")
    labels, options = [], []
    glued = _GLUED_OPTION.match(first) if line is _MC_LINE else None
    if glued:
        # A few questions have their first option glued to the question mark ("...in the video?A. A dog ...").
        first = glued.group(1)
        rest.insert(0, glued.group(2))
    for raw in rest:
        if not raw.strip():
            continue
        m = line.match(raw)
        if m is None:
            raise SaviError(f"{path}: {where}: cannot read an option from the line {raw!r}")
        labels.append(m.group(1))
        options.append(m.group(2))
    if len(options) < 2:
        raise SaviError(f"{path}: {where}: found {len(options)} options in the question text, expected at least 2")
    return first.strip(), labels, options


def _embedded_answer(answer: str, line: re.Pattern[str], labels: list[str], options: list[str], path: Path,
                     where: str) -> int:
    m = line.match(answer)
    if m is None:
        raise SaviError(f"{path}: {where}: cannot read the answer {answer!r}")
    label, text = m.groups()
    # The text decides when labels repeat (a few published questions label two options "A.").
    same_text = [k for k, option in enumerate(options) if option == text]
    for k in same_text:
        if labels[k] == label:
            return k
    if same_text:
        return same_text[0]
    same_label = [k for k, option_label in enumerate(labels) if option_label == label]
    if len(same_label) == 1:
        return same_label[0]
    raise SaviError(f"{path}: {where}: the answer {answer!r} matches none of the options {options}")
