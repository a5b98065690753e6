"""Readers for video-QA benchmarks, in the on-disk layouts their authors publish.

Every benchmark ships its questions differently: EgoSchema keeps its answer key in a second file, MVBench stores
the answer as option text, NExT-QA is a CSV, TempCompass embeds the options in the question text, Video-MME
prefixes every option with its letter, LongVideoBench pads missing options with "N/A". Each reader below turns
one benchmark's files into `EvalItem`s, so prompting, scoring and reporting handle a single shape.

`data` is the folder the user downloaded (a GitHub checkout, a Hugging Face snapshot or the unzipped archive);
where natural the annotation file itself is accepted too. Videos are looked for at the paths the real layouts
use, under `videos` if given, else under `data`. Anything wrong with the files raises `SaviError` with one line
that names the file, the record and what to do.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from stages.core.errors import SaviError
from stages.core.parsing import LETTERS  # the same letters the answers are read back with


@dataclass(frozen=True)
class EvalItem:
    """One multiple-choice (or yes/no) question of a benchmark, normalised."""
    question_id: str          # unique within the benchmark split (e.g. NExT-QA f"{video}_{qid}", EgoSchema q_uid)
    video_name: str           # how the annotation names the video, for messages ("2909445186", "ZS9XR.mp4")
    video: Path | None        # the resolved video file or frame folder on disk; None when not found
    question: str             # question text only, options removed (TempCompass embeds them: split them out)
    options: tuple[str, ...]  # option texts with any "A. " / "Option 1: " style prefix stripped;
                              # ("yes", "no") for yes/no
    answer: int | None        # index into options; None where the answer key is hidden (EgoSchema full, tests)
    category: str             # the main breakdown: MVBench task, NExT-QA type group (causal/temporal/descriptive),
                              # Perception Test area, TempCompass dim, LongVideoBench question_category,
                              # Video-MME task_type, EgoSchema "all"
    meta: dict[str, str]      # further breakdowns, all values str (NExT-QA {"type": "CW"}, Video-MME
                              # {"duration": "short", "domain": ...}, LongVideoBench {"duration_group": "600"},
                              # TempCompass {"task": "multi-choice"})
    prompt: str               # the prompt lmms-eval uses for this item (see each reader below), options rendered
                              # with letters A., B., ... (or yes/no wording)
    yes_no: bool = False      # answered with yes/no instead of a letter
    start_s: float | None = None   # temporal bounds in seconds (MVBench bounded tasks only)
    end_s: float | None = None
    frame_fps: float | None = None  # set only when `video` is a folder of frames (MVBench episodic_reasoning: 3.0)


@dataclass
class Benchmark:
    name: str
    split: str
    items: list[EvalItem]
    sources: list[Path]       # the annotation files that were read (their hashes identify the benchmark version)
    answers_public: bool      # False for hidden-answer splits (then a submission file is written instead of/in
                              # addition to accuracy)


@dataclass(frozen=True)
class BenchmarkInfo:
    title: str
    splits: tuple[str, ...]
    default_split: str
    hidden_splits: tuple[str, ...]   # splits whose answer key is not published: scored by a leaderboard
    download: str                    # where the annotation files come from, quoted in "file missing" errors


@dataclass(frozen=True)
class _MVBenchTask:
    main: str        # folder under video/ on the HF main branch (VideoChat2's data_list)
    revision: str    # top-level folder of the HF `video` revision (lmms-eval's DATA_LIST)
    bounded: bool    # the annotation's start/end (seconds) select the clip's relevant part
    frames: bool     # a folder of 1-based JPEG frames at 3 fps instead of a video file


MVBENCH_TASKS: dict[str, _MVBenchTask] = {
    "action_sequence": _MVBenchTask("star/Charades_v1_480", "star/Charades_segment", True, False),
    "action_prediction": _MVBenchTask("star/Charades_v1_480", "star/Charades_segment", True, False),
    "action_antonym": _MVBenchTask("ssv2_video", "ssv2_video_mp4", False, False),
    "fine_grained_action": _MVBenchTask("Moments_in_Time_Raw/videos", "Moments_in_Time_Raw/videos", False, False),
    "unexpected_action": _MVBenchTask("FunQA_test/test", "FunQA_test/test", False, False),
    "object_existence": _MVBenchTask("clevrer/video_validation", "clevrer/video_validation", False, False),
    "object_interaction": _MVBenchTask("star/Charades_v1_480", "star/Charades_segment", True, False),
    "object_shuffle": _MVBenchTask("perception/videos", "perception/videos", False, False),
    "moving_direction": _MVBenchTask("clevrer/video_validation", "clevrer/video_validation", False, False),
    "action_localization": _MVBenchTask("sta/sta_video", "sta/sta_video_segment", True, False),
    "scene_transition": _MVBenchTask("scene_qa/video", "scene_qa/video", False, False),
    "action_count": _MVBenchTask("perception/videos", "perception/videos", False, False),
    "moving_count": _MVBenchTask("clevrer/video_validation", "clevrer/video_validation", False, False),
    "moving_attribute": _MVBenchTask("clevrer/video_validation", "clevrer/video_validation", False, False),
    "state_change": _MVBenchTask("perception/videos", "perception/videos", False, False),
    "fine_grained_pose": _MVBenchTask("nturgbd", "nturgbd_convert", False, False),
    "character_order": _MVBenchTask("perception/videos", "perception/videos", False, False),
    "egocentric_navigation": _MVBenchTask("vlnqa", "vlnqa", False, False),
    "episodic_reasoning": _MVBenchTask("tvqa/frames_fps3_hq", "tvqa/video_fps3_hq_segment", True, True),
    "counterfactual_inference": _MVBenchTask("clevrer/video_validation", "clevrer/video_validation", False, False),
}
MVBENCH_FRAME_FPS = 3.0

TEMPCOMPASS_TASKS = ("multi-choice", "yes_no", "caption_matching")

BENCHMARKS: dict[str, BenchmarkInfo] = {
    "egoschema": BenchmarkInfo(
        "EgoSchema", ("subset", "full"), "subset", ("full",),
        "https://github.com/egoschema/EgoSchema (questions.json, subset_answers.json) or the Hugging Face dataset "
        "lmms-lab/egoschema (Subset/, MC/)"),
    "mvbench": BenchmarkInfo(
        "MVBench", ("all", *MVBENCH_TASKS), "all", (),
        "the Hugging Face dataset OpenGVLab/MVBench (json/<task>.json, videos under video/)"),
    "nextqa": BenchmarkInfo(
        "NExT-QA", ("val", "test"), "val", (),
        "https://github.com/doc-doc/NExT-QA (dataset/nextqa/{val,test}.csv, map_vid_vidorID.json) or the Hugging "
        "Face dataset lmms-lab/NExTQA (MC/)"),
    "perceptiontest": BenchmarkInfo(
        "Perception Test", ("valid", "test"), "valid", ("test",),
        "https://github.com/google-deepmind/perception_test (mc_question_valid_annotations.zip) or the Hugging Face "
        "dataset lmms-lab/PerceptionTest_Val"),
    "tempcompass": BenchmarkInfo(
        "TempCompass", TEMPCOMPASS_TASKS, "multi-choice", (),
        "https://github.com/llyx97/TempCompass (questions/<task>.json, meta_info.json)"),
    "longvideobench": BenchmarkInfo(
        "LongVideoBench", ("val", "test"), "val", ("test",),
        "the Hugging Face dataset longvideobench/LongVideoBench (lvb_val.json, lvb_test_wo_gt.json)"),
    "videomme": BenchmarkInfo(
        "Video-MME", ("test",), "test", (),
        "the Hugging Face dataset lmms-lab/Video-MME (videomme/test-00000-of-00001.parquet)"),
}

# lmms-eval's post-prompt for most lettered tasks.
_ANSWER_WITH_LETTER = "Answer with the option's letter from the given choices directly."
_VIDEOMME_PREAMBLE = ("Select the best answer to the following multiple-choice question based on the video and the "
                      "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")


def read_benchmark(name: str, data: Path, split: str | None = None, videos: Path | None = None) -> Benchmark:
    """Read benchmark `name` from `data` (its downloaded folder, or the annotation file itself).

    `split=None` picks the benchmark's default split, or the split an annotation file's name says it holds.
    `videos` overrides the folder videos are looked for in.
    """
    info = BENCHMARKS.get(name)
    if info is None:
        raise SaviError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    if name == "tempcompass" and split == "captioning":
        raise SaviError("TempCompass captioning is not supported: its answers are free-form captions that need an "
                        "LLM judge; use the multi-choice, yes_no or caption_matching split")
    if split is not None and split not in info.splits:
        raise SaviError(f"unknown split {split!r} for {info.title}; known splits: {', '.join(info.splits)}")
    data = Path(data).expanduser()
    if not data.exists():
        raise SaviError(f"{info.title}: {data} does not exist; download the annotations from {info.download}")
    if videos is not None:
        videos = Path(videos).expanduser()
        if not videos.is_dir():
            raise SaviError(f"{info.title}: the videos folder {videos} does not exist")
    split = _split_for(name, data, split)
    if videos is not None:
        finder = _VideoFinder([videos])
    else:
        # A file may sit in a config folder of its dataset (MC/test-….parquet): its videos are one level up.
        finder = _VideoFinder([data] if data.is_dir() else [data.parent, data.parent.parent], default=True)
    return _READERS[name](data, split, finder)


def submission(benchmark: Benchmark, predictions: dict[str, int | None]) -> tuple[str, object]:
    """The file name and JSON-able content a benchmark's leaderboard takes, from predicted option indices.

    `predictions` maps question_id to the predicted option index (None: no usable answer, left out).
    """
    by_id = {item.question_id: item for item in benchmark.items}
    unknown = [qid for qid in predictions if qid not in by_id]
    if unknown:
        raise SaviError(f"{len(unknown)} predictions are for questions that {benchmark.name} {benchmark.split} does "
                        f"not have (e.g. {unknown[0]!r})")
    chosen: list[tuple[EvalItem, int]] = []
    for item in benchmark.items:
        pred = predictions.get(item.question_id)
        if pred is None:
            continue
        if not 0 <= pred < len(item.options):
            raise SaviError(f"prediction {pred} for {item.question_id} is out of range for its "
                            f"{len(item.options)} options")
        chosen.append((item, pred))
    file_name = f"{benchmark.name}_{benchmark.split}_submission.json"
    if benchmark.name == "egoschema":
        # What EgoSchema's validate.py posts to its server: {q_uid: option index}.
        return file_name, {item.question_id: pred for item, pred in chosen}
    if benchmark.name == "longvideobench":
        return file_name, {item.question_id: LETTERS[pred] for item, pred in chosen}
    if benchmark.name == "perceptiontest":
        # The list lmms-eval writes for the eval.ai challenge; the server's exact schema is unverified.
        return file_name, [{"video_name": item.video_name, "question": item.question,
                            "question_id": item.question_id.removeprefix(item.video_name + "_"), "pred_id": pred}
                           for item, pred in chosen]
    raise SaviError(f"{BENCHMARKS[benchmark.name].title} has no leaderboard submission format: its answers are "
                    "public, so it is scored locally")


# ---------------------------------------------------------------------------------------------------------------
# EgoSchema


def _read_egoschema(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
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
    raise _missing("egoschema", data, ["questions.json", "Subset/test-00000-of-00001.parquet"])


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
        raise _missing("egoschema", answers_file.parent, ["subset_answers.json"])
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
        raise _missing("egoschema", all_file.parent.parent, ["Subset/test-00000-of-00001.parquet"])
    if split == "full" and all_file is None:
        raise _missing("egoschema", subset_file.parent.parent, ["MC/test-00000-of-00001.parquet"])
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
                            f"from {BENCHMARKS['egoschema'].download}")
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


# ---------------------------------------------------------------------------------------------------------------
# MVBench


def _read_mvbench(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    if data.is_file():
        json_dir = data.parent
    else:
        json_dir = data / "json" if (data / "json").is_dir() else data
    # Videos live next to json/ in both HF layouts, so the repository root is the default video root.
    if finder.default:
        finder = _VideoFinder([json_dir.parent if json_dir.name == "json" else json_dir])
    tasks = list(MVBENCH_TASKS) if split == "all" else [split]
    files = {task: json_dir / f"{task}.json" for task in tasks}
    absent = [task for task, path in files.items() if not path.is_file()]
    if absent:
        listed = ", ".join(f"{t}.json" for t in absent[:4])
        if len(absent) > 4:
            listed += f" and {len(absent) - 4} more"
        raise SaviError(f"MVBench {split}: missing {listed} in {json_dir}; download json/ from "
                        f"{BENCHMARKS['mvbench'].download}")
    items = []
    for task, path in files.items():
        records = _load_json(path)
        if not isinstance(records, list):
            raise SaviError(f"{path}: expected a JSON list of questions, found {type(records).__name__}")
        for i, rec in enumerate(records):
            items.append(_mvbench_item(task, i, rec, path, finder))
    return Benchmark("mvbench", split, items, list(files.values()), answers_public=True)


def _mvbench_item(task: str, index: int, rec: Any, path: Path, finder: _VideoFinder) -> EvalItem:
    spec = MVBENCH_TASKS[task]
    where = _where(index, rec, "video")
    video_name = _text(rec, "video", path, where)
    question = _text(rec, "question", path, where)
    candidates = _options(rec, "candidates", path, where)
    answer_text = _text(rec, "answer", path, where)
    if answer_text not in candidates:
        raise SaviError(f"{path}: {where}: answer {answer_text!r} is not one of its candidates {candidates}")
    start = end = None
    if spec.bounded and rec.get("start") is not None and rec.get("end") is not None:
        try:
            start, end = float(rec["start"]), float(rec["end"])
        except (TypeError, ValueError):
            raise SaviError(f"{path}: {where}: start/end are not numbers: {rec['start']!r}, {rec['end']!r}") from None
    video = finder.find([f"video/{spec.main}/{video_name}", video_name], folder=spec.frames)
    frame_fps = MVBENCH_FRAME_FPS if video is not None and spec.frames else None
    if video is None:
        revision = [f"{spec.revision}/{video_name}"]
        if spec.revision.split("/")[0] in ("clevrer", "star"):
            revision.append(f"data0613/{spec.revision}/{video_name}")
        if spec.revision == "ssv2_video_mp4":
            # The revision re-encoded Something-Something's .webm files as .mp4.
            revision.append(f"{spec.revision}/{PurePosixPath(video_name).stem}")
        video = finder.find(revision)
        if video is not None:
            # The `video` revision ships these clips already cut to their segment (…_segment folders; lmms-eval
            # applies no bounds), so the annotation's start/end would cut a second time.
            start = end = None
    options = "".join(f"({LETTERS[k]}) {c}\n" for k, c in enumerate(candidates))
    return EvalItem(
        question_id=f"{task}_{index}", video_name=video_name, video=video, question=question,
        options=tuple(candidates), answer=candidates.index(answer_text), category=task, meta={},
        prompt=f"Question:{question}\nOption:\n{options}Only give the best option.\n",
        start_s=start, end_s=end, frame_fps=frame_fps)


# ---------------------------------------------------------------------------------------------------------------
# NExT-QA

_NEXTQA_GROUPS = {"C": "causal", "T": "temporal", "D": "descriptive"}
_NEXTQA_FIELDS = ["video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"]


def _read_nextqa(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    folder = _folder(data)
    if data.is_file():
        path = data
    else:
        path = _first_file(folder, [f"{split}.csv", f"dataset/nextqa/{split}.csv", f"nextqa/{split}.csv",
                                    f"MC/{split}-*.parquet"])
        if path is None:
            raise _missing("nextqa", data, [f"{split}.csv", f"MC/{split}-00000-of-00001.parquet"])
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


# ---------------------------------------------------------------------------------------------------------------
# Perception Test


def _read_perceptiontest(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    folder = _folder(data)
    json_names = {"valid": ["mc_question_valid.json", "all_valid.json"], "test": ["mc_question_test.json",
                                                                                  "all_test.json"]}[split]
    parquet_names = {"valid": ["mc_question_val/validation-*.parquet"], "test": ["mc_question/test-*.parquet"]}[split]
    path = data if data.is_file() else _first_file(folder, json_names + parquet_names)
    if path is None:
        raise _missing("perceptiontest", data, json_names + [parquet_names[0].replace("*", "00000-of-00001")])
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


# ---------------------------------------------------------------------------------------------------------------
# TempCompass

_MC_LINE = re.compile(r"^\s*([A-Z])\s*\.\s*(.*?)\s*$")
_GLUED_OPTION = re.compile(r"^(.*\?)\s*([A-Z]\.\s*\S.*)$")
_CAPTION_LINE = re.compile(r"^\s*(?:Option|Sentence|Caption)\s+([A-Z0-9])\s*:\s*(.*?)\s*$")
_TEMPCOMPASS_ANSWER_PROMPT = {"multi-choice": "\nPlease directly give the best option:",
                              "caption_matching": "\nPlease directly give the best option:",
                              "yes_no": "\nPlease answer yes or no:"}


def _read_tempcompass(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    folder = _folder(data)
    path = data if data.is_file() else _first_file(folder, [f"questions/{split}.json", f"{split}.json"])
    if path is None:
        raise _missing("tempcompass", data, [f"questions/{split}.json"])
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
                # Options are shown with letters whatever their label in the file ("Option 1", "Sentence B"), so
                # every item is answered, and scored, by letter.
                items.append(EvalItem(**common, question=question, options=tuple(options), answer=index,
                                      prompt=f"{question}\n{_lettered(options)}{_TEMPCOMPASS_ANSWER_PROMPT[split]}"))
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


# ---------------------------------------------------------------------------------------------------------------
# LongVideoBench


def _read_longvideobench(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
    folder = _folder(data)
    json_name = {"val": "lvb_val.json", "test": "lvb_test_wo_gt.json"}[split]
    parquet_name = {"val": "validation", "test": "test"}[split]
    path = data if data.is_file() else _first_file(
        folder, [json_name, f"{parquet_name}-*.parquet", f"data/{parquet_name}-*.parquet"])
    if path is None:
        raise _missing("longvideobench", data, [json_name, f"{parquet_name}-00000-of-00001.parquet"])
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


# ---------------------------------------------------------------------------------------------------------------
# Video-MME

_VIDEOMME_QUESTION_FIELDS = ("question_id", "task_type", "question", "options", "answer")
_VIDEOMME_VIDEO_FIELDS = ("video_id", "duration", "domain")


def _read_videomme(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
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
        raise _missing("videomme", data, ["videomme/test-00000-of-00001.parquet", "a results-template .json"])
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
            prompt=(f"{_VIDEOMME_PREAMBLE}\n{question}\n{_lettered(options)}\n\n{_ANSWER_WITH_LETTER}")))
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


_READERS: dict[str, Callable[[Path, str, _VideoFinder], Benchmark]] = {
    "egoschema": _read_egoschema,
    "mvbench": _read_mvbench,
    "nextqa": _read_nextqa,
    "perceptiontest": _read_perceptiontest,
    "tempcompass": _read_tempcompass,
    "longvideobench": _read_longvideobench,
    "videomme": _read_videomme,
}


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers

# Tried in this order where the annotation names a video without its extension (lmms-eval's fallbacks, plus .webm).
VIDEO_EXTENSIONS = (".mp4", ".MP4", ".mkv", ".webm")
_KNOWN_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".gif"}


class _VideoFinder:
    """Finds a video among candidate relative paths under a few roots.

    Each directory is listed once and kept, so resolving tens of thousands of items costs one listing per
    directory rather than a stat per candidate and extension. Paths are handled as strings until a match is
    found: building pathlib objects for every candidate would dominate the time of reading a large split.
    """

    def __init__(self, roots: Sequence[Path], *, default: bool = False):
        self.roots = [str(root) for root in dict.fromkeys(roots)]
        self.default = default   # roots were derived from `data`, not given by the user
        self._listings: dict[str, dict[str, bool] | None] = {}

    def find(self, rels: Iterable[str], *, folder: bool = False) -> Path | None:
        rels = list(rels)
        for root in self.roots:
            for rel in rels:
                head, _, tail = rel.rpartition("/")
                directory = os.path.join(root, head) if head else root
                entries = self._listing(directory)
                if not entries:
                    continue
                for name in ([tail] if folder else _with_extensions(tail)):
                    if entries.get(name) is folder:
                        return Path(directory, name)
        return None

    def _listing(self, directory: str) -> dict[str, bool] | None:
        entries = self._listings.get(directory, False)
        if entries is False:
            try:
                with os.scandir(directory) as it:
                    entries = {entry.name: entry.is_dir() for entry in it}
            except OSError:
                entries = None
            self._listings[directory] = entries
        return entries


def _with_extensions(name: str) -> list[str]:
    if os.path.splitext(name)[1].lower() in _KNOWN_SUFFIXES:
        return [name]
    return [name + ext for ext in VIDEO_EXTENSIONS] + [name]


def _folder(data: Path) -> Path:
    return data if data.is_dir() else data.parent


def _first_file(folder: Path, patterns: Sequence[str]) -> Path | None:
    for pattern in patterns:
        if "*" in pattern:
            found = sorted(p for p in folder.glob(pattern) if p.is_file())
            if found:
                return found[0]
        elif (folder / pattern).is_file():
            return folder / pattern
    return None


def _split_for(name: str, data: Path, split: str | None) -> str:
    """The split to read: as asked, else the one an annotation file's name gives, else the default."""
    info = BENCHMARKS[name]
    named = None
    if data.is_file() and name == "egoschema":
        # The HF mirror names its configs by folder: Subset/ has the answers, MC/ is the full set.
        named = {"subset": "subset", "mc": "full"}.get(data.parent.name.lower())
    elif data.is_file():
        stem = data.stem.lower().replace("-", "_")
        if name == "tempcompass" and "captioning" in stem:
            raise SaviError(f"{data}: TempCompass captioning is not supported: its free-form captions need an "
                            "LLM judge")
        named = next((s for s in sorted(info.splits, key=len, reverse=True) if s.replace("-", "_") in stem), None)
    if split is None:
        return named or info.default_split
    if named is not None and named != split and not (name == "mvbench" and split == "all"):
        raise SaviError(f"{data} holds the {named} split of {info.title}, not {split}")
    return split


