"""Benchmark readers: the real published annotation files (skipped when absent) and fixtures of every layout."""

from __future__ import annotations

import collections
import csv
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from stages.benchmarks import BENCHMARKS, MVBENCH_TASKS, read_benchmark, submission
from stages.core.errors import SaviError
from stages.offline.benchmark_files import LAYOUTS, write_benchmark, write_egoschema_demo
from stages.offline.videos import nearest_color

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL = SHARED / "benchmarks"
# Skipped only where ../shared itself is absent (a checkout on its own). Where it exists, every real file must be
# there: a missing one fails, instead of quietly skipping the tests that read it.
needs_real = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent (../shared beside the repository "
                                                            "holds the real benchmark annotation files)")
REAL_FILES = [
    "egoschema/questions.json", "egoschema/subset_answers.json",
    "nextqa/val.csv", "nextqa/test.csv", "nextqa/map_vid_vidorID.json",
    "tempcompass/meta_info.json", "tempcompass/questions/multi-choice.json", "tempcompass/questions/yes_no.json",
    "tempcompass/questions/caption_matching.json", "tempcompass/questions/captioning.json",
    "videomme/output_test_template.json",
]

LABEL_PREFIX = re.compile(r"^\s*(\(?[A-E][.):]\s|(Option|Sentence|Caption) \w+:)")


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    """`fixture(name, layout=None)`: the data path of that benchmark fixture, written once per module."""
    written: dict[tuple[str, str | None], Path] = {}

    def get(name: str, layout: str | None = None) -> Path:
        if (name, layout) not in written:
            root = tmp_path_factory.mktemp(f"{name}-{layout or 'default'}")
            written[name, layout] = write_benchmark(name, root, layout=layout)
        return written[name, layout]

    return get


# ---------------------------------------------------------------------------------------------------------------
# The real annotation files


@needs_real
@pytest.mark.parametrize("path", REAL_FILES)
def test_every_real_benchmark_file_is_in_shared(path):
    assert (REAL / path).is_file(), f"{REAL / path} is missing: {SHARED} exists, so it must hold the real file"


@needs_real
def test_real_egoschema_full_reads_the_early_questions_without_answers():
    raw = json.loads((REAL / "egoschema" / "questions.json").read_text())
    bench = read_benchmark("egoschema", REAL / "egoschema", "full")
    assert len(bench.items) == 20
    assert [item.question_id for item in bench.items] == [q["q_uid"] for q in raw]
    assert all(item.answer is None for item in bench.items)
    assert not bench.answers_public
    first = bench.items[0]
    assert first.options == tuple(raw[0][f"option {k}"] for k in range(5))
    assert first.question == raw[0]["question"] and first.category == "all" and first.video is None
    assert f"\nE. {raw[0]['option 4']}\n" in first.prompt
    assert first.prompt.endswith("Answer with the option's letter from the given choices directly.")
    assert [p.name for p in bench.sources] == ["questions.json", "subset_answers.json"]


@needs_real
def test_real_egoschema_subset_needs_the_full_questions_file():
    # None of the 20 early q_uids is among the 500 answered ones, so there is nothing to score.
    with pytest.raises(SaviError, match="none of the 20 questions .* has an answer"):
        read_benchmark("egoschema", REAL / "egoschema")


@needs_real
def test_real_nextqa_splits_types_and_answers():
    val = read_benchmark("nextqa", REAL / "nextqa", "val")
    assert val.split == "val" and len(val.items) == 4996
    types = collections.Counter(item.meta["type"] for item in val.items)
    assert types == {"CW": 1924, "TN": 895, "CH": 683, "TC": 663, "DO": 305, "DL": 295, "DC": 177, "TP": 54}
    assert collections.Counter(item.category for item in val.items) == {
        "causal": 1924 + 683, "temporal": 895 + 663 + 54, "descriptive": 305 + 295 + 177}
    assert {item.answer for item in val.items} == {0, 1, 2, 3, 4}
    assert len({item.question_id for item in val.items}) == 4996
    first = val.items[0]   # 4010069381,369,640,480,how do the two man play the instrument,0,6,CH,roll the handle,...
    assert first.question_id == "4010069381_6" and first.video_name == "4010069381"
    assert first.options == ("roll the handle", "tap their feet", "strum the string", "hit with sticks",
                             "pat with hand")
    assert first.answer == 0 and first.category == "causal"
    assert first.prompt == ("how do the two man play the instrument\nA. roll the handle\nB. tap their feet\n"
                            "C. strum the string\nD. hit with sticks\nE. pat with hand")

    test = read_benchmark("nextqa", REAL / "nextqa")   # the multiple-choice test split, as lmms-eval reads it
    assert test.split == "test" and len(test.items) == 8564 and test.answers_public
    assert all(0 <= item.answer <= 4 for item in test.items)


