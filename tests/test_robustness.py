"""Nothing lost, nobody out: unusual inputs through the real CLI give one clear line, a redo never loses the old
work before the new is whole, and settings are checked before any work starts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import write_pairs
from test_bad_inputs import error_line, ok, savi, snapshot

from stages.core.records import Pair
from stages.core.store import ArtifactWriter, open_run
from stages.offline.benchmark_files import write_benchmark

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------------------------
# savi export pairs: never deletes what savi did not write


@pytest.fixture
def kept_pairs(sampled_run):
    write_pairs(sampled_run, 1, n=3)
    return sampled_run


def test_export_refuses_a_folder_holding_other_files_and_keeps_them(kept_pairs, tmp_path):
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "thesis.txt").write_text("three years of work")
    (precious / "sub" / "one_frame.mp4").write_bytes(b"\x00" * 10)
    before = snapshot(precious)
    line = error_line(savi("export", "pairs", "--run", "t", "--round", "1", "--out", precious))
    assert line == (f"Error: {precious} holds files savi did not write, and savi never deletes them; give a new or "
                    "empty folder for a trl export")
    assert snapshot(precious) == before


def test_export_replaces_its_own_earlier_export_and_writes_into_an_empty_folder(kept_pairs, tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "pairs"
    out.mkdir()
    assert ok(savi("export", "pairs", "--run", "t", "--round", "1", "--out", out)).stdout.strip() == str(out)
    assert len(load_from_disk(str(out))) == 3
    ok(savi("export", "pairs", "--run", "t", "--round", "1", "--out", out))  # its own: replaced
    assert len(load_from_disk(str(out))) == 3 and json.loads((out / "savi_export.json").read_text())["pairs"] == 3


def test_export_jsonl_to_a_folder_or_over_a_foreign_file_is_one_line(kept_pairs, tmp_path):
    line = error_line(savi("export", "pairs", "--run", "t", "--round", "1", "--format", "jsonl", "--out", tmp_path))
    assert line.startswith(f"Error: --out {tmp_path} is a folder; the jsonl format writes one file")
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"mine": 1}\n')
    line = error_line(savi("export", "pairs", "--run", "t", "--round", "1", "--format", "jsonl", "--out", notes))
    assert "is not an earlier savi export" in line and notes.read_text() == '{"mine": 1}\n'
    ours = tmp_path / "pairs.jsonl"
    for _ in range(2):  # the second run replaces the first one's file
        ok(savi("export", "pairs", "--run", "t", "--round", "1", "--format", "jsonl", "--out", ours))
    assert len(ours.read_text().splitlines()) == 3


# ---------------------------------------------------------------------------------------------------------------
# --force and --redo replace the old artifact only once the new one is complete


def test_a_failed_forced_redo_leaves_the_finished_table_as_it_was_and_a_rerun_completes_it(
        sampled_run, tiny_model, workspace, monkeypatch):
    from stages.core.model import Policy

    model = tiny_model()
    ok(savi("ask", "--run", "t", "--round", "1", "--model", model, "--per-video", "2", "--max-new-tokens", "6"))
    art = sampled_run.artifact("questions", 1)
    before = art.path.read_bytes(), art.manifest_path.read_bytes()

    real = Policy.generate
    calls = []

    def dies_on_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the redo
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Policy, "generate", dies_on_the_second_batch)
    redo = savi("ask", "--run", "t", "--round", "1", "--per-video", "4", "--max-new-tokens", "6", "--batch-size", "2",
                "--force")
    assert redo.exit_code == 130
    assert (art.path.read_bytes(), art.manifest_path.read_bytes()) == before  # still there, still readable
    assert len(art.read()) > 0
    monkeypatch.setattr(Policy, "generate", real)
    # The same command (no --force needed) resumes the redo, and only then replaces the table.
    ok(savi("ask", "--run", "t", "--round", "1", "--per-video", "4", "--max-new-tokens", "6", "--batch-size", "2"))
    assert art.manifest()["params"]["per_video"] == 4 and not art.parts_dir.exists()


def test_a_failed_redo_of_dpo_keeps_the_trained_adapter(sampled_run, tiny_model, monkeypatch):
    from stages import dpo

    write_pairs(sampled_run, 1)
    train = ["dpo", "--run", "t", "--round", "1", "--model", tiny_model(), "--no-4bit", "--max-steps", "2",
             "--grad-accum", "1", "--batch-size", "2", "--lr", "1e-3"]
    ok(savi(*train))
    adapter = sampled_run.round_dir(1) / "adapter"
    before = snapshot(adapter), sampled_run.artifact("train_log", 1).manifest_path.read_bytes()

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")  # the redo dies before it has trained anything

    monkeypatch.setattr(dpo, "build_trainer", out_of_memory)
    assert savi(*train, "--beta", "0.3", "--force").exit_code == 1
    assert (snapshot(adapter), sampled_run.artifact("train_log", 1).manifest_path.read_bytes()) == before


def test_a_kill_between_writing_a_table_and_its_manifest_does_not_count_rows_twice(sampled_run):
    art = sampled_run.artifact("pairs", 1)
    rows = [Pair(f"p{i}", "v", "q", "?", "a", "b", None, None, False, "critique", True, None) for i in range(3)]
    writer = ArtifactWriter(art, params={}, inputs={})
    for row in rows:
        writer.add(row)
    writer.flush()
    from stages.core.records import to_arrow
    from stages.core.store import write_parquet

    write_parquet(art.path, to_arrow(art.spec, rows))  # the table is written; the kill comes before the manifest
    again = ArtifactWriter(art, params={}, inputs={})
    assert len(again.records()) == 3
    again.finish()
    assert len(art.read()) == 3


# ---------------------------------------------------------------------------------------------------------------
# Settings are checked against their declaration before any work starts


@pytest.mark.parametrize("toml,message", [
    ('[sample]\nframes = "8"', '[sample] frames in {toml} is \'8\': it must be a whole number'),
    ('[ask]\nper_video = "two"', "[ask] per_video in {toml} is 'two': it must be a whole number"),
    ("[model]\nbatch_size = 0", "[model] batch_size in {toml} is 0: it must be at least 1"),
    ('[ask]\nkinds = "spatial"', "[ask] kinds in {toml} is 'spatial': it must be a list, like ['spatial', "
                                 "'temporal']"),
    ('[ask]\nkinds = ["spatial", "smell"]', "[ask] kinds in {toml}: item 'smell': it must be one of spatial, "
                                            "temporal, what, why, how"),
    ('[dpo]\nlr_scheduler = "linaer"', "[dpo] lr_scheduler in {toml} is 'linaer': it must be one of linear,"),
])
def test_a_bad_value_in_savi_toml_is_one_line_before_any_work(toml, message, sampled_run, tiny_model):
    path = sampled_run.path / "savi.toml"
    path.write_text(f'[model]\nid = "{tiny_model()}"\n' + toml + "\n" if "[model]" not in toml else toml + "\n")
    before = snapshot(sampled_run.path)
    line = error_line(savi("round", "1", "--run", "t"))
    assert line.startswith("Error: " + message.format(toml=path))
    assert snapshot(sampled_run.path) == before and not sampled_run.round_dir(1).exists()


def test_a_bad_set_value_is_refused_before_the_round_starts(sampled_run, tiny_model):
    (sampled_run.path / "savi.toml").write_text(f'[model]\nid = "{tiny_model()}"\n')
    line = error_line(savi("round", "1", "--run", "t", "--set", "dpo.beta=abc"))
    assert line == "Error: dpo.beta (given on the command line) is 'abc': it must be a number"
    assert not sampled_run.round_dir(1).exists()


def test_a_round_checks_its_benchmarks_before_its_first_stage(sampled_run, tiny_model, tmp_path):
    (sampled_run.path / "savi.toml").write_text(f'[model]\nid = "{tiny_model()}"\n')
    line = error_line(savi("round", "1", "--run", "t", "--eval", f"egoschema={tmp_path / 'nowhere'}"))
    assert line.startswith("Error: EgoSchema: ") and "does not exist" in line
    line = error_line(savi("round", "1", "--run", "t", "--eval", f"kinetics={tmp_path}"))
    assert line.startswith("Error: unknown benchmark 'kinetics'")
    bench = write_benchmark("egoschema", tmp_path / "bench", questions=2, videos=False)
    line = error_line(savi("round", "1", "--run", "t", "--eval", f"egoschema={bench}"))
    assert "missing under" in line
    assert not sampled_run.round_dir(1).exists()  # no stage ran


# ---------------------------------------------------------------------------------------------------------------
# Odd workspaces, names, paths and streams


@pytest.mark.parametrize("name", ["a\nb", "my run", "x'; drop", 'q"uote', "round=1", "r" * 101, "-dash", ".hidden"])
def test_a_run_name_that_is_not_a_plain_word_is_refused(name, clip_folder):
    line = error_line(savi("sample", clip_folder, "--run", name))
    assert line.startswith("Error: invalid run name ")


def test_a_workspace_that_is_a_file_is_one_line(clip_folder, tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    monkeypatch.setenv("SAVI_HOME", str(afile))
    line = error_line(savi("sample", clip_folder, "--run", "x"))
    assert line == f"Error: the workspace {afile} is not a folder ({afile} is a file); point --workspace (or " \
                   "SAVI_HOME) at a folder"
    monkeypatch.setenv("SAVI_HOME", str(afile / "sub"))
    assert error_line(savi("sample", clip_folder, "--run", "x")).startswith("Error: the workspace ")


@pytest.mark.parametrize("command", [["tiny-model"], ["tiny-clip"], ["demo", "--dir"]])
def test_offline_builders_refuse_a_file_or_a_folder_of_other_files(command, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert error_line(savi(*command, afile)).startswith(f"Error: {afile} is a file;")
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "holiday.mp4").write_bytes(b"\x00")
    assert "holds files savi did not write" in error_line(savi(*command, folder))
    assert [p.name for p in folder.iterdir()] == ["holiday.mp4"]


def test_a_table_missing_a_column_names_the_file_and_how_to_make_it_again(sampled_run):
    import pyarrow.parquet as pq

    path = sampled_run.artifact("samples").path
    pq.write_table(pq.read_table(path).drop_columns(["path"]), path)
    line = error_line(savi("ask", "--run", "t", "--round", "1"))
    assert line.startswith(f"Error: {path} (samples/1) cannot be read as samples/1: column 'path' is missing; make it "
                           "again with `savi sample VIDEOS --run t --force`")


def test_a_hub_model_without_network_fails_at_once_and_records_nothing(tmp_path, workspace, monkeypatch):
    from stages.core import hub

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub.socket, "create_connection", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    bench = write_benchmark("egoschema", tmp_path / "bench", questions=2)
    line = error_line(savi("eval", "egoschema", "--data", bench, "--model", "Org/Some-Model"))
    assert line.startswith("Error: model 'Org/Some-Model' is neither a local folder nor in this machine's Hugging "
                           "Face cache, and the model hub cannot be reached from here")
    assert not (workspace / "eval-Some-Model").exists()  # the run it would have made is not left behind


def test_a_stage_with_an_open_silent_stdin_says_what_it_waits_for(workspace):
    process = subprocess.Popen([sys.executable, "-c", "from savi_cli.main import app; app()", "answer",
                                "--round", "1"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env={**os.environ, "SAVI_HOME": str(workspace)}, text=True)
    line = process.stderr.readline()  # blocks until savi says something
    assert line.startswith("waiting for the previous stage's table path on stdin")
    process.stdin.close()  # nothing was piped after all: it goes on with the default run
    assert process.wait(timeout=120) == 1
    assert process.stderr.read().startswith("Error: round 1 of run 'default' has no questions yet")


def test_redo_hint_names_the_run_and_round(tmp_path):
    from stages.core.records import TABLES
    from stages.core.store import redo_hint

    run = open_run("r", tmp_path)
    hint = redo_hint(run.artifact("answers", 2).path, TABLES["answers"])
    assert hint == "make it again with `savi answer --run r --round 2 --force`"
    assert Path(run.eval_artifact("egoschema", 0).path).name == "egoschema.parquet"


def test_a_damaged_input_table_is_one_line_naming_the_command_that_makes_it_again(sampled_run, tiny_model):
    ok(savi("ask", "--run", "t", "--round", "1", "--model", tiny_model(), "--per-video", "2", "--max-new-tokens",
            "6"))
    path = sampled_run.artifact("questions", 1).path
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short, as a full disk or a copy might
    line = error_line(savi("answer", "--run", "t", "--round", "1"))
    assert line.startswith(f"Error: {path} is damaged (") and line.endswith(
        "make it again with `savi ask --run t --round 1 --force`")
    ok(savi("ask", "--run", "t", "--round", "1", "--per-video", "2", "--max-new-tokens", "6", "--force"))
    ok(savi("answer", "--run", "t", "--round", "1", "--max-new-tokens", "6"))


def test_a_truncated_frame_names_its_video_and_sampling_it_again_repairs_the_run(sampled_run, tiny_model,
                                                                                   clip_folder):
    sample = sampled_run.artifact("samples").read()[0]
    frame = sorted((sampled_run.path / sample.frames_dir).glob("*.jpg"))[1]
    frame.write_bytes(frame.read_bytes()[:300])
    line = error_line(savi("ask", "--run", "t", "--round", "1", "--model", tiny_model(), "--max-new-tokens", "6"))
    folder = sampled_run.path / sample.frames_dir
    assert line.startswith(f"Error: the frames of {sample.path} in {folder} cannot be read (")
    assert line.endswith(f"delete that folder and run `savi sample {sample.path} --run t` to sample them again")
    import shutil

    shutil.rmtree(folder)  # as the message says
    ok(savi("sample", sample.path, "--run", "t", "--frames", "4"))  # the run was sampled at 4 frames
    ok(savi("ask", "--run", "t", "--round", "1", "--max-new-tokens", "6"))
