"""The world whose truth is known: its files are seeded and exact, its facts are true in the decoded pixels, and
`savi eval world` scores a model on it like any other benchmark."""

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from savi_cli.main import app
from stages.benchmarks import read_benchmark
from stages.core.errors import SaviError
from stages.core.prompts import load_prompts
from stages.core.video import read_video
from stages.offline.videos import COLORS
from stages.offline.world import COLOURS, DIRECTIONS, FRAMES, SIZE, SMALL_SIZES, build_world, fingerprint

TINY = {"train": 6, "judge": 2, "pool": 2, "val": 4, "test": 10}


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def questions_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "questions.jsonl").read_text().splitlines()]


def error_line(result) -> str:
    """The one line a failed command printed."""
    assert result.exit_code == 1 and result.stdout == "", (result.stdout, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("world") / "w", seed=0, sizes=TINY)


# ---------------------------------------------------------------------------------------------------------------
# Seeded and exact


def test_the_same_seed_writes_byte_identical_worlds_and_another_seed_a_different_one(world, tmp_path):
    again = build_world(tmp_path / "again", seed=0, sizes=TINY)
    assert files_of(again) == files_of(world)
    other = build_world(tmp_path / "other", seed=1, sizes=TINY)
    assert questions_of(other) != questions_of(world)
    assert (other / "videos" / "test-0000.mp4").read_bytes() != (world / "videos" / "test-0000.mp4").read_bytes()


def test_progress_ticks_once_per_clip_written(tmp_path):
    ticks = []
    build_world(tmp_path / "w", sizes={"val": 2, "test": 3}, progress=lambda total: lambda: ticks.append(total))
    assert ticks == [5] * 5


def test_a_clip_stays_the_same_when_another_split_is_resized(world, tmp_path):
    test_only = build_world(tmp_path / "test-only", seed=0, sizes={"test": TINY["test"]})
    assert files_of(test_only / "videos") == {name: data for name, data in files_of(world / "videos").items()
                                              if name.startswith("test-")}


def test_world_json_records_the_sizes_and_a_fingerprint_of_the_content(world):
    meta = json.loads((world / "world.json").read_text())
    assert meta["sizes"] == TINY and meta["seed"] == 0 and meta["frames"] == FRAMES and meta["size"] == [SIZE, SIZE]
    assert meta["clips"] == sum(TINY.values()) and meta["questions"] == 2 * sum(TINY.values())
    assert meta["fingerprint"] == fingerprint(world)
    videos = sorted(p.name for p in (world / "videos").iterdir())
    assert videos == sorted(f"{split}-{i:04d}.mp4" for split, n in TINY.items() for i in range(n))


def test_every_split_reads_back_with_two_questions_per_clip(world):
    for split, clips in TINY.items():
        bench = read_benchmark("world", world, split)
        assert bench.answers_public and bench.split == split
        assert len(bench.items) == 2 * clips == len({item.question_id for item in bench.items})
        assert sorted(item.category for item in bench.items) == ["colour"] * clips + ["direction"] * clips
        for item in bench.items:
            assert item.video == world / "videos" / f"{item.video_name}.mp4"
            # The user turn `savi answer` writes for the question, and each option as a whole reply.
            assert item.prompt == load_prompts()["answer"].render("answer", question=item.question)
            assert len(item.replies) == len(item.options) == 4
            for option, reply in zip(item.options, item.replies):
                words = reply.rstrip(".").split()
                assert reply.endswith(".") and words[-1] == option and item.meta["shape"] in words
            assert set(item.meta) == {"shape", "colour", "direction", "lane", "axis", "shapes"}
            assert all(isinstance(value, str) for value in item.meta.values())
    assert read_benchmark("world", world).split == "test"  # the default
    # The questions file itself is accepted too, its videos found beside it.
    named = read_benchmark("world", world / "questions.jsonl", "val")
    assert [item.video for item in named.items] == [item.video for item in read_benchmark("world", world, "val").items]


def test_a_damaged_questions_file_is_one_line_naming_the_line(world, tmp_path):
    lines = (world / "questions.jsonl").read_text().splitlines()
    damaged = tmp_path / "questions.jsonl"
    damaged.write_text("\n".join(lines[:2] + [lines[2][:40]] + lines[3:]) + "\n")
    with pytest.raises(SaviError, match=f"^{damaged}: invalid JSON on line 3: .*; the world is damaged: build it "
                                        "again with `savi world`$"):
        read_benchmark("world", damaged, "train")
    record = json.loads(lines[0])
    damaged.write_text(json.dumps({**record, "target": 5}) + "\n")
    with pytest.raises(SaviError, match=rf"^{damaged}: line 1 \(question_id train-0000-direction\): 'target' 5 is "
                                        rf"not the index of one of its {len(record['shapes'])} shapes$"):
        read_benchmark("world", damaged, "train")