@needs_real
def test_real_nextqa_finds_videos_flat_nested_and_directly(tmp_path):
    video_map = json.loads((REAL / "nextqa" / "map_vid_vidorID.json").read_text())
    with open(REAL / "nextqa" / "val.csv", newline="") as fh:
        videos = list(dict.fromkeys(row["video"] for row in csv.DictReader(fh)))[:3]
    nested = tmp_path / "NExTVideo" / f"{video_map[videos[0]]}.mp4"
    flat = tmp_path / "NExTVideo" / f"{videos[1]}.mp4"
    direct = tmp_path / f"{videos[2]}.MP4"
    for path in (nested, flat, direct):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert "/" in video_map[videos[0]]   # really nested, e.g. 0101/2909445186
    bench = read_benchmark("nextqa", REAL / "nextqa", "val", videos=tmp_path)
    found = {item.video_name: item.video for item in bench.items if item.video is not None}
    assert found == {videos[0]: nested, videos[1]: flat, videos[2]: direct}


@needs_real
def test_real_tempcompass_multi_choice():
    raw = json.loads((REAL / "tempcompass" / "questions" / "multi-choice.json").read_text())
    bench = read_benchmark("tempcompass", REAL / "tempcompass")
    assert bench.split == "multi-choice" and len(bench.items) == 1580
    # A plain line split gives 898 / 674 / 8. Five options in five records are malformed in the file
    # (" D. away from the screen", "C.Both events ...", an "A." glued to the question mark); the reader
    # recovers them instead of dropping them.
    assert collections.Counter(len(item.options) for item in bench.items) == {3: 901, 4: 675, 2: 4}
    answers = [q["answer"] for dims in raw.values() for qs in dims.values() for q in qs]
    assert [item.options[item.answer] for item in bench.items] == [a.split(".", 1)[1].strip() for a in answers]
    assert not any(LABEL_PREFIX.match(o) for item in bench.items for o in item.options)
    by_id = {item.question_id: item for item in bench.items}
    spinning = by_id["1100319395_reverse_direction_2"]
    assert spinning.options == ("towards the screen", "anticlockwise", "clockwise", "away from the screen")
    assert spinning.answer == 1
    assert by_id["1022115337_order_1"].options[2] == "Both events happen at the same time"
    glued = by_id["1024867412_1034049020_0_order_2"]
    assert glued.question == "In what sequence do the events occur in the video?"
    assert glued.options[0] == "A dog is driving, followed by a girl walking on the street" and glued.answer == 1
    first = bench.items[0]
    assert first.category == "action" and first.meta == {"task": "multi-choice", "type": "fine-grained action"}
    assert first.prompt == ("What is the man doing in the video?\nA. dunking a basketball\nB. dribbling a basketball"
                            "\nC. passing a basketball\nPlease directly give the best option:")


@needs_real
def test_real_tempcompass_yes_no_and_caption_matching():
    yes_no = read_benchmark("tempcompass", REAL / "tempcompass", "yes_no")
    assert len(yes_no.items) == 2453
    assert all(item.yes_no and item.options == ("yes", "no") for item in yes_no.items)
    assert collections.Counter(item.answer for item in yes_no.items) == {0: 1226, 1: 1227}
    assert yes_no.items[0].prompt == "Is the man dunking?\nPlease answer yes or no:"

    raw = json.loads((REAL / "tempcompass" / "questions" / "caption_matching.json").read_text())
    matching = read_benchmark("tempcompass", REAL / "tempcompass", "caption_matching")
    assert len(matching.items) == 1503
    assert all(len(item.options) == 2 and not item.yes_no for item in matching.items)
    assert not any(LABEL_PREFIX.match(o) for item in matching.items for o in item.options)
    answers = [q["answer"] for dims in raw.values() for qs in dims.values() for q in qs]
    assert [item.options[item.answer] for item in matching.items] == [a.split(":", 1)[1].strip() for a in answers]
    # Asked as the file and lmms-eval write it, with the file's own labels, which are read back as such.
    assert matching.items[0].prompt == (
        "Which description is a more suitable match for the video?\nOption 1: The man is dribbling a basketball.\n"
        "Option 2: A man is dunking a basketball.\nPlease directly give the best option:")
    assert matching.items[0].labels == ("Option 1", "Option 2") and matching.items[0].answer == 1
    assert collections.Counter(item.labels[0].split()[0] for item in matching.items) == {
        "Option": 501, "Sentence": 501, "Caption": 501}


