"""The CLIP trained on the world: seeded and exact, loadable as any `local-dir:` CLIP, trained on the frames a run
stores, with a record of how it was trained and how well it judges; and what it refuses.

Everything runs on a world of a few clips for a few dozen steps, so no test claims the model learned direction:
the figures on the default world are in the module's comments and in each build's `world_training.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages.core.clip import ClipScorer
from stages.core.errors import SaviError
from stages.core.settings import ClipConfig
from stages.core.store import file_sha256
from stages.offline.world import build_world
from stages.offline.world_clip import RECORD_NAME, WEIGHTS_NAME, build_world_clip

SIZES = {"judge": 12, "val": 3}
STEPS = 120
QUICK = {"steps": STEPS, "batch_clips": 6, "learning_rate": 2e-3}


def record_of(folder: Path) -> dict:
    return json.loads((folder / RECORD_NAME).read_text())


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("world") / "w", seed=0, sizes=SIZES)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> Path:
    return build_world_clip(tmp_path_factory.mktemp("clip") / "c", world, seed=0, **QUICK)


# ---------------------------------------------------------------------------------------------------------------
# Seeded and exact


@pytest.mark.slow
def test_the_same_seed_trains_the_same_weights_and_another_seed_other_ones(world, trained, tmp_path):
    again = build_world_clip(tmp_path / "again", world, seed=0, **QUICK)
    other = build_world_clip(tmp_path / "other", world, seed=1, **QUICK)
    weights = (trained / WEIGHTS_NAME).read_bytes()
    assert (again / WEIGHTS_NAME).read_bytes() == weights
    assert (other / WEIGHTS_NAME).read_bytes() != weights
    assert record_of(again)["loss"] == record_of(trained)["loss"]
    assert record_of(again)["val_accuracy"] == record_of(trained)["val_accuracy"]


@pytest.mark.slow
def test_training_runs_in_one_thread_one_tick_a_step_and_restores_the_thread_count(world, tmp_path):
    import torch

    threads_during: list[int] = []

    def progress(total: int):
        assert total == 5
        return lambda: threads_during.append(torch.get_num_threads())

    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        build_world_clip(tmp_path / "c", world, steps=5, batch_clips=4, progress=progress)
        assert threads_during == [1] * 5
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


@pytest.mark.slow
def test_the_loss_falls_on_a_small_world(trained):
    loss = record_of(trained)["loss"]
    assert len(loss) == 10
    assert loss[-1] < 0.8 * loss[0], loss


# ---------------------------------------------------------------------------------------------------------------
# Loaded and scored as the filter does


@pytest.mark.slow
@pytest.mark.parametrize("frames", ["each", "grid"])
def test_it_loads_through_clip_scorer_and_scores_a_runs_frames_of_the_world(world, trained, frames):
    from stages import sample
    from stages.core.store import open_run

    run = open_run("w")
    sample.run(run, [world / "videos" / "val-0000.mp4"], sample.SampleConfig(workers=1))
    (row,) = run.artifact("samples").read()
    scorer = ClipScorer.load(ClipConfig(model=f"local-dir:{trained}", frames=frames, device="cpu"))
    replies = [json.loads(line)["replies"] for line in (world / "questions.jsonl").read_text().splitlines()
               if json.loads(line)["clip_id"] == "val-0000"]
    texts = [reply for question in replies for reply in question]
    # Every reply fits the 16-token context whole: scored as one segment, not cut into word windows.
    assert all(scorer.segments(text) == [text] for text in texts)
    scores = scorer.score_texts(run, row, texts)
    assert len(scores) == 8 and all(-1.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) > 1


@pytest.mark.slow
def test_it_trains_on_the_very_frames_a_run_stores_for_a_clip(world, trained):
    from stages import sample
    from stages.core.store import open_run
    from stages.core.video import load_frames
    from stages.offline.world_clip import _stored_frames

    run = open_run("w")
    sample.run(run, [world / "videos" / "judge-0003.mp4"], sample.SampleConfig(workers=1))
    (row,) = run.artifact("samples").read()
    stored = load_frames(run.path / row.frames_dir)
    assert stored.shape[0] == 8
    assert np.array_equal(_stored_frames(world, ["judge-0003"], 8)["judge-0003"], stored)


# ---------------------------------------------------------------------------------------------------------------
# The record


@pytest.mark.slow
def test_the_record_names_the_world_the_settings_and_the_val_accuracy_per_view_and_kind(world, trained):
    record = record_of(trained)
    world_json = json.loads((world / "world.json").read_text())
    assert record["world"]["fingerprint"] == world_json["fingerprint"]
    assert record["world"]["seed"] == 0
    assert record["params"]["seed"] == 0 and record["params"]["steps"] == STEPS
    assert record["judge_clips"] == SIZES["judge"] and record["val_clips"] == SIZES["val"]
    assert record["seconds"] >= 0
    assert record["weights_sha256"] == file_sha256(trained / WEIGHTS_NAME)
    for view in ("each", "grid"):
        accuracy = record["val_accuracy"][view]
        # 3 wrong replies per question, one question of each kind per clip, one of them the reversed direction.
        assert accuracy["pairs"] == {"direction": 3 * SIZES["val"], "direction_reversed": SIZES["val"],
                                     "colour": 3 * SIZES["val"]}
        assert all(0.0 <= accuracy[kind] <= 1.0 for kind in ("direction", "direction_reversed", "colour"))
    assert sorted(p.name for p in trained.iterdir()) == sorted(
        ["open_clip_config.json", WEIGHTS_NAME, RECORD_NAME])


@pytest.mark.slow
def test_an_intact_build_is_kept_and_other_settings_replace_it_whole(world, tmp_path):
    out = build_world_clip(tmp_path / "c", world, steps=3, batch_clips=4)
    before = (out / WEIGHTS_NAME).stat()
    assert build_world_clip(out, world, steps=3, batch_clips=4) == out
    after = (out / WEIGHTS_NAME).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    build_world_clip(out, world, steps=4, batch_clips=4)
    assert record_of(out)["params"]["steps"] == 4


# ---------------------------------------------------------------------------------------------------------------
# Refusals


def test_a_folder_that_is_not_a_world_is_refused(tmp_path):
    (tmp_path / "videos").mkdir()
    with pytest.raises(SaviError, match="is not a savi world") as excinfo:
        build_world_clip(tmp_path / "c", tmp_path / "videos", steps=1)
    one_line_error(excinfo)
    assert not (tmp_path / "c").exists()


def test_a_damaged_world_is_refused(world, tmp_path):
    import shutil

    damaged = tmp_path / "w"
    shutil.copytree(world, damaged)
    questions = damaged / "questions.jsonl"
    questions.write_text(questions.read_text().replace("red", "blue"))
    with pytest.raises(SaviError, match="damaged") as excinfo:
        build_world_clip(tmp_path / "c", damaged, steps=1)
    one_line_error(excinfo)


def test_a_world_without_a_val_split_is_refused(tmp_path):
    judge_only = build_world(tmp_path / "w", sizes={"judge": 2})
    with pytest.raises(SaviError, match="2 judge and 0 val clips") as excinfo:
        build_world_clip(tmp_path / "c", judge_only, steps=1)
    one_line_error(excinfo)


def test_an_output_folder_with_files_savi_did_not_write_is_refused_and_left_alone(world, tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SaviError, match="savi did not write") as excinfo:
        build_world_clip(out, world, steps=1)
    one_line_error(excinfo)
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_an_output_path_that_is_a_file_is_refused(world, tmp_path):
    out = tmp_path / "c"
    out.write_text("mine")
    with pytest.raises(SaviError, match="is a file") as excinfo:
        build_world_clip(out, world, steps=1)
    one_line_error(excinfo)
    assert out.read_text() == "mine"


@pytest.mark.parametrize("settings, words", [
    ({"steps": 0}, "number of steps is a whole number from 1 up"),
    ({"seed": -1}, "seed is a whole number from 0 up"),
    ({"batch_clips": 0}, "clips per step is a whole number from 1 up"),
    ({"learning_rate": 0.0}, "learning rate is a number between 0 and 1"),
])
def test_settings_out_of_range_are_refused(world, tmp_path, settings, words):
    with pytest.raises(SaviError, match=words) as excinfo:
        build_world_clip(tmp_path / "c", world, **settings)
    one_line_error(excinfo)


@pytest.mark.slow
def test_savi_tiny_clip_world_trains_and_prints_a_folder_savi_filter_loads(world, tmp_path):
    from typer.testing import CliRunner

    from savi_cli.main import app
    from stages.core.clip import ClipConfig, ClipScorer

    out = tmp_path / "world-clip"
    result = CliRunner().invoke(app, ["tiny-clip", str(out), "--world", str(world), "--steps", "3", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert record_of(out)["params"]["steps"] == 3 and record_of(out)["params"]["seed"] == 2
    ClipScorer.load(ClipConfig(model=f"local-dir:{out}", device="cpu"))