def test_options_are_four_distinct_with_the_answer_exactly_once(world):
    questions = questions_of(world)
    for q in questions:
        options, truth = q["options"], q["shapes"][q["target"]]
        assert len(options) == len(set(options)) == 4
        right = truth["direction"] if q["kind"] == "direction" else truth["colour"]
        assert options.count(right) == 1 and options[q["answer"]] == right
        if q["kind"] == "direction":
            assert sorted(options) == sorted(DIRECTIONS)
        else:
            assert set(options) <= set(COLOURS) and {s["colour"] for s in q["shapes"]} <= set(options)
    # Shuffled by the seed: the answer is not always in the same place.
    assert {q["answer"] for q in questions} == {0, 1, 2, 3}


# ---------------------------------------------------------------------------------------------------------------
# The facts are true in the pixels a model sees


def seen_shapes(path: Path) -> dict[str, dict[str, str]]:
    """Every shape in a clip, found from the decoded frames alone: colour -> kind, direction and lane."""
    decoded = read_video(path, frames=FRAMES)
    assert decoded.indices == list(range(FRAMES))
    frames = np.stack(decoded.frames).astype(np.float64)
    shapes = {}
    for colour, rgb in COLORS.items():
        masks = np.linalg.norm(frames - np.array(rgb, dtype=np.float64), axis=3) < 80
        if masks.sum(axis=(1, 2)).max() == 0:
            continue
        assert masks.sum(axis=(1, 2)).min() > 100, f"{path.name}: the {colour} shape is not whole in every frame"
        centres, fills = [], []
        for mask in masks:
            rows, cols = np.nonzero(mask)
            centres.append((cols.mean() + 0.5, rows.mean() + 0.5))
            fills.append(mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1)))
        (x0, y0), (x1, y1) = centres[0], centres[-1]
        horizontal = abs(x1 - x0) > abs(y1 - y0)
        travel, across = (x1 - x0, (y0 + y1) / 2) if horizontal else (y1 - y0, (x0 + x1) / 2)
        assert abs(travel) > SIZE / 2, f"{path.name}: the {colour} shape moved only {travel:.1f} px"
        direction = ("right" if travel > 0 else "left") if horizontal else ("down" if travel > 0 else "up")
        lane = "middle" if abs(across - SIZE / 2) < 4 else (
            ("top" if across < SIZE / 2 else "bottom") if horizontal else ("left" if across < SIZE / 2 else "right"))
        # A square fills its bounding box; a circle leaves the corners empty (at most 0.89 of it, measured).
        shapes[colour] = {"shape": "square" if np.median(fills) > 0.95 else "circle", "direction": direction,
                          "lane": lane}
    return shapes


def test_the_recorded_facts_and_answers_are_true_in_the_decoded_frames(world):
    questions = questions_of(world)
    for q in questions:
        seen = seen_shapes(world / "videos" / f"{q['clip_id']}.mp4")
        assert seen == {s["colour"]: {k: s[k] for k in ("shape", "direction", "lane")} for s in q["shapes"]}, q
        answer = q["options"][q["answer"]]
        if q["kind"] == "direction":
            colour, kind = re.fullmatch(r"Which way does the (\w+) (\w+) move\?", q["question"]).groups()
            assert seen[colour]["shape"] == kind and seen[colour]["direction"] == answer
        else:
            kind, direction = re.fullmatch(r"What colour is the (\w+) that moves (\w+)\?", q["question"]).groups()
            meant = [c for c, s in seen.items() if s["shape"] == kind and s["direction"] == direction]
            assert meant == [answer]
    # The clips checked hold every case: one shape and two, on either axis.
    assert {(len(q["shapes"]), q["axis"]) for q in questions} == {(n, axis) for n in (1, 2)
                                                                 for axis in ("horizontal", "vertical")}


# ---------------------------------------------------------------------------------------------------------------
# Rebuilding, and folders that are not a world


def test_rebuilding_the_same_world_leaves_it_untouched(world):
    before = {p: p.stat().st_ino for p in (world / "world.json", world / "videos" / "test-0000.mp4")}
    assert build_world(world, seed=0, sizes=TINY) == world
    assert {p: p.stat().st_ino for p in before} == before


def test_an_earlier_world_of_another_seed_or_damaged_is_replaced_whole(tmp_path, world):
    folder = build_world(tmp_path / "w", seed=1, sizes=TINY)
    build_world(folder, seed=0, sizes=TINY)
    assert files_of(folder) == files_of(world)
    (folder / "videos" / "val-0001.mp4").unlink()
    build_world(folder, seed=0, sizes=TINY)
    assert files_of(folder) == files_of(world)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary folder left beside it


@pytest.mark.parametrize(("stray", "in_a_world"), [("notes.txt", False), ("notes.txt", True),
                                                   ("videos/notes.txt", True)])
