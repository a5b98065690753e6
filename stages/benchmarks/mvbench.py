"""MVBench: the Hugging Face dataset OpenGVLab/MVBench, json/<task>.json, with each answer given as the text of
one of its candidates. Videos are found in either published layout: the main branch (VideoChat2's folders under
video/) or the `video` revision (lmms-eval's folders, clips already cut to their segment).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from stages.benchmarks.choice import LETTERS
from stages.benchmarks.common import (
    Benchmark,
    BenchmarkInfo,
    EvalItem,
    _load_json,
    _options,
    _text,
    _VideoFinder,
    _where,
)
from stages.core.errors import SaviError


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

INFO = BenchmarkInfo(
    "MVBench", ("all", *MVBENCH_TASKS), "all", (),
    "the Hugging Face dataset OpenGVLab/MVBench (json/<task>.json, videos under video/)")


def read(data: Path, split: str, finder: _VideoFinder) -> Benchmark:
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
                        f"{INFO.download}")
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
    layout = "main" if video is not None else "missing"
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
            layout = "video revision"
    options = "".join(f"({LETTERS[k]}) {c}\n" for k, c in enumerate(candidates))
    return EvalItem(
        question_id=f"{task}_{index}", video_name=video_name, video=video, question=question,
        # The layout each video was found in (the summary counts them): the `video` revision is lmms-eval's.
        options=tuple(candidates), answer=candidates.index(answer_text), category=task, meta={"layout": layout},
        prompt=f"Question:{question}\nOption:\n{options}Only give the best option.\n",
        start_s=start, end_s=end, frame_fps=frame_fps, labels=tuple(f"({LETTERS[k]})" for k in range(len(candidates))))
