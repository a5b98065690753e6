"""Bad inputs, through the real CLI: each gives one clear `Error:` line (or, for a bad video, an error row while the
run goes on), leaves every finished table as it was, and the same command works once the cause is gone."""

import errno
import hashlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from builders import save_random_adapter, write_pairs
from PIL import Image
from typer.testing import CliRunner

from savi_cli.main import app
from stages.core import store
from stages.core.store import open_run
from stages.offline import videos as synthetic
from stages.offline.benchmark_files import write_benchmark

SAVI = [sys.executable, "-c", "from savi_cli.main import app; app()"]


def savi(*args, input=None):
    return CliRunner().invoke(app, [os.fsdecode(a) if isinstance(a, (bytes, Path)) else str(a) for a in args],
                              input=input)


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def error_line(result, code=1) -> str:
    """The one line a failed command printed: `Error: ...`, no traceback, nothing on stdout."""
    assert result.exit_code == code, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash; `.lock` holds the pid of the last writer and is left out."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def finished(run, table="samples"):
    """The finished table and its manifest, as bytes."""
    art = run.artifact(table)
    return art.path.read_bytes(), art.manifest_path.read_bytes()


def samples(run):
    return {Path(r.path).name: r for r in run.artifact("samples").read()}


def assert_frames_whole(run, frames):
    """Every frame folder a reader can see holds all its frames, each a complete JPEG; no temporary is left."""
    for folder in run.frames_dir.iterdir():
        assert not folder.name.startswith("."), f"leftover {folder}"
        jpegs = sorted(folder.glob("*.jpg"))
        assert [p.name for p in jpegs] == [f"{k:04d}.jpg" for k in range(frames)]
        for jpeg in jpegs:
            Image.open(jpeg).load()  # raises on a truncated file


# ---------------------------------------------------------------------------------------------------------------
# Videos: a bad one becomes an error row with its reason, and the run goes on