@needs_real
def test_real_tempcompass_captioning_is_refused():
    with pytest.raises(SaviError, match="captioning is not supported.*LLM judge"):
        read_benchmark("tempcompass", REAL / "tempcompass", "captioning")
    with pytest.raises(SaviError, match="LLM judge"):
        read_benchmark("tempcompass", REAL / "tempcompass" / "questions" / "captioning.json")


@needs_real
def test_real_videomme_template_has_trailing_commas():
    with pytest.raises(SaviError, match=r"output_test_template\.json: invalid JSON: trailing comma at line 19, "):
        read_benchmark("videomme", REAL / "videomme")


@needs_real
def test_real_videomme_template_reads_once_the_commas_are_gone(tmp_path):
    text = (REAL / "videomme" / "output_test_template.json").read_text()
    (tmp_path / "results.json").write_text(re.sub(r",(\s*[}\]])", r"\1", text))
    bench = read_benchmark("videomme", tmp_path)
    assert len(bench.items) == 9
    assert [item.question_id for item in bench.items[:4]] == ["001-1", "001-2", "001-3", "002-1"]
    first = bench.items[0]
    assert first.options == ("Apples.", "Candles.", "Berries.", "The three kinds are of the same number.")
    assert first.answer == 2 and first.category == "Counting Problem" and first.video_name == "001"
    assert first.meta == {"duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History"}
    assert "\nA. Apples.\nB. Candles.\nC. Berries.\nD. The three kinds are of the same number.\n\n" in first.prompt


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: every benchmark, every layout


ALL_LAYOUTS = [(name, layout) for name, layouts in LAYOUTS.items() for layout in layouts]


@pytest.mark.parametrize(("name", "layout"), ALL_LAYOUTS)
def test_fixture_reads_back_in_every_layout(fixture, name, layout):
    data = fixture(name, layout)
    info = BENCHMARKS[name]
    splits = [s for s in info.splits if not (name == "mvbench" and s != "all")]
    if layout == "hf" and name in ("nextqa", "perceptiontest"):
        splits = ["test"] if name == "nextqa" else ["valid"]   # the mirrors hold a single split
    for split in splits:
        bench = read_benchmark(name, data, split)
        assert bench.items and bench.split == split
        assert bench.answers_public == (split not in info.hidden_splits)
        assert len({item.question_id for item in bench.items}) == len(bench.items)
        for item in bench.items:
            assert not any(LABEL_PREFIX.match(option) for option in item.options), item
            if bench.answers_public:
                assert 0 <= item.answer < len(item.options)
            elif name != "egoschema":   # EgoSchema full keeps the subset's known answers
                assert item.answer is None
            if item.yes_no:
                assert item.options == ("yes", "no") and "yes or no" in item.prompt
            elif name == "mvbench":
                assert all(f"({'ABCDE'[k]}) {o}\n" in item.prompt for k, o in enumerate(item.options))
            elif name == "tempcompass":   # asked as the file writes it, its formatting slips and labels included
                assert item.prompt.startswith(item.question) and all(o in item.prompt for o in item.options)
            else:
                assert all(f"{'ABCDE'[k]}. {o}" in item.prompt.split("\n") for k, o in enumerate(item.options))
            assert item.video is not None and item.video.exists() and data in item.video.parents


def test_fixtures_are_deterministic(tmp_path):
    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for name in ("mvbench", "videomme", "egoschema"):
        layout = "hf" if name == "egoschema" else None
        a = write_benchmark(name, tmp_path / "a", questions=3, layout=layout)
        b = write_benchmark(name, tmp_path / "b", questions=3, layout=layout)
        c = write_benchmark(name, tmp_path / "c", questions=3, layout=layout, seed=1)
        assert tree(a) == tree(b)
        assert tree(a) != tree(c)


