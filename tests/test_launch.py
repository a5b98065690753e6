"""Model stages under `accelerate launch`: two processes on the CPU (gloo) write the tables one process writes.

The launches are real: accelerate's launcher (torchrun underneath) starts two savi processes that share the
batches (`stages/core/launch.py`). accelerate's `--cpu` launches a single process unless MPI is configured, so the
tests launch with `--multi_gpu` on this GPU-less machine and run savi with `--device cpu`, as docs/SCALING.md says.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import ask_about_each_video

from stages.core.launch import accelerate_command
from stages.core.store import open_run

pytestmark = pytest.mark.slow

SAVI = Path(sys.executable).with_name("savi")


def savi(*args, launched: bool = False) -> subprocess.CompletedProcess:
    command = [*accelerate_command(2), *args] if launched else [str(SAVI), *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def two_runs(run, questions: int):
    """Run `run` with `questions` questions in round 1, and a copy of it, `twin`."""
    ask_about_each_video(run, 1, questions, "what", "What happens")
    shutil.copytree(run.path, run.path.with_name("twin"))
    return run, open_run("twin")


def table(run, name: str, round: int = 1) -> list:
    return run.artifact(name, round).read()


def test_answer_and_critique_launched_on_two_processes_write_one_processs_tables_row_for_row(sampled_run,
                                                                                             tiny_model):
    one, two = two_runs(sampled_run, 12)
    stage_args = ["--round", "1", "--model", str(tiny_model()), "--batch-size", "2", "--device", "cpu",
                  "--max-new-tokens", "8"]
    for stage, extra in (("answer", ["--candidates", "2"]), ("critique", [])):
        alone = savi(stage, "--run", one.name, *stage_args, *extra)
        launched = savi(stage, "--run", two.name, *stage_args, *extra, launched=True)
        assert alone.returncode == 0, alone.stderr
        assert launched.returncode == 0, launched.stderr
        # The main process alone reports: one line on stderr, the table's path once on stdout.
        assert launched.stdout.strip().splitlines() == [str(two.artifact(
            "answers" if stage == "answer" else "critiques", 1).path)]
        assert launched.stderr.count("done now; table holds") == 1

    for name in ("answers", "critiques", "candidates"):
        assert table(two, name) == table(one, name), name
    assert len(table(two, "answers")) == 24
    manifest = two.artifact("answers", 1).manifest()
    assert manifest["processes"] == 2 and manifest["rows_added"] == 24


def test_eval_launched_on_two_processes_writes_one_processs_table_and_summary(tiny_model, tmp_path):
    from stages.offline.benchmark_files import write_benchmark

    data = write_benchmark("egoschema", tmp_path / "bench", questions=6)
    common = ["egoschema", "--data", str(data), "--model", str(tiny_model()), "--frames", "4", "--device", "cpu",
              "--batch-size", "2", "--perturb", "reverse"]
    alone = savi("eval", *common, "--run", "one")
    launched = savi("eval", *common, "--run", "two", launched=True)
    assert alone.returncode == 0, alone.stderr
    assert launched.returncode == 0, launched.stderr

    one, two = open_run("one"), open_run("two")
    for name in ("egoschema", "egoschema@reverse"):
        assert two.eval_artifact(name, 0).read() == one.eval_artifact(name, 0).read()
    summary_lines = [line for line in launched.stderr.splitlines() if line.startswith("egoschema")]
    assert [line.split(";")[0] for line in summary_lines] == \
        [line.split(";")[0] for line in alone.stderr.splitlines() if line.startswith("egoschema")]
    assert len(summary_lines) == 2


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the launched savi process of `rank` (a descendant of the launcher with RANK=rank)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if f"RANK={rank}".encode() in environ and _descends(parent, launcher.pid):
            return int(proc.name)
    return None


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return False


def test_a_launch_whose_process_is_killed_does_only_the_missing_items_when_run_again(sampled_run, tiny_model):
    one, two = two_runs(sampled_run, 48)
    args = ["answer", "--round", "1", "--model", str(tiny_model()), "--candidates", "2", "--batch-size", "2",
            "--device", "cpu", "--max-new-tokens", "16"]
    parts = two.artifact("answers", 1).parts_dir

    launcher = subprocess.Popen([*accelerate_command(2), *args, "--run", two.name], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True)
    try:
        # Kill the second process once it has flushed a part: it has done some of its share, not all of it.
        deadline = time.monotonic() + 300
        while not list(parts.glob("part-r1-*.parquet.part")):
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        victim = _rank_pid(launcher, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.communicate()
    assert launcher.returncode != 0
    assert not two.artifact("answers", 1).complete
    flushed = {p.name for p in parts.glob("part-*.parquet.part")}
    assert any(name.startswith("part-r1-") for name in flushed)

    again = savi(*args, "--run", two.name, launched=True)
    assert again.returncode == 0, again.stderr
    assert savi(*args, "--run", one.name).returncode == 0

    rows = table(two, "answers")
    assert len(rows) == 96 and len({a.answer_id for a in rows}) == 96
    assert rows == table(one, "answers")
    manifest = two.artifact("answers", 1).manifest()
    assert manifest["resumed"] and 0 < manifest["rows_added"] < 96  # what the killed launch flushed was kept


def test_an_unrelated_answer_is_refused_while_a_launch_holds_the_run(sampled_run, tiny_model):
    ask_about_each_video(sampled_run, 1, 24, "what", "What happens")
    args = ["answer", "--run", sampled_run.name, "--round", "1", "--model", str(tiny_model()), "--candidates", "2",
            "--batch-size", "2", "--device", "cpu", "--max-new-tokens", "16"]
    parts = sampled_run.artifact("answers", 1).parts_dir

    launcher = subprocess.Popen([*accelerate_command(2), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(parts.glob("part-*.parquet.part")):  # the launch is writing: it holds the run
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Held still while the unrelated command tries, so the launch cannot finish first.
        ranks = [_rank_pid(launcher, rank) for rank in (0, 1)]
        for pid in ranks:
            os.kill(pid, signal.SIGSTOP)
        try:
            refused = savi(*args)
        finally:
            for pid in ranks:
                os.kill(pid, signal.SIGCONT)
        _, launch_err = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: run '{sampled_run.name}' is in use by another savi "
                                                   "process")
    assert "the main process of launch" in lines[0]
    assert launcher.returncode == 0, launch_err[-3000:]
    assert len(table(sampled_run, "answers")) == 48


def test_a_second_launch_on_a_held_run_is_refused_with_one_error_line(sampled_run, tiny_model):
    ask_about_each_video(sampled_run, 1, 3, "what", "What happens")
    with sampled_run.lock():  # an unrelated command holds the run
        refused = savi("answer", "--run", sampled_run.name, "--round", "1", "--model", str(tiny_model()),
                       "--device", "cpu", launched=True)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "is in use by another savi process" in errors[0]


def test_dpo_on_two_processes_trains_the_adapter_of_one_process_with_the_same_effective_batch(sampled_run,
                                                                                              tiny_model):
    from builders import write_pairs
    from safetensors.torch import load_file

    write_pairs(sampled_run, 1, n=8)
    twin = two_runs(sampled_run, 3)[1]
    # LoRA dropout off: each process draws its own dropout masks, so with it on the two trainings differ by
    # their random streams, not by how they share the work.
    common = ["--round", "1", "--model", str(tiny_model()), "--no-4bit", "--max-steps", "4", "--batch-size", "2",
              "--save-steps", "2", "--lora-dropout", "0", "--device", "cpu"]
    alone = savi("dpo", "--run", sampled_run.name, *common, "--grad-accum", "2")
    launched = savi("dpo", "--run", twin.name, *common, "--grad-accum", "1", launched=True)
    assert alone.returncode == 0, alone.stderr
    assert launched.returncode == 0, launched.stderr

    one = load_file(sampled_run.round_dir(1) / "adapter" / "adapter_model.safetensors")
    two = load_file(twin.round_dir(1) / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    trained = [name for name in one if "lora_B" in name]  # B starts at zero: it is all training
    assert all(one[name].abs().sum() > 0 for name in trained)
    # The same pairs in the same optimizer steps: gloo sums the two halves of each step's gradient where one
    # process accumulates them, which may differ in the last bits of float32, nothing more.
    for name in one:
        assert (one[name] - two[name]).abs().max() <= 1e-6 + 1e-4 * one[name].abs().max(), name

    steps = [s.step for s in table(twin, "train_log")]
    assert steps == [1, 2, 3, 4]
    counts = twin.artifact("train_log", 1).manifest()["counts"]
    assert (counts["effective_batch"], counts["processes"]) == (4, 2)
    assert sampled_run.artifact("train_log", 1).manifest()["counts"]["effective_batch"] == 4
    assert [round(s.loss, 5) for s in table(twin, "train_log")] == \
        [round(s.loss, 5) for s in table(sampled_run, "train_log")]


@pytest.mark.parametrize(("env", "sharded"), [
    ({}, False),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, False),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, True),
    ({"ACCELERATE_USE_FSDP": "true"}, True),
])
def test_4bit_weights_are_stored_in_the_compute_dtype_only_where_the_launch_shards_them(monkeypatch, env, sharded):
    import torch

    from stages.core.model import quantization_config

    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_USE_FSDP",
                 "ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    storage = quantization_config(torch.bfloat16).bnb_4bit_quant_storage
    assert storage == (torch.bfloat16 if sharded else torch.uint8)


def test_the_shipped_accelerate_configs_are_what_they_say(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    from stages.core.launch import shards_parameters

    folder = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
    expected = {"ddp.yaml": (DistributedType.MULTI_GPU, None), "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 2),
                "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 3)}
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(expected)
    for name, (kind, stage) in expected.items():
        config = load_config_from_file(str(folder / name))
        assert config.distributed_type == kind and not config.use_cpu
        assert (config.deepspeed_config or {}).get("zero_stage") == stage
    # A DeepSpeed config file that says stage 3 counts as sharded, as its flag would.
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 3}}')
    assert shards_parameters({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE":
                              str(tmp_path / "ds.json")})


def test_a_round_with_launch_runs_its_model_stages_on_two_processes_and_writes_a_one_process_rounds_tables(
        sampled_run, tiny_model, tmp_path):
    from builders import SMALL

    from stages.offline.benchmark_files import write_benchmark
    from stages.offline.tiny_clip import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    (sampled_run.path / "savi.toml").write_text(SMALL.format(model=tiny_model(), clip=clip))
    shutil.copytree(sampled_run.path, sampled_run.path.with_name("twin"))
    twin = open_run("twin")
    bench = write_benchmark("egoschema", tmp_path / "bench", questions=3)
    args = ["round", "1", "--eval", f"egoschema={bench}", "--set", "answer.candidates=2"]
    alone = savi(*args, "--run", sampled_run.name)
    launcher = " ".join(accelerate_command(2)[:-2])  # accelerate launch ... (savi adds -m savi_cli itself)
    launched = savi(*args, "--run", twin.name, "--launch", launcher)
    assert alone.returncode == 0, alone.stderr
    assert launched.returncode == 0, launched.stderr[-3000:]

    # The summary comes once, from the round; the model stages ran in the launched processes.
    assert launched.stdout.strip() == str(twin.round_dir(1) / "adapter")
    assert launched.stderr.count("round 1 done") == 1
    for name in ("questions", "answers", "critiques", "candidates", "pairs"):
        assert table(twin, name) == table(sampled_run, name), name
    for name in ("questions", "answers", "critiques"):
        assert twin.artifact(name, 1).manifest()["processes"] == 2
    assert twin.eval_artifact("egoschema", 0).read() == sampled_run.eval_artifact("egoschema", 0).read()
    # Round 1's policy differs: two processes train with twice the effective batch (the learning rate as given).
    assert [r.question_id for r in twin.eval_artifact("egoschema", 1).read()] == \
        [r.question_id for r in sampled_run.eval_artifact("egoschema", 1).read()]
    log = twin.artifact("train_log", 1).manifest()["counts"]
    assert (log["processes"], log["effective_batch"], log["steps"]) == (2, 4, 2)
    # The round held the run throughout and let its launched stages write; it is free again now.
    assert not twin.is_locked()


def test_a_launcher_in_savi_toml_is_a_setting_of_the_run(sampled_run):
    from stages.core.config import resolve
    from stages.core.settings import LaunchConfig
    from stages.round import resolve_round

    (sampled_run.path / "savi.toml").write_text('[launch]\ncommand = "accelerate launch --num_processes 8"\n')
    resolve_round(sampled_run)  # a [launch] section is known to the round
    assert resolve(sampled_run, LaunchConfig).command == "accelerate launch --num_processes 8"
    assert resolve(sampled_run, LaunchConfig, {"command": "torchrun --nproc-per-node 2"}).command == \
        "torchrun --nproc-per-node 2"


def test_the_main_processs_bar_counts_the_items_the_other_processes_flush(sampled_run):
    """The display alone, in this one process (whose barrier waits for no one): the other process of a launch of
    two is played by the progress file it would flush."""
    from stages.core.launch import Launch
    from stages.core.records import Question
    from stages.core.store import ArtifactWriter, write_json

    ticks: list[int] = []
    writer = ArtifactWriter(sampled_run.artifact("questions", 1), params={}, inputs={},
                            launch=Launch(rank=0, size=2, id="test"))
    tick = writer.ticker(lambda total: lambda: ticks.append(total), 10)
    parts = sampled_run.artifact("questions", 1).parts_dir
    parts.mkdir(parents=True)
    write_json(parts / "progress-r1.json", {"items": 3, "rows": 3})  # the other process flushed 3 items
    writer.add_item("v0", [Question("q0", "v0", "what", "?", "json", "ask/1", "test")])
    tick()
    assert len(ticks) == 4  # its own item, and the other's 3
    write_json(parts / "progress-r1.json", {"items": 6, "rows": 6, "done": True})
    assert writer.gather()  # the main process waits for the other's "done", showing its last items
    assert len(ticks) == 7


def test_a_killed_dpo_launch_resumes_from_its_checkpoint_and_logs_every_step_once(sampled_run, tiny_model):
    from builders import write_pairs
    from safetensors.torch import load_file

    write_pairs(sampled_run, 1, n=8)
    twin = two_runs(sampled_run, 3)[1]
    args = ["dpo", "--round", "1", "--model", str(tiny_model()), "--no-4bit", "--max-steps", "6", "--batch-size", "2",
            "--grad-accum", "1", "--save-steps", "2", "--lora-dropout", "0", "--device", "cpu"]
    checkpoint = twin.round_dir(1) / ".checkpoints" / "checkpoint-4" / "trainer_state.json"
    launch = subprocess.Popen([*accelerate_command(2), *args, "--run", twin.name], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.is_file():  # killed, every process at once, once step 4 is saved
            assert launch.poll() is None, launch.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # torchrun's workers are not in the launcher's process group: each is killed by its pid.
        for pid in [_rank_pid(launch, rank) for rank in (0, 1)] + [launch.pid]:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
    finally:
        launch.communicate(timeout=60)
    assert not (twin.round_dir(1) / "adapter").exists()

    resumed = savi(*args, "--run", twin.name, launched=True)
    uninterrupted = savi(*args, "--run", sampled_run.name, launched=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    assert [s.step for s in table(twin, "train_log")] == [1, 2, 3, 4, 5, 6]
    manifest = twin.artifact("train_log", 1).manifest()
    assert manifest["notes"]["resumed_from_checkpoint"].endswith(("checkpoint-4", "checkpoint-6"))
    one = load_file(sampled_run.round_dir(1) / "adapter" / "adapter_model.safetensors")
    two = load_file(twin.round_dir(1) / "adapter" / "adapter_model.safetensors")
    for name in one:
        assert (one[name] - two[name]).abs().max() <= 1e-6 + 1e-4 * one[name].abs().max(), name


@pytest.mark.parametrize("launcher", ["nosuchlauncher --num_processes 2", "accelerate launch 'unclosed"])
def test_a_launcher_that_cannot_run_is_one_error_line_before_any_work(sampled_run, launcher):
    done = savi("round", "1", "--run", sampled_run.name, "--launch", launcher)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: --launch {launcher!r}")
    assert not sampled_run.round_dir(1).exists()
