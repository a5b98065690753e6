"""Tiny benchmark fixtures in each benchmark's real on-disk layout, with generated videos.

`write_benchmark("nextqa", root)` writes a handful of questions in the files and folders the real NExT-QA
download has (val.csv, test.csv, map_vid_vidorID.json, NExTVideo/...), so `stages.benchmarks.read_benchmark`
is tested on the same paths and quirks as the real thing, without a download. The videos are clips of one
moving shape (`stages.offline.videos`), and wherever the format allows, the questions ask what the clip really
shows (the shape's colour, kind or direction) with the true answer marked correct, so an honest model could
answer them.

Every layout variant the reader supports has a `layout` here (see `LAYOUTS`; the first is the default). The same
call always writes the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import random
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from stages.benchmarks.mvbench import MVBENCH_FRAME_FPS
from stages.offline import videos as synthetic

LAYOUTS: dict[str, tuple[str, ...]] = {
    "egoschema": ("github", "hf"),
    "mvbench": ("main", "video"),
    "nextqa": ("flat", "nested", "hf"),
    "perceptiontest": ("json", "all", "hf"),
    "tempcompass": ("github",),
    "longvideobench": ("json", "parquet"),
    "videomme": ("parquet", "template"),
}

# Small enough that a whole fixture writes in a fraction of a second, big enough to see the shape move.
NUM_FRAMES = 12
FPS = 6.0
SIZE = (64, 48)
SHAPE_SIZE = 12

_DIRECTION_TEXT = {
    "left_to_right": "from left to right",
    "right_to_left": "from right to left",
    "top_to_bottom": "from top to bottom",
    "bottom_to_top": "from bottom to top",
    "static": "it does not move",
}
# Only squares and circles are ever drawn; the rest are distractors.
_SHAPE_WORDS = ("square", "circle", "triangle", "star", "hexagon")
_TOPICS = ("colour", "direction", "shape")


@dataclass(frozen=True)
class Scene:
    """What one generated clip shows."""

    kind: str
    color: str
    direction: str

    @property
    def shape(self) -> synthetic.Shape:
        return synthetic.Shape(self.kind, self.color, self.direction, SHAPE_SIZE)

    @property
    def moving(self) -> str:
        return "moves " + _DIRECTION_TEXT[self.direction] if self.direction != "static" else "does not move"


def write_benchmark(name: str, root: Path, *, questions: int = 6, videos: bool = True, seed: int = 0,
                    layout: str | None = None) -> Path:
    """Write a tiny `name` benchmark in its real layout under `root`; return the path to read it from.

    `questions` is the number of questions per split (MVBench: per task; TempCompass: per task, yes_no twice
    that). `videos=False` writes the annotations only. `layout` picks a variant from `LAYOUTS[name]`.
    """
    if name not in _WRITERS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {tuple(_WRITERS)}")
    layout = layout or LAYOUTS[name][0]
    if layout not in LAYOUTS[name]:
        raise ValueError(f"{name} has no layout {layout!r}; expected one of {LAYOUTS[name]}")
    if questions < 1:
        raise ValueError(f"questions must be at least 1, got {questions}")
    writer = _Writer(Path(root), questions=questions, videos=videos, seed=seed)
    return _WRITERS[name](writer, layout)


def write_egoschema_demo(root: Path, *, questions: int = 8, seed: int = 0) -> Path:
    """An EgoSchema-format benchmark about generated clips, every answer public and correct (for the demo)."""
    writer = _Writer(Path(root), questions=questions, videos=True, seed=seed)
    return _egoschema(writer, "github", all_answered=True)


class _Writer:
    """Shared state of one fixture: the random source, and each clip encoded only once."""

    def __init__(self, root: Path, *, questions: int, videos: bool, seed: int):
        self.root = root
        self.n = questions
        self.videos = videos
        self.seed = seed
        self.rng = random.Random(seed)
        self._encoded: dict[tuple[Scene, str], bytes] = {}

    def scenes(self, count: int) -> list[Scene]:
        kinds, colors = synthetic.KINDS, tuple(synthetic.COLORS)
        return [Scene(self.rng.choice(kinds), self.rng.choice(colors), self.rng.choice(synthetic.DIRECTIONS))
                for _ in range(count)]

    def video(self, path: Path, scene: Scene) -> None:
        if not self.videos:
            return
        key = (scene, path.suffix.lower())
        if key in self._encoded:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self._encoded[key])
            return
        synthetic.write_video(path, num_frames=NUM_FRAMES, fps=FPS, size=SIZE, seed=self.seed, shapes=(scene.shape,))
        self._encoded[key] = path.read_bytes()

    def frames(self, folder: Path, scene: Scene) -> None:
        """A folder of 1-based JPEG frames at 3 fps, as MVBench ships episodic_reasoning."""
        if not self.videos:
            return
        spec = synthetic.VideoSpec(
            path=folder, width=SIZE[0], height=SIZE[1], fps=MVBENCH_FRAME_FPS, num_frames=NUM_FRAMES,
            duration_s=NUM_FRAMES / MVBENCH_FRAME_FPS, codec="mjpeg", container="frames", rotation=0,
            shapes=(scene.shape,), variable_frame_rate=False, seed=self.seed,
            frame_times_s=tuple(i / MVBENCH_FRAME_FPS for i in range(NUM_FRAMES)))
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(NUM_FRAMES):
            Image.fromarray(synthetic.frame_at(spec, i)).save(folder / f"{i + 1:05d}.jpg", quality=95)

    def question(self, scene: Scene, topic: str, num_options: int) -> tuple[str, list[str], int]:
        """A question about the clip, its options and the index of the true one."""
        if topic == "colour":
            text, truth = "What colour is the shape in the video?", scene.color
            pool = [c for c in synthetic.COLORS if c != truth]
        elif topic == "direction":
            text, truth = "In which direction does the shape move?", _DIRECTION_TEXT[scene.direction]
            pool = [d for d in _DIRECTION_TEXT.values() if d != truth]
        else:
            text, truth = "What shape is shown in the video?", scene.kind
            pool = [k for k in _SHAPE_WORDS if k != truth]
        options = self.rng.sample(pool, num_options - 1)
        answer = self.rng.randrange(num_options)
        options.insert(answer, truth)
        return text, options, answer

    def code(self, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(length))

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))


# ---------------------------------------------------------------------------------------------------------------
# EgoSchema: questions.json (no answers) + subset_answers.json, or the HF mirror's Subset/ and MC/ parquet.


def _egoschema(w: _Writer, layout: str, *, all_answered: bool = False) -> Path:
    data = w.root / "egoschema"
    scenes = w.scenes(w.n)
    rows = []
    for i, scene in enumerate(scenes):
        text, options, answer = w.question(scene, _TOPICS[i % 3], 5)
        rows.append((w.uid(), text, options, answer, scene))
    rows.sort()   # the published questions.json is sorted by q_uid
    # Every third question is left out of the answered subset, as most of the full set is.
    answered = [r for k, r in enumerate(rows) if all_answered or k % 3 != 2]
    for uid, *_, scene in rows:
        w.video(data / "videos" / f"{uid}.mp4", scene)
    if layout == "github":
        _write_json(data / "questions.json", [
            {"q_uid": uid, "google_drive_id": w.code(33), "question": text,
             **{f"option {k}": option for k, option in enumerate(options)}}
            for uid, text, options, _, _ in rows])
        _write_json(data / "subset_answers.json", {uid: answer for uid, _, _, answer, _ in answered})
        return data

    def table(selected: list, with_answers: bool) -> pa.Table:
        return pa.table({
            "question_idx": [str(k) for k in range(len(selected))],
            "question": [r[1] for r in selected],
            "video_idx": [r[0] for r in selected],
            "option": [[f"{string.ascii_uppercase[k]}. {o}" for k, o in enumerate(r[2])] for r in selected],
            "answer": [str(r[3]) if with_answers else None for r in selected],
        }, schema=pa.schema([("question_idx", pa.string()), ("question", pa.string()), ("video_idx", pa.string()),
                             ("option", pa.list_(pa.string())), ("answer", pa.string())]))

    _write_parquet(data / "Subset" / "test-00000-of-00001.parquet", table(answered, True))
    _write_parquet(data / "MC" / "test-00000-of-00001.parquet", table(rows, False))
    return data


# ---------------------------------------------------------------------------------------------------------------
# MVBench: json/<task>.json with the answer as option text; videos in the HF main or `video` revision layout.

# task -> (main-branch folder under video/, `video`-revision folder, bounded)
_MVBENCH = {
    "action_sequence": ("star/Charades_v1_480", "star/Charades_segment", True),
    "action_prediction": ("star/Charades_v1_480", "star/Charades_segment", True),
    "action_antonym": ("ssv2_video", "ssv2_video_mp4", False),
    "fine_grained_action": ("Moments_in_Time_Raw/videos", "Moments_in_Time_Raw/videos", False),
    "unexpected_action": ("FunQA_test/test", "FunQA_test/test", False),
    "object_existence": ("clevrer/video_validation", "clevrer/video_validation", False),
    "object_interaction": ("star/Charades_v1_480", "star/Charades_segment", True),
    "object_shuffle": ("perception/videos", "perception/videos", False),
    "moving_direction": ("clevrer/video_validation", "clevrer/video_validation", False),
    "action_localization": ("sta/sta_video", "sta/sta_video_segment", True),
    "scene_transition": ("scene_qa/video", "scene_qa/video", False),
    "action_count": ("perception/videos", "perception/videos", False),
    "moving_count": ("clevrer/video_validation", "clevrer/video_validation", False),
    "moving_attribute": ("clevrer/video_validation", "clevrer/video_validation", False),
    "state_change": ("perception/videos", "perception/videos", False),
    "fine_grained_pose": ("nturgbd", "nturgbd_convert", False),
    "character_order": ("perception/videos", "perception/videos", False),
    "egocentric_navigation": ("vlnqa", "vlnqa", False),
    "episodic_reasoning": ("tvqa/frames_fps3_hq", "tvqa/video_fps3_hq_segment", True),
    "counterfactual_inference": ("clevrer/video_validation", "clevrer/video_validation", False),
}


def _mvbench(w: _Writer, layout: str) -> Path:
    data = w.root / "MVBench"
    scenes = w.scenes(w.n)
    names: dict[tuple[str, int], str] = {}   # tasks sharing a source folder share its clips, as in the real set

    def video_name(folder: str, i: int) -> str:
        if (folder, i) not in names:
            if folder.startswith("star/"):
                names[folder, i] = w.code(5, string.ascii_uppercase + string.digits) + ".mp4"
            elif folder == "ssv2_video":
                names[folder, i] = f"{w.rng.randrange(1, 220000)}.webm"
            elif folder.startswith("tvqa/"):
                names[folder, i] = f"s0{w.rng.randrange(1, 10)}e{w.rng.randrange(1, 25):02d}_seg02_clip_{i:02d}"
            elif folder.startswith("clevrer/"):
                names[folder, i] = f"video_{10000 + i}.mp4"
            else:
                names[folder, i] = w.code(8) + ".mp4"
        return names[folder, i]

    for t, (task, (main, revision, bounded)) in enumerate(_MVBENCH.items()):
        records = []
        for i, scene in enumerate(scenes):
            text, options, answer = w.question(scene, _TOPICS[(t + i) % 3], 2 + (t + i) % 4)
            name = video_name(main, i)
            rec: dict[str, Any] = {"video": name, "question": text, "candidates": options, "answer": options[answer]}
            if bounded:
                start = round(w.rng.uniform(0.0, 0.8), 1)
                rec.update(start=start, end=round(start + 1.0, 1))
            records.append(rec)
            if layout == "main" and task == "episodic_reasoning":
                w.frames(data / "video" / main / name, scene)
            elif layout == "main":
                w.video(data / "video" / main / name, scene)
            elif task == "episodic_reasoning" or revision == "ssv2_video_mp4":
                # The revision ships episodic_reasoning as video segments and re-encodes the .webm clips as .mp4;
                # the json names stay as on the main branch.
                w.video(data / revision / f"{Path(name).stem}.mp4", scene)
            else:
                w.video(data / revision / name, scene)
        _write_json(data / "json" / f"{task}.json", records)
    return data


# ---------------------------------------------------------------------------------------------------------------
# NExT-QA: val.csv / test.csv, map_vid_vidorID.json, NExTVideo/ flat or nested by VidOR folder; or HF MC/.

_NEXTQA_TYPES = ("CW", "CH", "TN", "TP", "TC", "DC", "DL", "DO")
_NEXTQA_HEADER = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                  "a0", "a1", "a2", "a3", "a4"]


def _nextqa(w: _Writer, layout: str) -> Path:
    data = w.root / ("NExTQA" if layout == "hf" else "nextqa")
    video_map: dict[str, str] = {}
    splits = ["test"] if layout == "hf" else ["val", "test"]
    tables = {}
    for s, split in enumerate(splits):
        # Two questions per video, so question ids ({video}_{qid}) and video ids differ.
        scenes = w.scenes((w.n + 1) // 2)
        ids = [str(w.rng.randrange(2_000_000_000, 9_999_999_999)) for _ in scenes]
        rows = []
        for i in range(w.n):
            video, scene = ids[i // 2], scenes[i // 2]
            text, options, answer = w.question(scene, _TOPICS[i % 3], 5)
            # NExT-QA questions are lower case without a question mark.
            rows.append([video, NUM_FRAMES, SIZE[0], SIZE[1], text.lower().rstrip("?"), answer, i % 2,
                         _NEXTQA_TYPES[(i + s) % len(_NEXTQA_TYPES)], *options])
        for video, scene in zip(ids, scenes):
            video_map[video] = f"{w.rng.randrange(0, 1200):04d}/{video}"
            nested = layout == "nested"
            w.video(data / "NExTVideo" / f"{video_map[video] if nested else video}.mp4", scene)
        tables[split] = rows
    if layout == "hf":
        columns = list(zip(*tables["test"]))
        _write_parquet(data / "MC" / "test-00000-of-00001.parquet", pa.table(
            {name: [str(v) if name == "video" else v for v in col] for name, col in zip(_NEXTQA_HEADER, columns)}))
        return data
    for split, rows in tables.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(_NEXTQA_HEADER)
        writer.writerows(rows)
        (data / f"{split}.csv").parent.mkdir(parents=True, exist_ok=True)
        (data / f"{split}.csv").write_text(buffer.getvalue(), encoding="utf-8")
    _write_json(data / "map_vid_vidorID.json", video_map)
    return data


# ---------------------------------------------------------------------------------------------------------------
# Perception Test: mc_question_{valid,test}.json (or all_valid.json) keyed by video id; or HF PerceptionTest_Val.

_AREAS = ("Memory", "Abstraction", "Physics", "Semantics")
_REASONING = ("Descriptive", "Explanatory", "Predictive", "Counterfactual")


def _perceptiontest(w: _Writer, layout: str) -> Path:
    data = w.root / ("PerceptionTest_Val" if layout == "hf" else "perception_test")
    splits = ["valid"] if layout == "hf" else ["valid", "test"]
    for split in splits:
        scenes = w.scenes((w.n + 1) // 2)
        video_ids = [f"video_{w.rng.randrange(100, 12000)}" for _ in scenes]
        entries: dict[str, dict] = {}
        for i in range(w.n):
            video_id, scene = video_ids[i // 2], scenes[i // 2]
            text, options, answer = w.question(scene, _TOPICS[i % 3], 3)
            entry = entries.setdefault(video_id, {
                "metadata": {"split": split, "video_id": video_id, "frame_rate": FPS, "num_frames": NUM_FRAMES,
                             "resolution": [SIZE[1], SIZE[0]], "audio_samples": 0, "audio_sample_rate": 16000,
                             "is_cup_game": 0, "is_camera_moving": 0},
                **({"object_tracking": [], "point_tracking": [], "action_localisation": [], "sound_localisation": [],
                    "grounded_question": []} if layout == "all" else {}),
                "mc_question": []})
            question = {"id": len(entry["mc_question"]), "question": text, "options": options,
                        "answer_id": answer, "area": _AREAS[i % 4], "reasoning": _REASONING[i % 4],
                        "tag": ["colour" if i % 3 == 0 else "motion" if i % 3 == 1 else "shape"]}
            if split == "test":
                for hidden in ("answer_id", "area", "reasoning", "tag"):
                    question.pop(hidden)
            entry["mc_question"].append(question)
        for video_id, scene in zip(video_ids, scenes):
            w.video(data / "videos" / f"{video_id}.mp4", scene)
        if layout == "hf":
            rows = [(vid, q) for vid, entry in entries.items() for q in entry["mc_question"]]
            _write_parquet(data / "mc_question_val" / "validation-00000-of-00001.parquet", pa.table({
                "video_name": [vid for vid, _ in rows], "question": [q["question"] for _, q in rows],
                "question_id": [str(q["id"]) for _, q in rows], "options": [q["options"] for _, q in rows],
                "answer_id": [str(q["answer_id"]) for _, q in rows], "area": [q["area"] for _, q in rows],
                "reasoning": [q["reasoning"] for _, q in rows], "tag": [q["tag"] for _, q in rows]}))
        else:
            prefix = "all" if layout == "all" else "mc_question"
            _write_json(data / f"{prefix}_{split}.json", entries)
    return data


# ---------------------------------------------------------------------------------------------------------------
# TempCompass: questions/<task>.json keyed by video id, then dimension; the options sit inside the question text.

_CAPTION_LABELS = (("Option 1", "Option 2"), ("Sentence A", "Sentence B"), ("Caption A", "Caption B"))


def _tempcompass(w: _Writer, layout: str) -> Path:
    data = w.root / "TempCompass"
    tasks: dict[str, dict] = {"multi-choice": {}, "yes_no": {}, "caption_matching": {}, "captioning": {}}
    meta_info = {}
    for i, scene in enumerate(w.scenes(w.n)):
        video_id = str(w.rng.randrange(1_000_000_000, 1_200_000_000)) + ("_reverse" if i % 4 == 3 else "")
        dim = "direction" if i % 2 == 0 else "action"
        subject = f"{scene.color} {scene.kind}"
        truth = _DIRECTION_TEXT[scene.direction]
        others = w.rng.sample([d for d in _DIRECTION_TEXT.values() if d != truth], 3)

        # Multi-choice: 4 options for even videos, 3 for odd; two published quirks are reproduced, a label
        # without a space ("C.text") and an option line indented by a space (" D. text").
        options = [truth] + others[:3 if i % 2 == 0 else 2]
        w.rng.shuffle(options)
        lines = [f"{string.ascii_uppercase[k]}. {o}" for k, o in enumerate(options)]
        if i % 3 == 1:
            lines[-1] = lines[-1].replace(". ", ".", 1)
        elif i % 3 == 2:
            lines[-1] = " " + lines[-1]
        answer = options.index(truth)
        mc = {"question": f"In which direction is the {subject} moving?\n" + "\n".join(lines),
              "answer": f"{string.ascii_uppercase[answer]}. {truth}"}

        yes_no = [{"question": f"Is the {subject} moving {truth}?" if scene.direction != "static"
                   else f"Is the {subject} staying still?", "answer": "yes"},
                  {"question": f"Is the {subject} moving {others[0]}?" if others[0] != _DIRECTION_TEXT["static"]
                   else f"Is the {subject} staying still?", "answer": "no"}]

        labels = _CAPTION_LABELS[i % 3]
        captions = [f"A {subject} {scene.moving}.", f"A {subject} moves {others[0]}."
                    if others[0] != _DIRECTION_TEXT["static"] else f"A {subject} does not move."]
        if w.rng.random() < 0.5:
            captions.reverse()
        right = captions.index(f"A {subject} {scene.moving}.")
        matching = {"question": "Which caption matches the video better?\n"
                                + "\n".join(f"{label}: {c}" for label, c in zip(labels, captions)),
                    "answer": f"{labels[right]}: {captions[right]}"}

        info = "\n".join(f"Information {string.ascii_uppercase[k]}: {{'subject': '{subject}', 'direction': '{o}'}}"
                         for k, o in enumerate(options))
        captioning = {"question": "You will be presented with a video and several pieces of information. One piece "
                                  "of information is consistent with the video while the others are not. Please "
                                  "identify the information that consistent with the video and generate a video "
                                  f"caption accordingly.\n{info}\nGenerated Caption:",
                      "answer": f"{string.ascii_uppercase[answer]}. {truth}"}

        tasks["multi-choice"][video_id] = {dim: [mc]}
        tasks["yes_no"][video_id] = {dim: yes_no}
        tasks["caption_matching"][video_id] = {dim: [matching]}
        tasks["captioning"][video_id] = {dim: [captioning]}
        aspect = {"subject": subject, "direction": truth, "type": "object motion"} if dim == "direction" else \
            {"subject": subject, "action": scene.moving, "type": "coarse-grained action"}
        meta_info[video_id] = {"eval_dim": {"action": aspect if dim == "action" else None, "speed": None,
                                            "direction": aspect if dim == "direction" else None, "order": None,
                                            "attribute_change": None},
                               "content": ["shapes"]}
        w.video(data / "videos" / f"{video_id}.mp4", scene)
    for task, content in tasks.items():
        _write_json(data / "questions" / f"{task}.json", content)
    _write_json(data / "meta_info.json", meta_info)
    return data


# ---------------------------------------------------------------------------------------------------------------
# LongVideoBench: lvb_val.json / lvb_test_wo_gt.json lists (or the parquet with option0..4), videos/<video_path>.

_LVB_CATEGORIES = ("TOS", "S2E", "E3E", "S2O", "SSS", "O3O", "T2E")
_LVB_GROUPS = (15, 60, 600, 3600)


def _longvideobench(w: _Writer, layout: str) -> Path:
    data = w.root / "LongVideoBench"
    for split, file_name in (("val", "lvb_val.json"), ("test", "lvb_test_wo_gt.json")):
        scenes = w.scenes((w.n + 1) // 2)
        video_ids = [w.code(11, string.ascii_letters + string.digits + "-_") for _ in scenes]
        records = []
        for i in range(w.n):
            video_id, scene = video_ids[i // 2], scenes[i // 2]
            text, options, answer = w.question(scene, _TOPICS[i % 3], 4 + i % 2)
            rec = {"video_id": video_id, "question": text, "question_wo_referring_query": text,
                   "candidates": options, "correct_choice": answer, "position": [1, 6, 11],
                   "topic_category": "NP-News-Programs", "question_category": _LVB_CATEGORIES[i % 7],
                   "level": "L1-Perception" if i % 2 == 0 else "L2-Relation", "id": f"{video_id}_{i % 2}",
                   "video_path": f"{video_id}.mp4", "subtitle_path": f"{video_id}_en.json",
                   "duration_group": _LVB_GROUPS[i % 4], "starting_timestamp_for_subtitles": 0,
                   "duration": NUM_FRAMES / FPS, "view_count": w.rng.randrange(100, 10**6)}
            if split == "test":
                del rec["correct_choice"]
            records.append(rec)
        for video_id, scene in zip(video_ids, scenes):
            w.video(data / "videos" / f"{video_id}.mp4", scene)
        if layout == "json":
            _write_json(data / file_name, records)
            continue
        columns: dict[str, list] = {key: [r[key] for r in records] for key in (
            "video_id", "id", "video_path", "subtitle_path", "correct_choice", "question") if key in records[0]}
        for k in range(5):
            columns[f"option{k}"] = [r["candidates"][k] if k < len(r["candidates"]) else "N/A" for r in records]
        for key in ("duration", "duration_group", "question_category", "topic_category",
                    "starting_timestamp_for_subtitles"):
            columns[key] = [r[key] for r in records]
        name = "validation" if split == "val" else "test"
        _write_parquet(data / f"{name}-00000-of-00001.parquet", pa.table(columns))
    return data


# ---------------------------------------------------------------------------------------------------------------
# Video-MME: the HF parquet, one row per question, options prefixed "A. "; or the official results template.

_VIDEOMME_TASKS = ("Counting Problem", "Object Recognition", "Action Recognition", "Attribute Perception")
_DURATIONS = ("short", "medium", "long")


def _videomme(w: _Writer, layout: str) -> Path:
    data = w.root / "Video-MME"
    scenes = w.scenes((w.n + 2) // 3)
    youtube_ids = [w.code(11, string.ascii_letters + string.digits + "-_") for _ in scenes]
    rows = []
    for i in range(w.n):
        v = i // 3
        text, options, answer = w.question(scenes[v], _TOPICS[i % 3], 4)
        rows.append({"video_id": f"{v + 1:03d}", "duration": _DURATIONS[v % 3], "domain": "Knowledge",
                     "sub_category": "Humanity & History", "url": f"https://www.youtube.com/watch?v={youtube_ids[v]}",
                     "videoID": youtube_ids[v], "question_id": f"{v + 1:03d}-{i % 3 + 1}",
                     "task_type": _VIDEOMME_TASKS[i % 4], "question": text,
                     "options": [f"{string.ascii_uppercase[k]}. {o}" for k, o in enumerate(options)],
                     "answer": string.ascii_uppercase[answer]})
    if layout == "template":
        # The results template has no YouTube ids: its "001" video ids are the only names the clips can have.
        videos: dict[str, dict] = {}
        for r in rows:
            video = videos.setdefault(r["video_id"], {key: r[key] for key in (
                "video_id", "duration", "domain", "sub_category")} | {"questions": []})
            video["questions"].append({key: r[key] for key in (
                "question_id", "task_type", "question", "options", "answer")} | {"response": ""})
        _write_json(data / "output_test_template.json", list(videos.values()), indent=4)
        for v, scene in enumerate(scenes):
            w.video(data / "data" / f"{v + 1:03d}.mp4", scene)
        return data
    _write_parquet(data / "videomme" / "test-00000-of-00001.parquet",
                   pa.table({key: [r[key] for r in rows] for key in rows[0]}))
    for youtube_id, scene in zip(youtube_ids, scenes):
        w.video(data / "data" / f"{youtube_id}.mp4", scene)
    return data


_WRITERS: dict[str, Callable[[_Writer, str], Path]] = {
    "egoschema": _egoschema,
    "mvbench": _mvbench,
    "nextqa": _nextqa,
    "perceptiontest": _perceptiontest,
    "tempcompass": _tempcompass,
    "longvideobench": _longvideobench,
    "videomme": _videomme,
}


def _write_json(path: Path, obj: Any, *, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False), encoding="utf-8")


def _write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