def write_zero_frames(path: Path, fmt: str, codec: str) -> Path:
    """A container with a video stream header and not one frame."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path


BAD_VIDEOS = {
    "corrupt": ("corrupt.mp4", synthetic.write_corrupt,
                "not a readable video: Invalid data found when processing input"),
    "empty": ("empty.mp4", synthetic.write_empty, "empty file (0 bytes)"),
    "zero-frames-avi": ("zero.avi", lambda p: write_zero_frames(p, "avi", "mpeg4"),
                        "the video stream has no decodable frames"),
    "zero-frames-mkv": ("zero.mkv", lambda p: write_zero_frames(p, "matroska", "libx264"),
                        "not a readable video: End of file (the file ends before its first frame: it is cut short "
                        "or has no frames)"),
    "zero-frames-mp4": ("zero.mp4", lambda p: write_zero_frames(p, "mp4", "libx264"),
                        "no video stream (container mov,mp4,m4a,3gp,3g2,mj2)"),
    "not-a-video": ("notes.mp4", synthetic.write_not_a_video,
                    "not a readable video: Invalid data found when processing input"),
    "truncated": ("cut.mkv", lambda p: synthetic.truncate(synthetic.write_video(p, num_frames=12).path, 0.02),
                  "not a readable video: Input/output error (the file is cut short or damaged)"),
}


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    """One good clip and one file of every bad kind, sampled together into run `t` of a workspace of their own."""
    root = tmp_path_factory.mktemp("bad-videos")
    folder = root / "videos"
    synthetic.write_video(folder / "good.mp4", num_frames=12)
    for name, write, _ in BAD_VIDEOS.values():
        write(folder / name)
    result = savi("sample", folder, "--run", "t", "--frames", "4", "--workspace", root / "runs")
    return folder, store.Run(root / "runs" / "t"), result


@pytest.mark.parametrize("kind", BAD_VIDEOS)
def test_a_bad_video_becomes_an_error_row_and_the_run_goes_on(kind, bad_videos):
    folder, run, result = bad_videos
    name, _, reason = BAD_VIDEOS[kind]
    assert result.exit_code == 0, result.output
    assert result.stderr == f"sampled {len(BAD_VIDEOS) + 1} videos: 1 ok, {len(BAD_VIDEOS)} errors\n"
    row = samples(run)[name]
    assert (row.status, row.error) == ("error", reason)
    assert row.frames_dir is None and not (run.frames_dir / row.video_id).exists()
    assert samples(run)["good.mp4"].status == "ok"
    shown = ok(savi("query", f"select error from samples where path = '{folder / name}'", "-f", "jsonl",
                    "--workspace", run.path.parent))
    assert json.loads(shown.stdout) == {"error": reason}
    status = ok(savi("status", "--workspace", run.path.parent))
    assert f"error {len(BAD_VIDEOS)}, ok 1" in status.stdout


def test_bad_videos_leave_nothing_half_done_and_good_replacements_are_sampled(tmp_path):
    folder = tmp_path / "videos"
    synthetic.write_video(folder / "good.mp4", num_frames=12)
    for name, write, _ in BAD_VIDEOS.values():
        write(folder / name)
    args = ["sample", folder, "--run", "t", "--frames", "4"]
    ok(savi(*args))
    run = open_run("t")
    assert_frames_whole(run, 4)                                   # one whole folder, for the good clip
    assert len(list(run.frames_dir.iterdir())) == 1
    before = finished(run)
    assert ok(savi(*args)).stderr == "samples up to date: nothing new to sample\n"
    assert finished(run) == before

    # The user replaces each bad file with a real video: exactly those are sampled, once each.
    for seed, (name, _, _) in enumerate(BAD_VIDEOS.values()):
        (folder / name).unlink()
        synthetic.write_video(folder / f"{Path(name).stem}-{seed}.mp4", num_frames=12, seed=seed + 1)
    assert ok(savi(*args)).stderr == f"sampled {len(BAD_VIDEOS)} videos: {len(BAD_VIDEOS)} ok, 0 errors\n"
    rows = run.artifact("samples").read()
    assert sum(r.status == "ok" for r in rows) == len(BAD_VIDEOS) + 1
    assert len({r.video_id for r in rows}) == len(rows) == 2 * len(BAD_VIDEOS) + 1   # the old error rows stay
    assert_frames_whole(run, 4)


def test_a_huge_resolution_is_sampled_and_resized_to_max_side(tmp_path, workspace):
    folder = tmp_path / "videos"
    folder.mkdir()
    synthetic.write_huge(folder / "huge.mp4")
    # What this costs in memory depends on the machine: benchmarks/bench_huge_video_peak_memory.py measures it.
    args = ["sample", str(folder), "--run", "t", "--frames", "6", "--max-side", "64",
            "--workers", str(os.cpu_count() or 1)]
    done = subprocess.run([*SAVI, *args], capture_output=True, text=True,
                          env=dict(os.environ, SAVI_HOME=str(workspace)))
    assert done.returncode == 0 and done.stderr == "sampled 1 videos: 1 ok, 0 errors\n", done.stderr
    assert done.stdout == f"{workspace / 't' / 'samples.parquet'}\n"

    row = samples(open_run("t"))["huge.mp4"]
    assert (row.status, row.width, row.height) == ("ok", 8000, 8000)
    assert (row.frame_width, row.frame_height) == (64, 64) and len(row.frame_indices) == 6
    frames = [np.asarray(Image.open(p)) for p in sorted((open_run("t").path / row.frames_dir).glob("*.jpg"))]
    assert len(frames) == 6 and all(f.shape == (64, 64, 3) for f in frames)
    assert np.abs(frames[0][8, 8].astype(int) - (255, 0, 0)).max() < 40      # the red quarter, scaled down
    assert np.abs(frames[0][48, 48].astype(int) - (120, 120, 120)).max() < 40


def test_a_file_name_that_is_not_utf8_is_sampled_and_shown_readably(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    good = os.path.join(os.fsencode(folder), b"caf\xe9.mp4")
    bad = os.path.join(os.fsencode(folder), b"na\xefve.mp4")
    synthetic.write_video(os.fsdecode(good), num_frames=12)
    synthetic.write_corrupt(os.fsdecode(bad))

    missing = os.path.join(os.fsencode(folder), b"gone\xe9.mp4")
    line = error_line(savi("sample", missing, "--run", "t"))
    assert line == f"Error: no such file or folder: {folder}/gone\\xe9.mp4"   # as savi stores such names
    assert not open_run("t").path.exists()  # not even an empty run folder

    result = ok(savi("sample", folder, "--run", "t", "--frames", "4"))
    assert result.stderr == "sampled 2 videos: 1 ok, 1 errors\n"
    rows = {r.path: r for r in open_run("t").artifact("samples").read()}
    assert rows[f"{folder}/caf\\xe9.mp4"].status == "ok"
    assert rows[f"{folder}/na\\xefve.mp4"].error == "not a readable video: Invalid data found when processing input"
    assert_frames_whole(open_run("t"), 4)
    query = ok(savi("query", "select path from samples where status = 'ok'", "-f", "csv"))
    assert query.stdout == f"path\n{folder}/caf\\xe9.mp4\n"
    # The file itself, named on the command line, is the same video: nothing new.
    assert ok(savi("sample", good, "--run", "t", "--frames", "4")).stderr == \
        "samples up to date: nothing new to sample\n"


# ---------------------------------------------------------------------------------------------------------------
# Benchmark annotation files


def drop_egoschema_option(data: Path) -> None:
    questions = json.loads((data / "questions.json").read_text())
    del questions[1]["option 3"]
    (data / "questions.json").write_text(json.dumps(questions))


def cut_json(data: Path) -> None:
    text = (data / "questions.json").read_text()
    (data / "questions.json").write_text(text[:len(text) // 2])


def drop_nextqa_answer(data: Path) -> None:
    lines = [line.split(",") for line in (data / "test.csv").read_text().splitlines()]
    column = lines[0].index("answer")
    (data / "test.csv").write_text("".join(",".join(f[:column] + f[column + 1:]) + "\n" for f in lines))


def add_trailing_commas(data: Path) -> None:
    template = data / "output_test_template.json"
    template.write_text(template.read_text().replace('"response": ""', '"response": "",'))


BAD_FILES = {
    "egoschema-missing-option": ("egoschema", "github", drop_egoschema_option,
                                 r"egoschema/questions\.json: record 1 \(q_uid [0-9a-f-]{36}\) has no 'option 3' "
                                 r"field; the file is damaged or not in the benchmark's published format: download "
                                 r"it again"),
    "egoschema-malformed-json": ("egoschema", "github", cut_json,
                                 r"egoschema/questions\.json: invalid JSON at line 1, column \d+: .+; the file is "
                                 r"damaged or cut short: download it again"),
    "nextqa-missing-column": ("nextqa", "flat", drop_nextqa_answer,
                              r"nextqa/test\.csv: the header has no answer column\(s\); found video, frame_count, "
                              r"width, height, question, qid, type, a0, a1, a2, a3, a4"),
    "videomme-trailing-commas": ("videomme", "template", add_trailing_commas,
                                 r"Video-MME/output_test_template\.json: invalid JSON: trailing comma at line 19, "
                                 r"column 31 \(before '}'\); strict JSON allows none, remove it"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_FILES)
def test_a_broken_benchmark_file_is_named_and_nothing_is_written(case, tiny_model, tmp_path, workspace):
    benchmark, layout, damage, message = BAD_FILES[case]
    data = write_benchmark(benchmark, tmp_path, questions=3, layout=layout)
    args = ["eval", benchmark, "--data", data, "--run", "t", "--round", "0", "--model", tiny_model(), "--frames", "2"]
    ok(savi(*args))                                              # an earlier evaluation, finished
    before = snapshot(workspace)

    damage(data)
    line = error_line(savi(*args))
    assert re.fullmatch(f"Error: {re.escape(str(tmp_path))}/{message}", line), line
    assert snapshot(workspace) == before

    write_benchmark(benchmark, tmp_path, questions=3, layout=layout)  # the file as published again
    assert "round 0: lmms-eval accuracy" in ok(savi(*args)).stderr
    assert snapshot(workspace) == before                         # the same file: the finished table stands


# ---------------------------------------------------------------------------------------------------------------
# Runs: a round that is not there, an adapter that is not there


@pytest.mark.slow
def test_answering_a_round_that_has_no_questions(sampled_run, tiny_model, workspace):
    import tomllib

    model = tiny_model()
    before = snapshot(workspace)
    settings = tomllib.loads((sampled_run.path / "savi.toml").read_text())
    line = error_line(savi("answer", "--run", "t", "--round", "3", "--model", model))
    assert line == "Error: round 3 of run 't' has no questions yet; run `savi ask --run t --round 3` first"
    assert snapshot(workspace) == before and not sampled_run.round_dir(3).exists()

    ok(savi("ask", "--run", "t", "--round", "1", "--model", model, "--per-video", "2", "--max-new-tokens", "8"))
    ok(savi("answer", "--run", "t", "--round", "1", "--max-new-tokens", "8"))
    assert sampled_run.artifact("answers", 1).complete
    # Every file that was there is as it was; savi.toml only gained the model the run now aligns.
    assert {k: v for k, v in snapshot(workspace).items() if k in before and k != "t/savi.toml"} == \
        {k: v for k, v in before.items() if k != "t/savi.toml"}
    assert tomllib.loads((sampled_run.path / "savi.toml").read_text()) == {**settings, "model": {"id": str(model)}}


@pytest.mark.slow
def test_evaluating_a_round_that_was_never_trained(tiny_model, tmp_path, workspace):
    data = write_benchmark("egoschema", tmp_path, questions=3)
    args = ["eval", "egoschema", "--data", data, "--run", "t", "--round", "5", "--model", tiny_model(),
            "--frames", "2"]
    before = snapshot(workspace)
    line = error_line(savi(*args))
    assert line == ("Error: round 5 of run 't' has no trained adapter (no round is trained); "
                    "run `savi dpo --run t --round 5` first")
    assert snapshot(workspace) == before

    save_random_adapter(open_run("t"), 5, tiny_model)
    assert "egoschema round 5: lmms-eval accuracy" in ok(savi(*args)).stderr
    assert open_run("t").eval_artifact("egoschema", 5).complete


@pytest.mark.slow
def test_training_round_2_before_round_1(sampled_run, tiny_model, workspace):
    write_pairs(sampled_run, 2)
    art = sampled_run.artifact("pairs", 2)
    pairs = (art.path.read_bytes(), art.manifest_path.read_bytes())
    args = ["dpo", "--run", "t", "--round", "2", "--model", tiny_model(), "--no-4bit", "--max-steps", "1",
            "--batch-size", "2", "--grad-accum", "1"]
    before = snapshot(workspace)
    line = error_line(savi(*args))
    assert line == ("Error: round 2 starts from the policy trained in round 1, but round 1 of run 't' has no trained "
                    "adapter (no round is trained); run `savi dpo --run t --round 1` first")
    assert snapshot(workspace) == before

    save_random_adapter(sampled_run, 1, tiny_model)
    done = ok(savi(*args))
    assert done.stdout.strip().endswith("round=2/adapter")
    assert (sampled_run.round_dir(2) / "adapter" / "adapter_config.json").is_file()
    assert (art.path.read_bytes(), art.manifest_path.read_bytes()) == pairs


@pytest.mark.slow
def test_a_deleted_adapter_is_named_with_the_command_that_makes_it(sampled_run, tiny_model, workspace):
    import shutil

    model = tiny_model()
    save_random_adapter(sampled_run, 1, tiny_model)
    shutil.rmtree(sampled_run.round_dir(1) / "adapter")
    before = snapshot(workspace)
    line = error_line(savi("ask", "--run", "t", "--round", "2", "--model", model, "--per-video", "2",
                           "--max-new-tokens", "8"))
    assert line == ("Error: round 2 starts from the policy trained in round 1, but round 1 of run 't' has no trained "
                    "adapter (no round is trained); run `savi dpo --run t --round 1` first")
    assert snapshot(workspace) == before

    save_random_adapter(sampled_run, 1, tiny_model)
    ok(savi("ask", "--run", "t", "--round", "2", "--model", model, "--per-video", "2", "--max-new-tokens", "8"))
    assert sampled_run.artifact("questions", 2).complete


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["weights-missing", "weights-truncated"])
def test_a_damaged_adapter_gives_one_error_line(damage, tiny_model, tmp_path):
    save_random_adapter(open_run("t"), 1, tiny_model)
    weights = open_run("t").round_dir(1) / "adapter" / "adapter_model.safetensors"
    if damage == "weights-missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    data = write_benchmark("egoschema", tmp_path, questions=3)
    line = error_line(savi("eval", "egoschema", "--data", data, "--run", "t", "--round", "1", "--model",
                           tiny_model(), "--frames", "2"))
    assert "adapter" in line and "savi dpo --run t --round 1 --force" in line


# ---------------------------------------------------------------------------------------------------------------
# A full disk


def test_a_file_size_limit_hit_mid_sample_gives_one_line_and_a_rerun_completes(tmp_path, workspace):
    folder = tmp_path / "videos"
    for n in range(4):
        synthetic.write_video(folder / f"a{n}.mp4", num_frames=12, seed=n)                  # JPEGs of ~2 kB
    args = ["sample", folder, "--run", "t", "--frames", "4", "--max-side", "640", "--workers", "1"]
    ok(savi(*args))
    run = open_run("t")
    earlier = finished(run)
    for n in range(2):
        synthetic.write_video(folder / f"a{n + 4}.mp4", num_frames=12, seed=n + 4)
        synthetic.write_video(folder / f"b{n}.mp4", num_frames=12, seed=n + 8, size=(640, 480))  # ~40 kB JPEGs

    # No file may grow past 20 kB: the new small videos and their table parts (~7 kB) fit, a large video's
    # frames do not. The kernel then fails the write with EFBIG, as a full disk fails it with ENOSPC.
    limit = 20_000

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    full = subprocess.run(SAVI + [str(a) for a in args], capture_output=True, text=True, preexec_fn=limit_file_size,
                          env=dict(os.environ, SAVI_HOME=str(workspace)))
    assert full.returncode == 1 and full.stdout == ""
    assert re.fullmatch(
        rf"Error: File too large: {re.escape(str(run.frames_dir))}/\.[0-9a-f]{{16}}\.tmp-\d+/0000\.jpg; a file-size "
        r"limit was reached \(see `ulimit -f`\): raise it, then rerun the same command to resume \(finished items "
        r"are saved\)\n", full.stderr), full.stderr
    assert finished(run) == earlier                                # the finished table is untouched
    assert run.artifact("samples").in_progress                    # the new rows wait in parts, not in the table
    assert {r.path for r in run.artifact("samples").read()} == {str(folder / f"a{n}.mp4") for n in range(4)}
    visible = [p for p in run.frames_dir.iterdir() if not p.name.startswith(".")]
    assert len(visible) >= 4
    for frames in visible:                                         # no truncated JPEG in a finished-looking folder
        assert len(list(frames.glob("*.jpg"))) == 4
        for jpeg in frames.glob("*.jpg"):
            Image.open(jpeg).load()

    again = ok(savi(*args))
    assert again.stderr == "sampled 2 videos: 2 ok, 0 errors\n"    # only what the full disk stopped
    rows = run.artifact("samples").read()
    assert sorted(Path(r.path).name for r in rows) == [f"a{n}.mp4" for n in range(6)] + ["b0.mp4", "b1.mp4"]
    assert all(r.status == "ok" for r in rows) and not run.artifact("samples").in_progress
    assert_frames_whole(run, 4)
    assert not list(run.frames_dir.glob(".*.tmp-*"))               # the dead process's half-written frames are gone


def test_a_full_disk_while_writing_the_table_keeps_the_old_one_and_a_rerun_completes(tmp_path, monkeypatch):
    folder = tmp_path / "videos"
    synthetic.write_video(folder / "a.mp4", num_frames=12)
    ok(savi("sample", folder, "--run", "t", "--frames", "4"))
    run = open_run("t")
    earlier = finished(run)
    synthetic.write_video(folder / "b.mp4", num_frames=12, seed=1)
    synthetic.write_video(folder / "c.mp4", num_frames=12, seed=2)

    real_write = store.write_parquet

    def disk_fills_up(path, table):
        if path.name != "samples.parquet":
            return real_write(path, table)
        with store.atomic_path(path) as tmp:
            tmp.write_bytes(b"PAR1" + bytes(100))   # the start of the file made it to disk, then no more space
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(store, "write_parquet", disk_fills_up)
    line = error_line(savi("sample", folder, "--run", "t", "--frames", "4"))
    assert line == (f"Error: No space left on device (while writing; the workspace is {run.path.parent}); the disk "
                    "is full: free some space or move the workspace (--workspace or SAVI_HOME), then rerun the same "
                    "command to resume (finished items are saved)")
    assert finished(run) == earlier
    assert not list(run.path.glob(".samples.parquet.tmp-*"))      # the half-written table is gone
    assert len(ok(savi("query", "select * from samples", "-f", "jsonl")).stdout.splitlines()) == 1

    monkeypatch.setattr(store, "write_parquet", real_write)
    ok(savi("sample", folder, "--run", "t", "--frames", "4"))
    assert sorted(samples(run)) == ["a.mp4", "b.mp4", "c.mp4"] and not run.artifact("samples").in_progress
    assert_frames_whole(run, 4)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device that is always full")
def test_output_to_a_full_disk_is_one_line(tmp_path, workspace):
    synthetic.write_video(tmp_path / "a.mp4", num_frames=12)
    ok(savi("sample", tmp_path / "a.mp4", "--run", "t", "--frames", "4"))
    before = snapshot(workspace)
    with open("/dev/full", "w") as full:
        done = subprocess.run(SAVI + ["query", "select * from samples", "-f", "jsonl"], stdout=full, text=True,
                              stderr=subprocess.PIPE, env=dict(os.environ, SAVI_HOME=str(workspace)))
    assert done.returncode == 1
    assert done.stderr == (f"Error: No space left on device (while writing; the workspace is {workspace}); the "
                           "disk is full: free some space or move the workspace (--workspace or SAVI_HOME), then "
                           "rerun the same command to resume (finished items are saved)\n")
    assert snapshot(workspace) == before
    assert len(ok(savi("query", "select * from samples", "-f", "jsonl")).stdout.splitlines()) == 1


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs sysfs, where nobody may create a folder")
def test_a_workspace_where_nothing_can_be_written_is_one_line(tmp_path):
    synthetic.write_video(tmp_path / "a.mp4", num_frames=12)
    line = error_line(savi("sample", tmp_path / "a.mp4", "--run", "t", "--workspace", "/sys/savi-runs"))
    assert re.fullmatch(r"Error: (Operation not permitted|Read-only file system|Permission denied): /sys/savi-runs; "
                        r".+, then rerun the same command to resume \(finished items are saved\)", line), line
    assert not Path("/sys/savi-runs").exists()
    ok(savi("sample", tmp_path / "a.mp4", "--run", "t", "--frames", "4", "--workspace", tmp_path / "runs"))


# ---------------------------------------------------------------------------------------------------------------
# Two commands on one run


def test_a_second_writer_is_refused_while_another_process_holds_the_run(tmp_path, workspace):
    folder = tmp_path / "videos"
    for n in range(6):
        synthetic.write_video(folder / f"c{n}.mp4", num_frames=12, seed=n)
    first = folder / "c0.mp4"
    ok(savi("sample", first, "--run", "t", "--frames", "4"))
    run = open_run("t")
    earlier = finished(run)

    # The first command stops itself (SIGSTOP) the moment it holds the run, whatever the speed of this machine:
    # it then keeps the run, its work unfinished, for as long as this test needs.
    stop_once_locked = ("import os, signal, contextlib\n"
                        "from stages.core.store import Run\n"
                        "lock = Run.lock\n"
                        "@contextlib.contextmanager\n"
                        "def lock_then_stop(self):\n"
                        "    with lock(self):\n"
                        "        os.kill(os.getpid(), signal.SIGSTOP)\n"
                        "        yield\n"
                        "Run.lock = lock_then_stop\n"
                        "from savi_cli.main import app\n"
                        "app()\n")
    holder = subprocess.Popen([sys.executable, "-c", stop_once_locked, "sample", str(folder), "--run", "t",
                               "--frames", "4", "--workers", "1"],
                              env=dict(os.environ, SAVI_HOME=str(workspace)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _, status = os.waitpid(holder.pid, os.WUNTRACED)  # returns once it has stopped (or died)
        assert os.WIFSTOPPED(status), f"the first command ended before it took the run (status {status})"
        assert run.is_locked()
        assert (run.path / ".lock").read_text() == f"pid {holder.pid} on {socket.gethostname()}"

        expected = (f"Error: run 't' is in use by another savi process (pid {holder.pid} on {socket.gethostname()}); "
                    "wait for it to finish or stop it")
        assert error_line(savi("sample", first, "--run", "t", "--frames", "4")) == expected
        assert error_line(savi("answer", "--run", "t", "--round", "1")) == expected
        # Readers are not writers: they go on seeing the finished table.
        assert ok(savi("query", "select count(*) as n from samples", "-f", "csv")).stdout == "n\n1\n"
        assert finished(run) == earlier

        os.kill(holder.pid, signal.SIGKILL)   # stopping it is what the message suggests
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()

    assert not run.is_locked()               # the kernel released the lock of the killed process
    ok(savi("sample", folder, "--run", "t", "--frames", "4"))
    rows = run.artifact("samples").read()
    assert sorted(Path(r.path).name for r in rows) == [f"c{n}.mp4" for n in range(6)]
    assert len({r.video_id for r in rows}) == 6 and not run.artifact("samples").in_progress
    assert_frames_whole(run, 4)