def test_fixture_options_rejects_unknown_names_and_layouts(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        write_benchmark("kinetics", tmp_path)
    with pytest.raises(ValueError, match="no layout 'nested'"):
        write_benchmark("mvbench", tmp_path, layout="nested")


def _what_it_shows(video: Path) -> tuple[str, str, str]:
    """(colour, direction text, kind) of the single shape, measured from the first and last frames."""
    if video.is_dir():
        frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(video.glob("*.jpg"))]
    else:
        with av.open(str(video)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    measured = []
    for frame in (frames[0], frames[-1]):
        mask = frame.max(axis=2) > 100
        ys, xs = np.nonzero(mask)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        measured.append((frame[mask].mean(axis=0), xs.mean(), ys.mean(), mask.sum() / box))
    (rgb, x0, y0, fill), (_, x1, y1, _) = measured
    dx, dy = x1 - x0, y1 - y0
    if max(abs(dx), abs(dy)) < 3:
        direction = "it does not move"
    elif abs(dx) > abs(dy):
        direction = "from left to right" if dx > 0 else "from right to left"
    else:
        direction = "from top to bottom" if dy > 0 else "from bottom to top"
    return nearest_color(rgb), direction, "square" if fill > 0.9 else "circle"


@pytest.mark.parametrize("name", ["egoschema", "mvbench", "nextqa", "perceptiontest", "tempcompass",
                                  "longvideobench", "videomme"])
def test_fixture_answers_are_what_the_video_shows(fixture, name):
    bench = read_benchmark(name, fixture(name))
    checked = collections.Counter()
    seen: dict[Path, tuple[str, str, str]] = {}
    for item in bench.items[:40]:
        if item.yes_no or item.answer is None:
            continue
        question = item.question.lower()
        topic = "colour" if "colour" in question else "direction" if "direction" in question else \
            "kind" if "what shape" in question else None
        if topic is None:
            continue
        if item.video not in seen:
            seen[item.video] = _what_it_shows(item.video)
        colour, direction, kind = seen[item.video]
        truth = {"colour": colour, "direction": direction, "kind": kind}[topic]
        assert item.options[item.answer] == truth, (item.question_id, item.question, item.options)
        checked[topic] += 1
    assert checked, f"no checkable question in {name}"


def test_egoschema_subset_full_and_the_hf_mirror(fixture):
    data = fixture("egoschema")
    answers = json.loads((data / "subset_answers.json").read_text())
    subset = read_benchmark("egoschema", data)
    full = read_benchmark("egoschema", data, "full")
    assert len(full.items) == 6 and len(subset.items) == 4 == len(answers)
    assert {item.question_id: item.answer for item in subset.items} == answers
    assert [item.answer is None for item in full.items].count(True) == 2
    assert all(item.video == data / "videos" / f"{item.question_id}.mp4" for item in full.items)
    assert [item.question_id for item in full.items] == sorted(item.question_id for item in full.items)

    # The HF mirror prefixes options with "A. " and stores answers as strings; it must read the same.
    hf = fixture("egoschema", "hf")
    for split in ("subset", "full"):
        ours = read_benchmark("egoschema", hf, split).items
        theirs = read_benchmark("egoschema", data, split).items
        assert [(i.question_id, i.options, i.answer, i.prompt) for i in ours] == \
            [(i.question_id, i.options, i.answer, i.prompt) for i in theirs]
    assert read_benchmark("egoschema", hf / "MC" / "test-00000-of-00001.parquet").split == "full"


def test_egoschema_demo_is_fully_answered(tmp_path):
    data = write_egoschema_demo(tmp_path, questions=8)
    bench = read_benchmark("egoschema", data)
    assert len(bench.items) == 8 and bench.answers_public
    assert all(item.answer is not None and item.video.is_file() for item in bench.items)


def test_mvbench_main_layout_bounds_and_frame_folders(fixture):
    data = fixture("mvbench", "main")
    bench = read_benchmark("mvbench", data)
    assert len(bench.items) == 20 * 6
    assert collections.Counter(item.category for item in bench.items) == {task: 6 for task in MVBENCH_TASKS}
    for item in bench.items:
        spec = MVBENCH_TASKS[item.category]
        assert item.video.is_relative_to(data / "video" / spec.main)
        if spec.bounded:
            assert item.start_s is not None and 0 <= item.start_s < item.end_s
        else:
            assert item.start_s is None and item.end_s is None
        assert item.frame_fps == (3.0 if item.category == "episodic_reasoning" else None)
        assert item.meta == {"layout": "main"}   # the summary's `by` counts the questions per layout
    episodic = [item for item in bench.items if item.category == "episodic_reasoning"]
    assert all(item.video.is_dir() for item in episodic)
    assert sorted(p.name for p in episodic[0].video.iterdir())[:2] == ["00001.jpg", "00002.jpg"]
    antonym = next(item for item in bench.items if item.category == "action_antonym")
    assert antonym.video.suffix == ".webm" and antonym.video.name == antonym.video_name

    records = json.loads((data / "json" / "action_count.json").read_text())
    counted = [item for item in bench.items if item.category == "action_count"]
    assert [item.options[item.answer] for item in counted] == [r["answer"] for r in records]
    assert counted[0].prompt.startswith(f"Question:{records[0]['question']}\nOption:\n(A) ")
    assert counted[0].prompt.endswith("Only give the best option.\n")


def test_mvbench_video_revision_layout(fixture):
    data = fixture("mvbench", "video")
    bench = read_benchmark("mvbench", data)
    assert len(bench.items) == 120
    for item in bench.items:
        spec = MVBENCH_TASKS[item.category]
        assert item.video.is_file() and item.video.is_relative_to(data / spec.revision)
        # The revision's clips are pre-cut segments: applying the annotation's bounds would cut twice.
        assert item.start_s is None and item.frame_fps is None
        assert item.meta == {"layout": "video revision"}
    by_task = {item.category: item for item in bench.items}
    assert by_task["episodic_reasoning"].video.name == by_task["episodic_reasoning"].video_name + ".mp4"
    assert by_task["action_antonym"].video.suffix == ".mp4" and by_task["action_antonym"].video_name.endswith(".webm")


def test_mvbench_single_task_json_folder_and_missing_tasks(tmp_path):
    data = write_benchmark("mvbench", tmp_path, questions=2)
    one = read_benchmark("mvbench", data / "json", "moving_direction")
    assert len(one.items) == 2 and {item.category for item in one.items} == {"moving_direction"}
    assert all(item.video.is_file() for item in one.items)   # json/ given: videos are looked for beside it
    assert read_benchmark("mvbench", data / "json" / "state_change.json").split == "state_change"
    (data / "json" / "fine_grained_pose.json").unlink()
    assert len(read_benchmark("mvbench", data, "moving_direction").items) == 2
    with pytest.raises(SaviError, match=r"missing fine_grained_pose\.json in .*json"):
        read_benchmark("mvbench", data)


def test_mvbench_answer_must_be_a_candidate(tmp_path):
    data = write_benchmark("mvbench", tmp_path, questions=2, videos=False)
    path = data / "json" / "object_shuffle.json"
    records = json.loads(path.read_text())
    records[1]["answer"] = "a purple elephant"
    path.write_text(json.dumps(records))
    with pytest.raises(SaviError, match=r"object_shuffle\.json: record 1 .*'a purple elephant' is not one of"):
        read_benchmark("mvbench", data, "object_shuffle")


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_nextqa_layouts(fixture, layout):
    data = fixture("nextqa", layout)
    video_map = json.loads((data / "map_vid_vidorID.json").read_text())
    with open(data / "val.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    bench = read_benchmark("nextqa", data, "val")
    assert [item.question_id for item in bench.items] == [f"{r['video']}_{r['qid']}" for r in rows]
    assert [item.answer for item in bench.items] == [int(r["answer"]) for r in rows]
    groups = {"C": "causal", "T": "temporal", "D": "descriptive"}
    assert [(item.meta["type"], item.category) for item in bench.items] == [(r["type"], groups[r["type"][0]])
                                                                            for r in rows]
    for item in bench.items:
        rel = video_map[item.video_name] if layout == "nested" else item.video_name
        assert item.video == data / "NExTVideo" / f"{rel}.mp4"
    test = read_benchmark("nextqa", data / "test.csv")
    assert test.split == "test" and len(test.items) == 6


def test_nextqa_hf_mirror_has_only_test(fixture):
    data = fixture("nextqa", "hf")
    bench = read_benchmark("nextqa", data)
    assert bench.split == "test" and len(bench.items) == 6
    assert all(item.video.parent == data / "NExTVideo" for item in bench.items)
    with pytest.raises(SaviError, match=r"found no val\.csv .*github\.com/doc-doc/NExT-QA"):
        read_benchmark("nextqa", data, "val")


def test_perceptiontest_valid_test_and_mirrors(fixture):
    data = fixture("perceptiontest")
    raw = json.loads((data / "mc_question_valid.json").read_text())
    valid = read_benchmark("perceptiontest", data)
    expected = [(f"{vid}_{q['id']}", q["answer_id"], q["area"], q["reasoning"])
                for vid, entry in raw.items() for q in entry["mc_question"]]
    assert [(i.question_id, i.answer, i.category, i.meta["reasoning"]) for i in valid.items] == expected
    assert all(len(item.options) == 3 for item in valid.items)
    assert valid.items[0].prompt.endswith("\nC. " + valid.items[0].options[2] +
                                          "\nAnswer with the option's letter from the given choices directly.")
    test = read_benchmark("perceptiontest", data, "test")
    assert not test.answers_public and all(item.answer is None for item in test.items)

    def key(bench):
        return [(i.question_id, i.options, i.answer, i.category, i.meta) for i in bench.items]

    assert key(read_benchmark("perceptiontest", fixture("perceptiontest", "all"))) == key(valid)
    assert key(read_benchmark("perceptiontest", fixture("perceptiontest", "hf"))) == key(valid)


def test_tempcompass_tasks(fixture):
    data = fixture("tempcompass")
    mc = read_benchmark("tempcompass", data)
    raw = json.loads((data / "questions" / "multi-choice.json").read_text())
    quirky = [q["question"] for dims in raw.values() for qs in dims.values() for q in qs
              if re.search(r"\n [A-D]\. |\n[A-D]\.\S", q["question"])]
    assert len(quirky) >= 2   # the fixture reproduces both published formatting slips
    assert [len(item.options) for item in mc.items] == [4, 3, 4, 3, 4, 3]
    assert all(item.meta["task"] == "multi-choice" and item.meta["type"] for item in mc.items)
    assert {item.category for item in mc.items} == {"direction", "action"}

    yes_no = read_benchmark("tempcompass", data, "yes_no")
    assert len(yes_no.items) == 12 and [item.answer for item in yes_no.items] == [0, 1] * 6

    matching = read_benchmark("tempcompass", data, "caption_matching")
    assert len(matching.items) == 6 and all(len(item.options) == 2 for item in matching.items)
    assert [item.options[item.answer].endswith(("from left to right.", "from right to left.", "from top to bottom.",
                                                "from bottom to top.", "does not move."))
            for item in matching.items] == [True] * 6
    with pytest.raises(SaviError, match="LLM judge"):
        read_benchmark("tempcompass", data, "captioning")


def test_longvideobench_json_and_parquet_agree(fixture):
    from_json = read_benchmark("longvideobench", fixture("longvideobench", "json"))
    from_parquet = read_benchmark("longvideobench", fixture("longvideobench", "parquet"))

    def key(bench):
        return [(i.question_id, i.options, i.answer, i.category, i.meta["duration_group"]) for i in bench.items]

    assert key(from_json) == key(from_parquet)
    assert [len(item.options) for item in from_json.items] == [4, 5, 4, 5, 4, 5]   # "N/A" padding dropped
    assert [item.meta["duration_group"] for item in from_json.items[:4]] == ["15", "60", "600", "3600"]
    assert from_json.items[0].prompt.endswith("\nAnswer with the option's letter from the given choices directly.\n")
    test = read_benchmark("longvideobench", fixture("longvideobench", "parquet"), "test")
    assert not test.answers_public and all(item.answer is None for item in test.items)


def test_videomme_parquet_and_template_agree(fixture):
    data = fixture("videomme")
    bench = read_benchmark("videomme", data)
    assert [item.question_id for item in bench.items] == ["001-1", "001-2", "001-3", "002-1", "002-2", "002-3"]
    assert all(item.video == data / "data" / f"{item.video_name}.mp4" for item in bench.items)
    assert [item.meta["duration"] for item in bench.items] == ["short"] * 3 + ["medium"] * 3
    assert bench.items[0].prompt.startswith("Select the best answer to the following multiple-choice question")
    template_data = fixture("videomme", "template")
    template = read_benchmark("videomme", template_data)
    assert [(i.question_id, i.options, i.answer, i.category, i.meta) for i in template.items] == \
        [(i.question_id, i.options, i.answer, i.category, i.meta) for i in bench.items]
    # The template has no YouTube ids, so its videos go by the "001" ids.
    expected = [template_data / "data" / f"{v:03d}.mp4" for v in (1, 1, 1, 2, 2, 2)]
    assert [item.video for item in template.items] == expected


def test_submissions_for_hidden_answer_splits(fixture):
    full = read_benchmark("egoschema", fixture("egoschema"), "full")
    predictions = {item.question_id: k % 5 for k, item in enumerate(full.items)}
    predictions[full.items[0].question_id] = None
    name, content = submission(full, predictions)
    assert name.endswith(".json")
    assert content == {item.question_id: k % 5 for k, item in enumerate(full.items) if k > 0}

    lvb = read_benchmark("longvideobench", fixture("longvideobench"), "test")
    _, content = submission(lvb, {item.question_id: 1 for item in lvb.items})
    assert content == {item.question_id: "B" for item in lvb.items}

    pt = read_benchmark("perceptiontest", fixture("perceptiontest"), "test")
    _, content = submission(pt, {pt.items[0].question_id: 2})
    assert content == [{"video_name": pt.items[0].video_name, "question": pt.items[0].question,
                        "question_id": "0", "pred_id": 2}]

    with pytest.raises(SaviError, match="out of range"):
        submission(lvb, {lvb.items[0].question_id: 7})
    with pytest.raises(SaviError, match="not have"):
        submission(lvb, {"nope": 1})
    with pytest.raises(SaviError, match="public"):
        submission(read_benchmark("nextqa", fixture("nextqa")), {})


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear SaviError line, never a traceback


def test_unknown_benchmark_and_split(tmp_path):
    with pytest.raises(SaviError) as err:
        read_benchmark("kinetics", tmp_path)
    assert str(err.value) == ("unknown benchmark 'kinetics'; known benchmarks: egoschema, mvbench, nextqa, "
                              "perceptiontest, tempcompass, longvideobench, videomme, world")
    with pytest.raises(SaviError, match=r"unknown split 'train' for NExT-QA; known splits: test, val$"):
        read_benchmark("nextqa", tmp_path, "train")


def test_missing_data_videos_and_annotation_files(tmp_path):
    with pytest.raises(SaviError, match="does not exist"):
        read_benchmark("egoschema", tmp_path / "nowhere")
    with pytest.raises(SaviError, match="videos folder .* does not exist"):
        read_benchmark("egoschema", tmp_path, videos=tmp_path / "nowhere")
    for name, expected in [("egoschema", "questions.json"), ("perceptiontest", "mc_question_valid.json"),
                           ("longvideobench", "lvb_val.json"), ("videomme", "test-00000-of-00001.parquet"),
                           ("tempcompass", r"questions/multi-choice\.json")]:
        with pytest.raises(SaviError, match=f"found no .*{expected}.* in {tmp_path}; download it from"):
            read_benchmark(name, tmp_path)
    data = write_benchmark("egoschema", tmp_path, videos=False)
    (data / "subset_answers.json").unlink()
    with pytest.raises(SaviError, match="found no subset_answers.json"):
        read_benchmark("egoschema", data)
    assert len(read_benchmark("egoschema", data, "full").items) == 6   # the full set needs no answers


def test_malformed_json_names_file_line_and_column(tmp_path):
    data = write_benchmark("perceptiontest", tmp_path, videos=False)
    path = data / "mc_question_valid.json"
    path.write_text('{"video_1": {\n  "mc_question": [}\n}')
    # The 19th character of line 2 is the "}" that should have been a value.
    with pytest.raises(SaviError, match=r"mc_question_valid\.json: invalid JSON at line 2, column 19: Expecting "):
        read_benchmark("perceptiontest", data)
    path.write_text('{"video_1": {"mc_question": [],\n}}')
    with pytest.raises(SaviError, match="trailing comma at line 1, column 31"):
        read_benchmark("perceptiontest", data)


def test_missing_field_names_record_and_file(tmp_path):
    data = write_benchmark("egoschema", tmp_path, videos=False)
    path = data / "questions.json"
    records = json.loads(path.read_text())
    del records[2]["question"]
    path.write_text(json.dumps(records))
    uid = records[2]["q_uid"]
    with pytest.raises(SaviError, match=rf"questions\.json: record 2 \(q_uid {uid}\) has no 'question' field"):
        read_benchmark("egoschema", data, "full")


def test_answers_out_of_range(tmp_path):
    data = write_benchmark("nextqa", tmp_path, videos=False)
    lines = (data / "val.csv").read_text().splitlines()
    cells = lines[2].split(",")
    cells[5] = "7"
    lines[2] = ",".join(cells)
    (data / "val.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SaviError, match=r"val\.csv: row 3: answer 7 is out of range for 5 options"):
        read_benchmark("nextqa", data, "val")

    data = write_benchmark("longvideobench", tmp_path, videos=False)
    records = json.loads((data / "lvb_val.json").read_text())
    records[0]["correct_choice"] = 4   # the first question has 4 candidates
    (data / "lvb_val.json").write_text(json.dumps(records))
    with pytest.raises(SaviError, match=r"record 0 \(id .*\): answer 4 is out of range for 4 options"):
        read_benchmark("longvideobench", data)

    data = write_benchmark("egoschema", tmp_path / "ego", videos=False)
    answers = json.loads((data / "subset_answers.json").read_text())
    answers[next(iter(answers))] = 5
    (data / "subset_answers.json").write_text(json.dumps(answers))
    with pytest.raises(SaviError, match="answer 5 is out of range for 5 options"):
        read_benchmark("egoschema", data)


def test_bad_videomme_answer_and_csv_header(tmp_path):
    data = write_benchmark("videomme", tmp_path, layout="template", videos=False)
    path = data / "output_test_template.json"
    videos = json.loads(path.read_text())
    videos[1]["questions"][0]["answer"] = "F"
    path.write_text(json.dumps(videos))
    with pytest.raises(SaviError, match=r"record 1 \(video_id 002\), question 0: answer 'F' is not a letter"):
        read_benchmark("videomme", data)

    data = write_benchmark("nextqa", tmp_path, videos=False)
    text = (data / "val.csv").read_text()
    (data / "val.csv").write_text(text.replace(",type,", ",kind,", 1))
    with pytest.raises(SaviError, match=r"val\.csv: the header has no type column"):
        read_benchmark("nextqa", data, "val")


def test_a_file_for_the_wrong_split_is_refused(fixture):
    with pytest.raises(SaviError, match="holds the val split of NExT-QA, not test"):
        read_benchmark("nextqa", fixture("nextqa") / "val.csv", "test")


def test_egoschema_subset_with_questions_missing_is_refused(tmp_path):
    data = write_benchmark("egoschema", tmp_path, videos=False)
    records = json.loads((data / "questions.json").read_text())
    (data / "questions.json").write_text(json.dumps(records[1:]))
    assert records[0]["q_uid"] in json.loads((data / "subset_answers.json").read_text())
    with pytest.raises(SaviError, match="1 of the 4 answered questions are missing"):
        read_benchmark("egoschema", data)


def test_a_large_split_resolves_only_the_videos_that_exist(tmp_path):
    # Speed is measured in benchmarks/, not asserted here; this checks resolution over 20k items is right.
    data = tmp_path / "nextqa"
    data.mkdir()
    header = "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
    rows = "".join(f"{1000000 + i // 10},1,1,1,q,{i % 5},{i % 10},CW,a,b,c,d,e\n" for i in range(20000))
    (data / "test.csv").write_text(header + rows)
    (data / "NExTVideo").mkdir()
    (data / "NExTVideo" / "1000000.mp4").write_bytes(b"")
    bench = read_benchmark("nextqa", data)
    assert len(bench.items) == 20000
    assert sum(item.video is not None for item in bench.items) == 10



def test_the_eval_help_names_every_benchmark_in_order():
    from savi_cli.commands.eval import BENCHMARK_NAMES  # hand-written there, so the CLI starts without the readers

    assert BENCHMARK_NAMES.split(", ") == list(BENCHMARKS)