def _missing(name: str, data: Path, expected: Sequence[str]) -> SaviError:
    info = BENCHMARKS[name]
    return SaviError(f"{info.title}: found no {' or '.join(expected)} in {data}; download it from {info.download}")


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SaviError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is it a JSON file?") from None
    except OSError as e:
        raise SaviError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        comma = _trailing_comma(text, e.pos)
        if comma is not None:
            line = text.count("\n", 0, comma) + 1
            column = comma - (text.rfind("\n", 0, comma) + 1) + 1
            raise SaviError(f"{path}: invalid JSON: trailing comma at line {line}, column {column} (before "
                            f"{text[e.pos]!r}); strict JSON allows none, remove it") from None
        raise SaviError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; the file is "
                        "damaged or cut short: download it again") from None


def _trailing_comma(text: str, pos: int) -> int | None:
    """Where the comma is, if the decoder stopped at a closing bracket that follows one."""
    if pos >= len(text) or text[pos] not in "}]":
        return None
    before = text[:pos].rstrip()
    return len(before) - 1 if before.endswith(",") else None


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [f for f in required if f not in (reader.fieldnames or [])]
            if missing:
                raise SaviError(f"{path}: the header has no {', '.join(missing)} column(s); found "
                                f"{', '.join(reader.fieldnames or []) or 'no header'}")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise SaviError(f"{path}: not UTF-8 text ({e.reason}); is it a CSV file?") from None
    except csv.Error as e:
        raise SaviError(f"{path}: malformed CSV: {e}") from None
    for i, row in enumerate(rows):
        if None in row or any(row[f] is None for f in required):
            raise SaviError(f"{path}: row {i + 2} has {'more' if None in row else 'fewer'} fields than the header")
    return rows