def test_a_folder_holding_files_savi_did_not_write_is_refused_and_kept(tmp_path, stray, in_a_world):
    folder = tmp_path / "w"
    if in_a_world:
        build_world(folder, seed=0, sizes={"test": 1})
    (folder / stray).parent.mkdir(parents=True, exist_ok=True)
    (folder / stray).write_text("mine")
    result = CliRunner().invoke(app, ["world", str(folder), "--small"])
    assert error_line(result) == (f"Error: {folder} holds files savi did not write, and savi never deletes them; "
                                  "give a new or empty folder for the world")
    assert (folder / stray).read_text() == "mine"


def test_bad_sizes_and_seeds_are_one_line_errors(tmp_path):
    with pytest.raises(SaviError, match="^unknown world split 'dev'; the splits are train, judge, pool, val, test$"):
        build_world(tmp_path / "w", sizes={"dev": 3})
    with pytest.raises(SaviError, match="^a world needs at least one clip"):
        build_world(tmp_path / "w", sizes={"test": 0})
    with pytest.raises(SaviError, match="^a world's seed is a whole number from 0 up, got -1$"):
        build_world(tmp_path / "w", seed=-1, sizes=TINY)
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------------------------------
# Through the CLI


@pytest.mark.slow
def test_savi_world_small_builds_the_small_sizes_and_prints_the_folder(tmp_path):
    folder = tmp_path / "w"
    result = CliRunner().invoke(app, ["world", str(folder), "--seed", "2", "--small"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout == f"{folder}\n"
    assert result.stderr == ("world of seed 2: 265 clips (train 60, judge 100, pool 60, val 15, test 30), "
                             "530 questions\n")
    meta = json.loads((folder / "world.json").read_text())
    assert meta["seed"] == 2 and meta["sizes"] == SMALL_SIZES


@pytest.mark.slow
def test_savi_eval_world_scores_one_row_per_test_question_with_known_answers(world, tiny_model, workspace):
    model = tiny_model()
    for split, table in ((None, "world"), ("val", "world-val")):
        args = ["eval", "world", "--data", str(world), "--model", str(model), "--frames", str(FRAMES),
                "--protocol", "likelihood"]   # each whole reply scored, as the proof scores them
        result = CliRunner().invoke(app, args + (["--split", split] if split else []))
        assert result.exit_code == 0, (result.output, result.exception)
        path = Path(result.stdout.strip())
        assert path.parts[-3:] == ("round=0", "eval", f"{table}.parquet") and workspace in path.parents
        rows = pq.read_table(path).to_pylist()
        expected = {item.question_id: item for item in read_benchmark("world", world, split).items}
        assert sorted(r["question_id"] for r in rows) == sorted(expected)
        assert len(rows) == 2 * TINY[split or "test"]
        for r in rows:
            item = expected[r["question_id"]]
            assert r["answer"] == item.answer and r["category"] == item.category and r["error"] is None
            assert r["num_frames"] == FRAMES and len(r["option_scores"]) == 4
            assert r["correct"] == (r["prediction"] == r["answer"])
        summary = json.loads(path.with_name(f"{table}.summary.json").read_text())
        assert summary["questions"] == len(rows) and summary["correct"] == sum(r["correct"] for r in rows)
        assert set(summary["by_category"]) == {"colour", "direction"}


@pytest.mark.slow
def test_ask_from_the_world_takes_the_pool_questions_of_the_sampled_clips_with_their_truth(world, workspace,
                                                                                            tmp_path):
    from stages.core.store import open_run

    runner = CliRunner()
    first = world / "videos" / "pool-0000.mp4"  # the pool has two clips: sample one
    assert runner.invoke(app, ["sample", str(first), "--run", "probe", "--frames", "4"]).exit_code == 0
    result = runner.invoke(app, ["ask", "--run", "probe", "--round", "1", "--from", "world", "--data", str(world),
                                 "--split", "pool"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{workspace / 'probe' / 'round=1' / 'questions.parquet'}\n"

    run = open_run("probe")
    (sample,) = run.artifact("samples").read()
    expected = [r for r in questions_of(world) if r["clip_id"] == "pool-0000"]
    got = sorted(run.artifact("questions", 1).read(), key=lambda q: q.question_id)
    assert [(q.question_id, q.video_id, q.kind, q.text, q.truth) for q in got] == sorted(
        (r["question_id"], sample.video_id, r["kind"], r["question"], r["replies"][r["answer"]]) for r in expected)
    counts = run.artifact("questions", 1).manifest()["counts"]
    assert counts == {"videos": 1, "questions": 2, "not_sampled": 2, "kind_colour": 1, "kind_direction": 1}

    # A benchmark none of whose videos the run sampled: one line, nothing written.
    line = error_line(runner.invoke(app, ["ask", "--run", "probe", "--round", "2", "--from", "world", "--data",
                                          str(world), "--split", "val"]))
    assert line.startswith("Error: none of the 8 questions of world (val) is about a video run 'probe' sampled")
    assert not run.artifact("questions", 2).path.exists()
    half = error_line(runner.invoke(app, ["ask", "--run", "probe", "--round", "2", "--from", "world"]))
    assert half == "Error: --from and --data go together: `savi ask --from BENCHMARK --data PATH`"
