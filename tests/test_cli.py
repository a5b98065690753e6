"""The command line as a user meets it: help texts, fast start-up, one-line errors."""

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from savi_cli.main import app

COMMANDS = sorted(app.registered_commands, key=lambda c: c.name)
NAMES = [c.name for c in COMMANDS]


def listed_commands(help_text: str) -> list[str]:
    """The names in the `Commands:` section of a help text: the first word of each of its lines."""
    lines = help_text.splitlines()
    assert lines.count("Commands:") == 1, help_text
    section = lines[lines.index("Commands:") + 1:]
    names = []
    for line in section:
        if not line.strip():
            break
        assert re.fullmatch(r"  [a-z][a-z-]* +\S.*", line), f"not a command line: {line!r}"
        names.append(line.split()[0])
    return names


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = listed_commands(result.stdout)
    registered = NAMES + [g.name for g in app.registered_groups]
    assert "export" in registered
    assert len(listed) == len(set(listed))  # each once
    assert sorted(listed) == sorted(registered)


@pytest.mark.parametrize("name", NAMES)
def test_every_command_has_help_with_a_real_example(name):
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    example = result.stdout.split("Example:", 1)[1].strip().splitlines()[0]
    assert example.startswith(f"savi {name}")


def test_help_never_imports_torch_or_the_engine():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from savi_cli.main import app\n"
        f"for args in [['--help']] + [[n, '--help'] for n in {NAMES!r}]:\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'decord', 'av', 'duckdb', 'pyarrow') "
        "if m in sys.modules]\n"
        "print(json.dumps(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_status_on_an_empty_workspace_says_how_to_start():
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0
    assert "no runs in" in result.stdout and "savi sample VIDEOS --run NAME" in result.stdout


def test_status_of_an_unknown_run_is_one_line():
    result = CliRunner().invoke(app, ["status", "--run", "nope"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no run named 'nope'") and result.stderr.count("\n") == 1


def test_invalid_run_names_are_refused(tmp_path):
    result = CliRunner().invoke(app, ["sample", str(tmp_path), "--run", "../escape"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == ("Error: invalid run name '../escape': use up to 100 letters, digits, '.', '-' or '_', "
                             "starting with a letter or digit\n")


def test_tiny_model_command_builds_a_loadable_folder(tmp_path):
    result = CliRunner().invoke(app, ["tiny-model", str(tmp_path / "m"), "--family", "qwen2_vl"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tmp_path / 'm'}\n"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl"
    assert (tmp_path / "m" / "model.safetensors").is_file()
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tmp_path / "m")
    model, loading = AutoModelForImageTextToText.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not any(loading.values()), loading  # every weight in the folder, none missing, none unexpected
    assert model.config.model_type == "qwen2_vl" and type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert processor.video_token_id is not None
    assert processor.tokenizer.convert_ids_to_tokens(processor.video_token_id) == "<|video_pad|>"


def test_tiny_model_unknown_family_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["tiny-model", str(tmp_path / "m"), "--family", "gpt2"])
    assert result.exit_code == 1
    assert result.stderr == ("Error: unknown family 'gpt2'; choose one of qwen2_5_vl, qwen2_vl, qwen3_vl, "
                             "llava_onevision\n")
    assert not (tmp_path / "m").exists()


def test_demo_runs_two_full_rounds_with_eval_and_ends_with_the_report(tmp_path):
    from stages.core.store import open_run

    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "phone_rotated.mp4  ok" in result.stdout and "empty.mp4          error   empty file" in result.stdout
    assert "round 1 done" in result.stdout and "round 2 done" in result.stdout
    # Keyframes and temporal negatives are on in the demo: the summary counts the keyframes, the answers from
    # reversed and shuffled frames, and the pairs kept from them.
    assert result.stdout.count("  keyframes 56 of 112 frames kept for 14 questions (policy localizer)") == 2
    assert result.stdout.count(" from perturbed frames: reverse ") == 2
    assert "kept by source: critique " in result.stdout and "temporal:reverse " in result.stdout
    # DPO trains at VistaDPO's three levels, and the summary gives each level's margin.
    assert result.stdout.count("; temporal margin ") == 2 and result.stdout.count("; perceptive margin ") == 2
    shown = result.stdout.split("savi report --run demo")[1]
    assert "round  questions  accuracy  95% CI" in shown
    assert [line.split()[2] for line in shown.splitlines() if line.startswith("egoschema")] == ["0", "1", "2"]
    assert "meaningless text" in result.stdout
    run = open_run("demo", tmp_path / "demo" / "runs")
    for r in (1, 2):
        assert (run.round_dir(r) / "adapter" / "adapter_config.json").is_file()
        assert (run.round_dir(r) / "config.toml").is_file()
    assert all(run.eval_artifact("egoschema", r).complete for r in (0, 1, 2))
    assert (run.path / "report.png").is_file()

    again = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "demo")])
    assert again.exit_code == 0 and "writing example videos" not in again.stderr
    report = result.stdout.split("savi report --run demo")[1]
    assert again.stdout.split("savi report --run demo")[1] == report  # nothing was redone or changed


def test_an_unexpected_error_is_one_line_naming_a_log_with_the_traceback(monkeypatch, workspace):
    def broken(*args, **kwargs):  # stands for a bug deep in a library, like bitsandbytes' shape error
        raise RuntimeError("shape '[96, 0]' is invalid for input of size 48\nsecond line of the message")

    monkeypatch.setattr("stages.status.describe_runs", broken)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: unexpected RuntimeError: shape '[96, 0]' is invalid for input of size 48 "
                                    "(a bug in savi or a library it uses); the traceback is in ")
    log = result.stderr.split("the traceback is in ")[1].split(", please include it")[0]
    assert log.startswith(str(workspace / ".logs"))
    text = open(log).read()
    assert "Traceback (most recent call last)" in text and "second line of the message" in text
