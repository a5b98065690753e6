"""Inputs that used to end a whole `savi sample` or `savi eval`, or lose work: tiny videos, pipes and devices,
lists naming folders, a redo that fails, frames deleted behind savi's back. Each is one clear line, loses nothing,
and works once the input is fixed and the command rerun."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from savi_cli.main import app
from stages import sample as sample_stage
from stages.core import store
from stages.core.errors import SaviError
from stages.core.model import load_video
from stages.core.store import open_run
from stages.core.video import frame_name, load_frames
from stages.offline import videos as synthetic
from stages.offline.benchmark_files import write_benchmark

runner = CliRunner()
SAVI = [sys.executable, "-c", "from savi_cli.main import app; app()"]


def savi(*args: str | Path) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, so a command that hangs fails the test instead of stopping it."""
    return subprocess.run(SAVI + [str(a) for a in args], capture_output=True, text=True, timeout=120)


def rows_by_name(run):
    return {Path(r.path).name: r for r in run.artifact("samples").read()}


def write_tiny(path: Path, side: int) -> Path:
    shape = synthetic.Shape("square", "red", "left_to_right", size=max(2, side // 2))
    return synthetic.write_video(path, num_frames=12, size=(side, side), shapes=(shape,)).path


def snapshot(run) -> dict[str, bytes]:
    """The finished samples table, its manifest and every frame, byte for byte."""
    files = [run.path / "samples.parquet", run.path / "samples.manifest.json", *run.frames_dir.rglob("*")]
    return {str(f.relative_to(run.path)): f.read_bytes() for f in files if f.is_file()}


def frames_match_the_table(run) -> bool:
    """A finished table's every ok row has exactly its frames on disk (an unfinished table claims nothing)."""
    art = run.artifact("samples")
    if not art.complete:
        return True
    for row in art.read():
        if row.status == "ok":
            stored = sorted(p.name for p in (run.path / row.frames_dir).iterdir())
            if stored != [frame_name(k) for k in range(len(row.frame_indices))]:
                return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# Tiny videos, and the widths decord pads


def test_videos_too_small_for_a_model_are_error_rows_and_the_rest_is_sampled(tmp_path, workspace):
    folder = tmp_path / "v"
    folder.mkdir()
    for side in (2, 16, 24):
        write_tiny(folder / f"tiny{side}.mp4", side)
    synthetic.write_video(folder / "fine.mp4", num_frames=12)
    result = runner.invoke(app, ["sample", str(folder), "--run", "t", "--frames", "4"])
    assert result.exit_code == 0, result.output
    assert "sampled 4 videos: 1 ok, 3 errors" in result.stderr
    rows = rows_by_name(open_run("t"))
    assert rows["fine.mp4"].status == "ok" and len(rows["fine.mp4"].frame_indices) == 4
    for side in (2, 16, 24):
        assert rows[f"tiny{side}.mp4"].error == \
            f"the video is {side}x{side} px, too small: frames need at least 32 px on each side"

    alone = runner.invoke(app, ["sample", str(folder / "tiny16.mp4"), "--run", "alone"])
    assert alone.exit_code == 0 and "sampled 1 videos: 0 ok, 1 errors" in alone.stderr

    synthetic.write_video(folder / "tiny16.mp4", num_frames=12, seed=3)  # the input fixed: a real clip there
    again = runner.invoke(app, ["sample", str(folder), "--run", "t", "--frames", "4"])
    assert again.exit_code == 0 and "sampled 1 videos: 1 ok, 0 errors" in again.stderr


def test_widths_that_decord_pads_decode_to_the_right_pixels(tmp_path, workspace):
    # decord reports a 48 px wide frame as (H, 48, 4), and so a clip it resizes to 72 px wide.
    portrait = synthetic.write_video(tmp_path / "portrait.mp4", num_frames=12, size=(48, 96))
    result = runner.invoke(app, ["sample", str(portrait.path), "--run", "t", "--frames", "3"])
    assert result.exit_code == 0 and "1 ok" in result.stderr, result.output
    row = open_run("t").artifact("samples").read()[0]
    frames = load_frames(open_run("t").path / row.frames_dir)
    assert frames.shape == (3, 96, 48, 3)
    for k, index in enumerate(row.frame_indices):
        assert np.abs(frames[k].astype(int) - synthetic.frame_at(portrait, index)).mean() < 6

    phone = synthetic.write_video(tmp_path / "phone.mp4", num_frames=12, size=(144, 256))
    result = runner.invoke(app, ["sample", str(phone.path), "--run", "small", "--frames", "3", "--max-side", "128"])
    assert result.exit_code == 0 and "1 ok" in result.stderr, result.output
    row = open_run("small").artifact("samples").read()[0]
    assert (row.frame_width, row.frame_height) == (72, 128)
    frames = load_frames(open_run("small").path / row.frames_dir)
    expected = Image.fromarray(synthetic.frame_at(phone, row.frame_indices[0])).resize((72, 128), Image.BILINEAR)
    assert np.abs(frames[0].astype(int) - np.asarray(expected)).mean() < 8


def test_max_side_below_32_is_a_usage_error(tmp_path, workspace):
    video = synthetic.write_video(tmp_path / "a.mp4", num_frames=12).path
    result = runner.invoke(app, ["sample", str(video), "--run", "t", "--max-side", "16"])
    assert result.exit_code == 2 and "Invalid value for '--max-side'" in result.stderr
    assert not (workspace / "t").exists()


@pytest.mark.slow
def test_eval_gives_a_tiny_benchmark_video_an_error_row(tiny_model, tmp_path, workspace):
    data = write_benchmark("egoschema", tmp_path, questions=4)
    tiny = sorted(json.loads((data / "subset_answers.json").read_text()))[0]
    write_tiny(data / "videos" / f"{tiny}.mp4", 16)
    result = runner.invoke(app, ["eval", "egoschema", "--data", str(data), "--run", "t", "--frames", "4",
                                 "--model", str(tiny_model()), "--round", "0"])
    assert result.exit_code == 0, result.output
    rows = {r.question_id: r for r in open_run("t").eval_artifact("egoschema", 0).read()}
    assert rows[tiny].error == "the video is 16x16 px, too small: frames need at least 32 px on each side"
    assert rows[tiny].prediction is None and rows[tiny].correct is None
    assert all(r.error is None for q, r in rows.items() if q != tiny)


# ---------------------------------------------------------------------------------------------------------------
# A redo keeps the finished table and frames until it is whole


@pytest.fixture
def sampled(tmp_path, workspace):
    """Three clips sampled at 4 frames into run `t`; returns the folder and the run."""
    folder = tmp_path / "v"
    folder.mkdir()
    for n in range(3):
        synthetic.write_video(folder / f"clip{n}.mp4", num_frames=12, seed=n)
    assert runner.invoke(app, ["sample", str(folder), "--run", "t", "--frames", "4"]).exit_code == 0
    return folder, open_run("t")


def assert_redone_at_2_frames(run) -> None:
    art = run.artifact("samples")
    assert art.manifest()["params"]["frames"] == 2
    rows = art.read()
    assert len(rows) == 3 and all(len(r.frame_indices) == 2 for r in rows)
    assert frames_match_the_table(run)
    assert sorted(p.name for p in run.frames_dir.iterdir()) == sorted(r.video_id for r in rows)
    assert not (run.path / ".frames.redo").exists() and not (run.path / ".frames.old").exists()
    assert not art.parts_dir.exists()


def test_a_failed_force_redo_keeps_the_old_table_and_frames_and_a_rerun_finishes_it(sampled, monkeypatch):
    folder, run = sampled
    before = snapshot(run)
    real = sample_stage._sample_all

    def interrupted(*args):
        rows = real(*args)
        yield next(rows)
        raise KeyboardInterrupt  # Ctrl-C, one video into the redo

    with monkeypatch.context() as patch:
        patch.setattr(sample_stage, "_sample_all", interrupted)
        failed = runner.invoke(app, ["sample", str(folder), "--run", "t", "--frames", "2", "--force"])
    assert failed.exit_code == 130 and failed.stderr.startswith("Interrupted")
    assert snapshot(run) == before
    assert run.artifact("samples").read()[0].frame_indices == [1, 4, 7, 10]

    resumed = runner.invoke(app, ["sample", str(folder), "--run", "t", "--frames", "2"])  # no --force: it resumes
    assert resumed.exit_code == 0, resumed.output
    assert "sampled 2 videos" in resumed.stderr
    assert_redone_at_2_frames(run)


def crash(*args, **kwargs):
    raise KeyboardInterrupt  # as a kill: no cleanup runs in the steps that follow


@pytest.mark.parametrize("step", ["old frames set aside", "new frames moved in", "table written", "parts removed",
                                  "old frames removed"])
def test_a_crash_at_any_step_of_the_swap_leaves_a_consistent_run_that_a_rerun_finishes(sampled, monkeypatch, step):
    folder, run = sampled
    rename, rmtree = os.rename, sample_stage.shutil.rmtree

    def crashing_rename(src, dst, *args, **kwargs):
        if (step, Path(dst).name) == ("old frames set aside", ".frames.old") or \
                (step, Path(src).name) == ("new frames moved in", ".frames.redo"):
            crash()
        return rename(src, dst, *args, **kwargs)

    def crashing_rmtree(path, *args, **kwargs):
        if step == "old frames removed" and Path(path).name == ".frames.old":
            crash()
        return rmtree(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", crashing_rename)
        patch.setattr(sample_stage.shutil, "rmtree", crashing_rmtree)
        if step == "table written":
            patch.setattr(sample_stage.ArtifactWriter, "finish", crash)
        if step == "parts removed":
            patch.setattr(store, "_remove_parts", crash)
        failed = runner.invoke(app, ["sample", str(folder), "--run", "t", "--frames", "2", "--force"])
    assert failed.exit_code == 130
    assert frames_match_the_table(run)  # the old table with the old frames, the new with the new, or none yet

    rerun = runner.invoke(app, ["sample", str(folder), "--run", "t", "--frames", "2"])
    assert rerun.exit_code == 0, rerun.output
    assert_redone_at_2_frames(run)


# ---------------------------------------------------------------------------------------------------------------
# Frames deleted or cut short behind savi's back


def test_deleted_or_incomplete_frames_are_sampled_again_as_the_model_stages_advise(tmp_path, workspace):
    folder = tmp_path / "v"
    folder.mkdir()
    for n in range(3):
        synthetic.write_video(folder / f"clip{n}.mp4", num_frames=12, seed=n)
    assert runner.invoke(app, ["sample", str(folder), "--run", "t"]).exit_code == 0
    run = open_run("t")
    before = snapshot(run)
    rows = rows_by_name(run)
    gone, cut = rows["clip0.mp4"], rows["clip1.mp4"]
    store.shutil.rmtree(run.path / gone.frames_dir)
    for name in (frame_name(3), frame_name(7)):
        (run.path / cut.frames_dir / name).unlink()

    with pytest.raises(SaviError) as error:
        load_video(run, gone)
    advice = str(error.value).split("`")[1]
    assert advice == f"savi sample {gone.path} --run t"
    for command in (shlex.split(advice)[1:], ["sample", cut.path, "--run", "t"]):
        repaired = runner.invoke(app, command)
        assert repaired.exit_code == 0, repaired.output
        assert "sampled 1 videos (1 of them again: their frames were gone): 1 ok, 0 errors" in repaired.stderr
    assert snapshot(run) == before
    assert runner.invoke(app, ["sample", str(folder), "--run", "t"]).stderr.startswith("samples up to date")


# ---------------------------------------------------------------------------------------------------------------
# Pipes, devices, and lists that name folders


def test_pipes_and_devices_are_refused_at_once_in_one_line(tmp_path, workspace):
    os.mkfifo(tmp_path / "pipe.mp4")
    os.mkfifo(tmp_path / "pipe.txt")
    env_run = ["--run", "t", "--workspace", str(workspace)]
    for path, kind in ((tmp_path / "pipe.mp4", "a named pipe"), (tmp_path / "pipe.txt", "a named pipe"),
                       (Path("/dev/zero"), "a device")):
        result = savi("sample", path, *env_run)
        assert result.returncode == 1
        assert result.stderr == f"Error: {path} is not a regular file ({kind}); give video files, folders, or " \
                                "text files listing them\n"

    listing = tmp_path / "list.txt"
    video = synthetic.write_video(tmp_path / "a.mp4", num_frames=12).path
    listing.write_text("a.mp4\npipe.mp4\n/dev/zero\n")
    result = savi("sample", listing, *env_run)
    assert result.returncode == 1
    assert result.stderr == f"Error: 2 paths listed in {listing} are not regular files (pipes, devices or " \
                            f"sockets): {tmp_path / 'pipe.mp4'}, /dev/zero\n"
    assert not (workspace / "t").exists()

    listing.write_text("a.mp4\n")  # the input fixed
    assert savi("sample", listing, *env_run).returncode == 0
    assert [r.path for r in open_run("t").artifact("samples").read()] == [str(video)]


def test_a_pipe_inside_a_folder_is_skipped(tmp_path, workspace):
    synthetic.write_video(tmp_path / "a.mp4", num_frames=12)
    os.mkfifo(tmp_path / "pipe.mp4")
    result = savi("sample", tmp_path, "--run", "t", "--workspace", workspace)
    assert result.returncode == 0 and "sampled 1 videos: 1 ok, 0 errors" in result.stderr


def test_a_folder_named_in_a_list_is_searched_like_a_folder_argument(tmp_path, workspace):
    (tmp_path / "clips" / "more").mkdir(parents=True)
    synthetic.write_video(tmp_path / "clips" / "a.mp4", num_frames=12)
    synthetic.write_video(tmp_path / "clips" / "more" / "b.mkv", num_frames=12, seed=1)
    synthetic.write_video(tmp_path / "c.mp4", num_frames=12, seed=2)
    (tmp_path / "list.txt").write_text("clips\nc.mp4\n")
    result = runner.invoke(app, ["sample", str(tmp_path / "list.txt"), "--run", "t", "--frames", "2"])
    assert result.exit_code == 0, result.output
    assert sorted(rows_by_name(open_run("t"))) == ["a.mp4", "b.mkv", "c.mp4"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.txt").write_text("empty\n")
    empty = runner.invoke(app, ["sample", str(tmp_path / "list.txt"), "--run", "t", "--frames", "2"])
    assert empty.exit_code == 1 and empty.stderr.startswith(f"Error: no videos found under {tmp_path / 'empty'}")
