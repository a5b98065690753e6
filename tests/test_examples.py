"""The examples: every query in examples/queries runs against a real run and returns the columns it promises, and
examples/round_gpu.sh is valid bash that uses only commands, flags and savi.toml settings that savi has."""

import dataclasses
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ROOT / "examples" / "queries"
SCRIPT = ROOT / "examples" / "round_gpu.sh"

# The columns each query returns, in order: renaming one (in the query or in a table it reads) fails here.
EXPECTED_COLUMNS = {
    "drop_reasons_per_round.sql": ["run", "round", "outcome", "pairs", "share"],
    "questions_per_kind.sql": ["run", "round", "kind", "questions", "videos", "videos_decoded", "per_video",
                               "mean_chars", "parsed_json", "parsed_numbered", "parsed_lines"],
    "reward_margins.sql": ["run", "round", "steps", "epochs", "first_loss", "last_loss", "early_reward_accuracy",
                           "late_reward_accuracy", "early_reward_margin", "late_reward_margin",
                           "last_chosen_reward", "last_rejected_reward"],
    "clip_swaps_and_margins.sql": ["run", "round", "scored", "swapped", "swap_rate", "kept", "mean_margin",
                                   "median_margin", "min_margin", "mean_chosen_clip", "mean_rejected_clip"],
    "eval_accuracy.sql": ["run", "benchmark", "category", "round", "questions", "correct", "unmatched",
                          "video_errors", "accuracy_pct", "strict_accuracy_pct", "vs_base_points"],
    "answers_cut_off.sql": ["run", "round", "answers", "cut_off", "cut_off_share", "mean_tokens", "p95_tokens",
                            "max_tokens", "kept_pairs_with_cut_off"],
    "critique_error_types.sql": ["run", "round", "error_type", "critiques", "share_of_critiques"],
    "pairs_by_source.sql": ["run", "round", "source", "pairs", "kept", "kept_share", "temporal_same",
                            "commonest_drop"],
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The offline demo: a run of two full rounds (with eval) in a workspace of its own."""
    from stages import demo

    return demo.run(tmp_path_factory.mktemp("demo"))


def test_every_query_file_has_expected_columns():
    assert sorted(p.name for p in QUERIES.glob("*.sql")) == sorted(EXPECTED_COLUMNS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COLUMNS))
def test_query_runs_on_a_real_run(demo, name):
    from stages.core.query import run_query

    sql = (QUERIES / name).read_text()
    assert sql.startswith("-- "), "a query file opens with a comment saying what it answers"
    assert f"savi query - --run NAME < examples/queries/{name}" in sql, "the header says how to run it"
    columns, rows = run_query(sql, demo.workspace, run="demo")
    assert columns == EXPECTED_COLUMNS[name]
    assert rows, f"{name} returned no rows on the demo run"
    assert {row[0] for row in rows} == {"demo"}
    # Every run of the workspace (no --run) works too.
    assert run_query(sql, demo.workspace)[0] == EXPECTED_COLUMNS[name]


def test_round_gpu_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _without_heredocs(text: str) -> tuple[str, dict[str, str]]:
    """The script's lines outside heredocs, and each heredoc's body keyed by its opening line."""
    kept, bodies = [], {}
    lines = iter(text.splitlines())
    for line in lines:
        kept.append(line)
        match = re.search(r"<<-?\s*(['\"]?)(\w+)\1", line)
        if match and "<<<" not in line:
            body = []
            for inner in lines:
                if inner.strip() == match.group(2):
                    break
                body.append(inner)
            bodies[line] = "\n".join(body)
    return "\n".join(kept), bodies


def _savi_calls(script: str) -> list[list[str]]:
    """Each `savi ...` command of the script (outside comments and heredocs), as its arguments after `savi`."""
    code, _ = _without_heredocs(script)
    calls = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True  # words stay whole (--run, egoschema=...); |, ;, && and < come apart
        current, at_start = None, True
        for token in lexer:
            if set(token) <= set("|&;()"):
                current, at_start = None, True
                continue
            if current is not None:
                current.append(token)
            elif at_start and (token == "savi" or token.endswith("/savi")):
                current = []
                calls.append(current)
            at_start = False
    return calls


def test_round_gpu_script_uses_real_commands_and_flags():
    import typer.main
    from typer.testing import CliRunner

    from savi_cli.main import app
    from stages.benchmarks import BENCHMARKS
    from stages.round import SECTIONS, parse_override

    calls = _savi_calls(SCRIPT.read_text())
    commands = [call[0] for call in calls if call]
    assert {"sample", "round", "report"} <= set(commands), commands
    assert [call[1] for call in calls if call[0] == "round"] == ["1", "2"]

    root = typer.main.get_command(app)
    for call in calls:
        command, args = root.commands.get(call[0]), call[1:]
        assert command is not None, f"savi {call[0]}: no such command"
        path = [call[0]]
        while hasattr(command, "commands") and args and args[0] in command.commands:  # a group: `savi export pairs`
            path.append(args[0])
            command, args = command.commands[args[0]], args[1:]
        for arg in args:  # the queries the script runs exist
            if "examples/queries/" in arg:
                assert (QUERIES / arg.rsplit("/", 1)[1]).is_file(), arg
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, result.output
        known = {opt for param in command.params if param.param_type_name == "option"
                 for opt in (*param.opts, *param.secondary_opts)}
        for i, arg in enumerate(args):
            if re.match(r"^--?[A-Za-z]", arg):
                flag = arg.split("=", 1)[0]
                assert flag in known, f"savi {' '.join(path)} has no {flag} (it has {sorted(known)})"
                assert flag in result.output
                value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
                if flag == "--eval":
                    assert value.partition("=")[0] in BENCHMARKS, value
                if flag == "--set":
                    section, key, _ = parse_override(value)
                    assert key in {f.name for f in dataclasses.fields(SECTIONS[section])}, value


def _settings_text(script: str) -> str:
    """The savi.toml the script writes, as written (shell variables, only inside strings, stay unexpanded)."""
    _, bodies = _without_heredocs(script)
    (body,) = [text for opening, text in bodies.items() if "savi.toml" in opening]
    return body


def test_round_gpu_script_writes_known_settings(tmp_path):
    from stages.core.config import resolve
    from stages.core.model import ModelConfig
    from stages.core.store import open_run
    from stages.round import SECTIONS, resolve_round
    from stages.sample import SampleConfig

    text = _settings_text(SCRIPT.read_text())
    settings = tomllib.loads(text)
    known = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()}
    known["model"] = {f.name for f in dataclasses.fields(ModelConfig)}
    known["sample"] = {f.name for f in dataclasses.fields(SampleConfig)}
    for section, values in settings.items():
        assert section in known or section == "benchmarks", f"unknown section [{section}]"
        if section == "benchmarks":
            continue
        unknown = set(values) - known[section]
        assert not unknown, f"unknown settings in [{section}]: {sorted(unknown)}"
    assert settings["model"]["load_in_4bit"] is True

    # savi itself reads the file: every value lands where the script meant it to.
    run = open_run("gpu", tmp_path / "runs")
    run.path.mkdir(parents=True)
    (run.path / "savi.toml").write_text(text)
    cfg = resolve_round(run)
    for section, values in settings.items():
        if section in SECTIONS:
            resolved = getattr(cfg, section)
            for key, value in values.items():
                got = getattr(resolved, key)
                assert (list(got) if isinstance(got, tuple) else got) == value, f"[{section}] {key}"
    assert cfg.model.id == settings["model"]["id"]
    assert {k: getattr(cfg.model, k) for k in set(settings["model"]) - {"id"}} == {
        k: v for k, v in settings["model"].items() if k != "id"}
    sample = resolve(run, SampleConfig)
    assert {k: getattr(sample, k) for k in settings["sample"]} == settings["sample"]