def _read_parquet(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise SaviError(f"{path}: not a readable Parquet file: {e}") from None
    missing = [f for f in required if f not in table.column_names]
    if missing:
        raise SaviError(f"{path}: no {', '.join(missing)} column(s); found {', '.join(table.column_names)}")
    return table.to_pylist()


def _where(index: int, rec: Any, id_field: str) -> str:
    if isinstance(rec, dict) and rec.get(id_field) not in (None, ""):
        return f"record {index} ({id_field} {rec[id_field]})"
    return f"record {index}"


def _field(rec: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(rec, dict):
        raise SaviError(f"{path}: {where} is not an object but {type(rec).__name__}")
    if rec.get(key) is None:
        raise SaviError(f"{path}: {where} has no {key!r} field; the file is damaged or not in the benchmark's "
                        "published format: download it again")
    return rec[key]


def _text(rec: Any, key: str, path: Path, where: str) -> str:
    value = _field(rec, key, path, where)
    if isinstance(value, (dict, list)):
        raise SaviError(f"{path}: {where}: {key!r} should be text, found {type(value).__name__}")
    return str(value)


def _options(rec: Any, key: str, path: Path, where: str) -> list[str]:
    value = _field(rec, key, path, where)
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise SaviError(f"{path}: {where}: {key!r} should be a list of at least 2 options, found {value!r}")
    return [str(v) for v in value]


def _answer_index(value: Any, num_options: int, path: Path, where: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        index = int(value)
        if isinstance(value, float) and value != index:
            raise ValueError
    except (TypeError, ValueError):
        raise SaviError(f"{path}: {where}: answer {value!r} is not an option index") from None
    if not 0 <= index < num_options:
        raise SaviError(f"{path}: {where}: answer {index} is out of range for {num_options} options "
                        f"(0..{num_options - 1})")
    return index


def _strip_letters(options: Sequence[str]) -> list[str]:
    # Only the letter that belongs to the position is stripped, so option text such as "I. M. Pei" survives.
    out = []
    for k, option in enumerate(options):
        m = re.match(rf"^\s*\(?{LETTERS[k]}\s*[.):]\s*", option)
        out.append(option[m.end():] if m else option)
    return out


def _lettered(options: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[k]}. {option}" for k, option in enumerate(options))


def _plain(value: Any) -> str:
    """A number as the annotation means it: 600, not 600.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
