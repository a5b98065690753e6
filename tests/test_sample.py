"""`savi sample`: real videos written with PyAV, decoded through the production path."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from savi_cli.main import app
from stages import sample as sample_stage
from stages.core.errors import SaviError
from stages.core.store import open_run
from stages.core.video import load_frames, read_video
from stages.offline import videos as synthetic

CFG = sample_stage.SampleConfig(frames=8, max_side=448, workers=2)


@pytest.fixture(scope="session")
def example_set(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    synthetic.write_example_set(folder)
    return folder


def rows_by_name(run):
    return {Path(r.path).name: r for r in run.artifact("samples").read()}


def sample_run(videos, cfg=CFG, name="t", **kw):
    run = open_run(name)
    return run, sample_stage.run(run, videos, cfg, **kw)


def test_every_kind_of_input_gets_a_row_and_bad_files_say_why(example_set):
    run, result = sample_run([example_set])
    rows = rows_by_name(run)
    assert set(rows) == {"clip_h264.mp4", "clip_h264.mkv", "clip_h264.mov", "clip_vp9.webm", "clip_mpeg4.avi",
                         "phone_rotated.mp4", "vfr.mp4", "truncated.mp4", "corrupt.mkv", "empty.mp4",
                         "not_a_video.mp4"}
    assert (result.ok, result.errors) == (7, 4)
    assert rows["empty.mp4"].error == "empty file (0 bytes)"
    assert rows["corrupt.mkv"].error.startswith("not a readable video: Invalid data found")
    assert rows["not_a_video.mp4"].error.startswith("not a readable video: Invalid data found")
    assert "truncated" in rows["truncated.mp4"].error or "cannot open" in rows["truncated.mp4"].error
    for name in ("clip_h264.mkv", "clip_h264.mov", "clip_vp9.webm", "clip_mpeg4.avi"):
        row = rows[name]
        assert row.status == "ok" and row.num_frames == 48 and len(row.frame_indices) == 8
        assert len(list((run.path / row.frames_dir).glob("*.jpg"))) == 8
    assert {r.codec for r in rows.values() if r.codec} >= {"h264", "vp9", "mpeg4"}
    manifest = run.artifact("samples").manifest()
    assert manifest["counts"] == {"ok": 7, "error": 4}
    assert manifest["params"] == {"frames": 8, "fps": None, "max_side": 448}


def test_uniform_segment_midpoints_and_timestamps(tmp_path):
    spec = synthetic.write_video(tmp_path / "a.mp4", num_frames=48, fps=12)
    run, _ = sample_run([spec.path])
    row = run.artifact("samples").read()[0]
    assert row.frame_indices == [3, 9, 15, 21, 27, 33, 39, 45]  # middle of each sixth of 48 frames
    assert row.timestamps_s == pytest.approx([i / 12 for i in row.frame_indices], abs=1e-3)
    assert row.duration_s == pytest.approx(4.0, abs=0.01) and row.fps == pytest.approx(12)
    assert row.shortfall is None and row.sampling == "uniform"
    frames = load_frames(run.path / row.frames_dir)
    for k, index in enumerate(row.frame_indices):
        assert np.abs(frames[k].astype(int) - synthetic.frame_at(spec, index)).mean() < 6


def test_the_red_square_really_moves_left_to_right_in_the_stored_frames(example_set):
    run, _ = sample_run([example_set / "clip_h264.mp4"])
    row = run.artifact("samples").read()[0]
    frames = load_frames(run.path / row.frames_dir)
    red = (frames[..., 0] > 180) & (frames[..., 1] < 80) & (frames[..., 2] < 80)
    xs = [np.nonzero(mask)[1].mean() for mask in red]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 30


def test_variable_frame_rate_timestamps_are_the_real_ones(example_set):
    run, _ = sample_run([example_set / "vfr.mp4"])
    row = run.artifact("samples").read()[0]
    assert row.variable_frame_rate
    spec_times = synthetic.write_video(Path(row.path).with_name("vfr_copy.mp4"), variable_frame_rate=True,
                                       shapes=(synthetic.Shape("square", "blue", "left_to_right"),)).frame_times_s
    Path(row.path).with_name("vfr_copy.mp4").unlink()
    assert row.timestamps_s == pytest.approx([spec_times[i] for i in row.frame_indices], abs=2e-3)
    # What a constant-rate assumption (index / fps) would have claimed is wrong here.
    assert row.timestamps_s != pytest.approx([i * row.duration_s / row.num_frames for i in row.frame_indices],
                                             abs=0.05)


@pytest.mark.parametrize("suffix,rotation", [(".mp4", 90), (".mkv", 90), (".mov", 180), (".mp4", 270),
                                             (".mkv", 270)])
def test_rotated_clips_come_out_upright(tmp_path, suffix, rotation):
    # decord rotates mp4/mov itself but not mkv; either way the stored frames must be what a viewer sees.
    spec = synthetic.write_video(tmp_path / f"phone{suffix}", num_frames=24, size=(96, 64), rotation=rotation,
                                 shapes=(synthetic.Shape("square", "red", "top_to_bottom"),))
    run, _ = sample_run([spec.path], cfg=sample_stage.SampleConfig(frames=4, workers=1))
    row = run.artifact("samples").read()[0]
    assert row.rotation == rotation
    upright = synthetic.upright_frame_at(spec, 0)
    assert (row.height, row.width) == upright.shape[:2] == (row.frame_height, row.frame_width)
    frames = load_frames(run.path / row.frames_dir)
    for k, index in enumerate(row.frame_indices):
        assert np.abs(frames[k].astype(int) - synthetic.upright_frame_at(spec, index)).mean() < 6


@pytest.mark.parametrize("rotation", [0, 90])  # resized inside the decoder, or after rotating
def test_max_side_resizes_and_keeps_the_aspect(tmp_path, rotation):
    spec = synthetic.write_video(tmp_path / "wide.mp4", num_frames=12, size=(320, 160), rotation=rotation)
    run, _ = sample_run([spec.path], cfg=sample_stage.SampleConfig(frames=4, max_side=64, workers=1))
    row = run.artifact("samples").read()[0]
    upright = synthetic.upright_frame_at(spec, row.frame_indices[0])
    assert (row.height, row.width) == upright.shape[:2]
    assert max(row.frame_width, row.frame_height) == 64
    assert row.frame_width / row.frame_height == pytest.approx(row.width / row.height)
    frames = load_frames(run.path / row.frames_dir)
    from PIL import Image
    expected = np.asarray(Image.fromarray(upright).resize((row.frame_width, row.frame_height), Image.BILINEAR))
    assert np.abs(frames[0].astype(int) - expected).mean() < 8


def test_fps_mode_samples_at_a_fixed_rate_capped_at_frames(tmp_path):
    spec = synthetic.write_video(tmp_path / "a.mp4", num_frames=48, fps=12)  # 4 s
    video = read_video(spec.path, frames=32, fps=2.0)
    assert video.timestamps_s == pytest.approx([0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75], abs=0.05)
    capped = read_video(spec.path, frames=4, fps=2.0)
    assert len(capped.indices) == 4 and capped.timestamps_s[-1] > 3.0  # spread over the clip, not cut short
    assert capped.shortfall is None


def test_a_video_shorter_than_frames_keeps_all_frames_and_says_so(tmp_path):
    spec = synthetic.write_video(tmp_path / "short.mp4", num_frames=5)
    run, _ = sample_run([spec.path], cfg=sample_stage.SampleConfig(frames=32, workers=1))
    row = run.artifact("samples").read()[0]
    assert row.frame_indices == [0, 1, 2, 3, 4]
    assert row.shortfall == "kept all 5 distinct frames (32 requested, video has 5)"
    assert len(list((run.path / row.frames_dir).glob("*.jpg"))) == 5


def test_rerun_does_nothing_and_new_videos_are_sampled_alone(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    synthetic.write_video(folder / "a.mp4", num_frames=12)
    synthetic.write_video(folder / "b.mp4", num_frames=12, seed=1)
    run, first = sample_run([folder])
    art = run.artifact("samples")
    stamp = art.manifest_path.stat().st_mtime_ns
    again = sample_stage.run(run, [folder], CFG)
    assert again.up_to_date and art.manifest_path.stat().st_mtime_ns == stamp

    synthetic.write_video(folder / "c.mp4", num_frames=12, seed=2)
    shutil.copy(folder / "a.mp4", folder / "a_copy.mp4")
    added = sample_stage.run(run, [folder], CFG)
    assert (added.new, added.duplicates) == (1, 1)
    assert sorted(Path(r.path).name for r in art.read()) == ["a.mp4", "b.mp4", "c.mp4"]
    assert art.manifest()["rows_added"] == 1


def test_changed_parameters_are_refused_without_force(tmp_path):
    spec = synthetic.write_video(tmp_path / "a.mp4", num_frames=12)
    run, _ = sample_run([spec.path])
    with pytest.raises(SaviError, match=r"different parameters \(frames: 8 -> 4\)"):
        sample_stage.run(run, [spec.path], sample_stage.SampleConfig(frames=4))
    redone = sample_stage.run(run, [spec.path], sample_stage.SampleConfig(frames=4), force=True)
    assert redone.new == 1
    row = run.artifact("samples").read()[0]
    assert len(list((run.path / row.frames_dir).glob("*.jpg"))) == 4


def test_missing_inputs_and_empty_folders_fail_before_any_work(tmp_path):
    with pytest.raises(SaviError, match="no such file or folder: nope.mp4"):
        sample_run(["nope.mp4"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaviError, match="no videos found under"):
        sample_run([tmp_path / "empty"])
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4\n# comment\n\nb.mp4\n")
    with pytest.raises(SaviError, match=r"2 paths listed in .*list.txt do not exist: .*a.mp4, .*b.mp4"):
        sample_run([listing])
    assert not (open_run("t").path / "samples.parquet").exists()


def test_a_text_file_lists_videos_relative_to_itself(tmp_path):
    synthetic.write_video(tmp_path / "a.mp4", num_frames=12)
    (tmp_path / "list.txt").write_text("a.mp4\n")
    run, result = sample_run([tmp_path / "list.txt"])
    assert result.ok == 1 and run.artifact("samples").read()[0].path == str((tmp_path / "a.mp4").resolve())


def test_a_non_utf8_file_name_is_sampled_and_stored_readably(tmp_path):
    spec = synthetic.write_video(tmp_path / "a.mp4", num_frames=12)
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9.mp4")
    os.rename(spec.path, odd)
    run, result = sample_run([tmp_path])
    assert result.ok == 1
    assert run.artifact("samples").read()[0].path.endswith("caf\\xe9.mp4")
    assert sample_stage.run(run, [tmp_path], CFG).up_to_date


def crashing_worker(path, video_id, frames_root, cfg, threads):
    """Stands in for a decoder that segfaults on one particular file."""
    if path.name == "poison.mp4":
        os._exit(139)
    return sample_stage.sample_one(path, video_id, frames_root, cfg, threads)


def test_a_decoder_crash_costs_one_video_not_the_run(tmp_path):
    for n in range(4):
        synthetic.write_video(tmp_path / f"ok{n}.mp4", num_frames=12, seed=n)
    synthetic.write_video(tmp_path / "poison.mp4", num_frames=12, seed=9)
    run, result = sample_run([tmp_path], worker=crashing_worker)
    rows = rows_by_name(run)
    assert len(rows) == 5 and (result.ok, result.errors) == (4, 1)
    assert rows["poison.mp4"].error == "the decoder crashed on this file (corrupt or unsupported video)"


# ---------------------------------------------------------------------------------------------------------------
# Through the CLI


def test_cli_prints_the_artifact_path_and_reads_paths_from_stdin(tmp_path, workspace):
    a = synthetic.write_video(tmp_path / "a.mp4", num_frames=12).path
    b = synthetic.write_video(tmp_path / "b.mkv", num_frames=12, seed=1).path
    result = CliRunner().invoke(app, ["sample", "-", "--run", "cli", "--frames", "4"], input=f"{a}\n{b}\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{workspace / 'cli' / 'samples.parquet'}\n"
    assert "sampled 2 videos: 2 ok, 0 errors" in result.stderr
    again = CliRunner().invoke(app, ["sample", str(a), str(b), "--run", "cli", "--frames", "4"])
    assert again.exit_code == 0 and "up to date" in again.stderr


def test_cli_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["sample", str(tmp_path / "missing.mp4")])
    assert result.exit_code == 1
    assert result.stderr == f"Error: no such file or folder: {tmp_path / 'missing.mp4'}\n"
    # An out-of-range flag is a usage error (exit 2): Typer's usage lines, then its one `Error:` line.
    bad_frames = CliRunner().invoke(app, ["sample", str(tmp_path), "--frames", "0"])
    assert bad_frames.exit_code == 2 and bad_frames.stdout == ""
    assert bad_frames.stderr.splitlines() == [
        "Usage: savi sample [OPTIONS] {videos}...", "Try 'savi sample --help' for help.", "",
        "Error: Invalid value for '--frames': Input should be greater than or equal to 1"]


def test_cli_query_answers_in_every_format(example_set):
    runner = CliRunner()
    assert runner.invoke(app, ["sample", str(example_set), "--run", "q", "--frames", "4"]).exit_code == 0
    sql = "select status, count(*) as n from samples group by 1 order by 1"
    table = runner.invoke(app, ["query", sql])
    assert table.exit_code == 0
    assert table.stdout.splitlines() == ["status  n", "------  -", "error   4", "ok      7"]
    assert runner.invoke(app, ["query", sql, "--format", "csv"]).stdout == "status,n\nerror,4\nok,7\n"
    assert runner.invoke(app, ["query", sql, "-f", "jsonl"]).stdout == \
        '{"status": "error", "n": 4}\n{"status": "ok", "n": 7}\n'
    assert '"n": 7' in runner.invoke(app, ["query", sql, "-f", "json"]).stdout
    failed = runner.invoke(app, ["query", "select * from nowhere"])
    assert failed.exit_code == 1 and failed.stderr.startswith("Error: query failed: ")
    assert len(failed.stderr.splitlines()) == 1 and failed.stdout == ""
    status = runner.invoke(app, ["status"])
    assert "samples  done   11" in status.stdout and "1 x empty file (0 bytes)" in status.stdout


def test_kill_9_during_sample_then_rerun_gives_the_uninterrupted_result(tmp_path, workspace):
    folder = tmp_path / "v"
    folder.mkdir()
    # More than three times the 64 rows after which a part is always flushed (a slower machine also flushes once a
    # second): even the fastest machine has several parts to write, so there is more than one moment to kill it at.
    videos = 200
    for n in range(videos):
        synthetic.write_video(folder / f"clip{n}.mp4", num_frames=24, seed=n, size=(96, 64))
    savi = [sys.executable, "-c", "from savi_cli.main import app; app()"]
    args = ["sample", str(folder), "--frames", "6", "--workers", "1"]
    env = dict(os.environ, SAVI_HOME=str(workspace))
    subprocess.run(savi + args + ["--run", "clean"], env=env, check=True, capture_output=True)

    def kill_after_a_new_part(name: str) -> bool:
        """Start sampling into run `name`; SIGKILL it as soon as it has flushed a new part, so the kill lands
        mid-work whatever the machine's speed. False if it finished first."""
        parts = open_run(name).artifact("samples").parts_dir
        before = len(list(parts.glob("part-*")))
        proc = subprocess.Popen(savi + args + ["--run", name], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300  # only against a hang
        try:
            while len(list(parts.glob("part-*"))) <= before and proc.poll() is None:
                assert time.monotonic() < deadline, "sampling flushed nothing in 300 s"
                time.sleep(0.002)
        finally:
            proc.send_signal(signal.SIGKILL)  # nothing if it has already finished
            proc.wait()
        if proc.returncode != -signal.SIGKILL:
            assert proc.returncode == 0, f"sampling failed with exit code {proc.returncode}"
            return False
        return True

    # Should a run ever finish before its third kill, a fresh run starts over: never fewer kills.
    for attempt in range(3):
        name = f"killed{attempt}"
        kills = 0
        while kills < 3 and kill_after_a_new_part(name):
            kills += 1
        if kills == 3:
            break
    assert kills == 3  # it really was cut off mid-work, more than once
    assert open_run(name).artifact("samples").in_progress and not open_run(name).artifact("samples").complete
    subprocess.run(savi + args + ["--run", name], env=env, check=True, capture_output=True)

    killed, clean = open_run(name), open_run("clean")
    killed_rows = killed.artifact("samples").read()
    clean_rows = clean.artifact("samples").read()
    assert killed.artifact("samples").manifest()["resumed"] is True
    assert [r.video_id for r in killed_rows] == [r.video_id for r in clean_rows]
    assert len({r.video_id for r in killed_rows}) == videos
    for a, b in zip(killed_rows, clean_rows):
        assert (a.frame_indices, a.timestamps_s, a.status) == (b.frame_indices, b.timestamps_s, b.status)
        assert sorted(p.name for p in (killed.path / a.frames_dir).iterdir()) == [f"{k:04d}.jpg" for k in range(6)]
    assert sorted(p.name for p in killed.frames_dir.iterdir()) == sorted(r.video_id for r in killed_rows)
    assert not killed.artifact("samples").parts_dir.exists()
