"""`savi round`: one round end to end on a tiny real model, its settings, and its summary."""

import tomllib

import pytest
from builders import SMALL
from typer.testing import CliRunner

from savi_cli.main import app
from stages import round as round_stage
from stages.core.errors import SaviError
from stages.core.model import Policy
from stages.offline.benchmark_files import write_benchmark

runner = CliRunner()

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from stages.offline.tiny_clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.mark.slow
def test_a_round_runs_every_stage_then_reruns_as_a_no_op(sampled_run, tiny_model, tiny_clip, tmp_path,
                                                          monkeypatch):
    (sampled_run.path / "savi.toml").write_text(SMALL.format(model=tiny_model(), clip=tiny_clip))
    bench = write_benchmark("egoschema", tmp_path, questions=3)
    args = ["round", "1", "--run", "t", "--eval", f"egoschema={bench}", "--set", "dpo.beta=0.25",
            "--set", "critique.temperature=0.5", "--set", "answer.candidates=2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(sampled_run.round_dir(1) / "adapter")
    lines = result.stderr.splitlines()
    summary = lines[lines.index("round 1 done (settings: " + str(sampled_run.round_dir(1) / "config.toml") + ")"):]
    assert [line.split()[0] for line in summary[1:]] == ["ask", "answer", "critique", "filter", "dpo", "eval"]
    questions = len(sampled_run.artifact("questions", 1).read())  # the random model's babble parses unevenly
    assert f"{questions} questions about 3 videos" in summary[1] and f"{2 * questions} answers" in summary[2]
    assert "vs base" in summary[6]

    # --set wins over savi.toml, which wins over the defaults; the resolved settings are saved with the round.
    saved = tomllib.loads((sampled_run.round_dir(1) / "config.toml").read_text())
    assert saved["dpo"]["beta"] == 0.25 and saved["dpo"]["max_steps"] == 2 and saved["dpo"]["lora_r"] == 16
    assert saved["critique"]["temperature"] == 0.5 and saved["answer"]["candidates"] == 2
    assert saved["model"]["id"] == str(tiny_model()) and saved["benchmarks"]["egoschema"]["data"] == str(bench)
    manifest = sampled_run.artifact("train_log", 1).manifest()
    assert manifest["params"]["beta"] == 0.25
    assert all(sampled_run.eval_artifact("egoschema", r).complete for r in (0, 1))

    load = Policy.load
    monkeypatch.setattr(Policy, "load", lambda *a, **k: pytest.fail("a finished round must not load the model"))
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    monkeypatch.setattr(Policy, "load", load)

    # A changed DPO setting is refused for a finished stage, and --redo dpo trains again and re-evaluates the
    # new policy, keeping every earlier stage.
    questions = sampled_run.artifact("questions", 1).path.read_bytes()
    eval_before = sampled_run.eval_artifact("egoschema", 1).manifest()["params"]["adapter"]
    changed = [a if a != "dpo.beta=0.25" else "dpo.beta=0.5" for a in args]
    refused = runner.invoke(app, changed)
    assert refused.exit_code == 1 and "different parameters (beta: 0.25 -> 0.5)" in refused.stderr
    redone = runner.invoke(app, changed + ["--redo", "dpo"])
    assert redone.exit_code == 0, redone.output
    assert sampled_run.artifact("train_log", 1).manifest()["params"]["beta"] == 0.5
    assert sampled_run.eval_artifact("egoschema", 1).manifest()["params"]["adapter"] != eval_before
    assert sampled_run.artifact("questions", 1).path.read_bytes() == questions


def test_settings_come_from_savi_toml_then_overrides(sampled_run, tmp_path):
    (sampled_run.path / "savi.toml").write_text('[ask]\nper_video = 3\n[benchmarks]\n'
                                                f'nextqa = {{ data = "{tmp_path}", split = "test" }}\n')
    cfg = round_stage.resolve_round(sampled_run, {"ask": {"temperature": 0.0}})
    assert (cfg.ask.per_video, cfg.ask.temperature, cfg.ask.max_new_tokens) == (3, 0.0, 256)
    assert [(b.name, b.data, b.split) for b in cfg.benchmarks] == [("nextqa", tmp_path, "test")]


@pytest.mark.parametrize("text,expected", [("dpo.beta=0.2", ("dpo", "beta", 0.2)),
                                           ("critique.mode=judge", ("critique", "mode", "judge")),
                                           ("ask.kinds=['what','why']", ("ask", "kinds", ["what", "why"])),
                                           ("dpo.four_bit=false", ("dpo", "four_bit", False))])
def test_set_reads_values_as_toml(text, expected):
    assert round_stage.parse_override(text) == expected


def test_bad_settings_are_one_line_errors(sampled_run):
    with pytest.raises(SaviError, match="expected SECTION.KEY=VALUE"):
        round_stage.parse_override("beta=0.2")
    with pytest.raises(SaviError, match="unknown section dop"):
        round_stage.resolve_round(sampled_run, {"dop": {"beta": 0.2}})
    with pytest.raises(SaviError, match=r"unknown setting bta in \[dpo\]"):
        round_stage.resolve_round(sampled_run, {"dpo": {"bta": 0.2}})
    (sampled_run.path / "savi.toml").write_text("[dop]\nbeta = 0.2\n")
    with pytest.raises(SaviError, match=r"unknown section \[dop\] in .*savi.toml"):
        round_stage.resolve_round(sampled_run)
    (sampled_run.path / "savi.toml").write_text("[eval]\nmode = 'generate'\n")   # a setting since renamed
    with pytest.raises(SaviError, match=r"^\[eval\] mode in .*savi.toml is now protocol \(\"likelihood\", or "
                                        r"\"lmms-eval\" for what was \"generate\""):
        round_stage.resolve_round(sampled_run)
    (sampled_run.path / "savi.toml").write_text("[benchmarks]\negoschema = { split = 'full' }\n")
    with pytest.raises(SaviError, match=r"\[benchmarks\] egoschema .* must be a path"):
        round_stage.resolve_round(sampled_run)


def test_a_round_whose_previous_round_is_not_trained_stops_before_any_work(sampled_run):
    result = runner.invoke(app, ["round", "2", "--run", "t"])
    assert result.exit_code == 1
    assert "round 2 starts from the policy trained in round 1" in result.stderr
    assert not sampled_run.round_dir(2).exists()
