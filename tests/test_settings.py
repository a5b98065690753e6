"""Each setting is declared once, in `stages/core/settings.py`: the flags, their help and defaults, and the sections
of savi.toml derive from that declaration, and agree with it."""

import dataclasses

import pytest
import typer.main

from savi_cli.main import app
from savi_cli.options import CLIP_SCORING, flag_of
from stages.core.config import resolve
from stages.core.settings import (
    SECTIONS,
    AnswerConfig,
    AskConfig,
    ClipConfig,
    CritiqueConfig,
    EvalConfig,
    FilterConfig,
    KeyframesConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    default_text,
)

# The CLIP settings a keyframe localizer leaves out (--device among them: there it is the policy's).
CLIP_SCORING_FIELDS = tuple(name.removeprefix("ClipConfig.") for name in CLIP_SCORING)

# Each command and the settings it takes as flags (with the ones it leaves out, and why, in the command).
COMMANDS = {
    "sample": [(SampleConfig, ())],
    "ask": [(AskConfig, ()), (ModelConfig, ())],
    "answer": [(AnswerConfig, ()), (ModelConfig, ())],
    "critique": [(CritiqueConfig, ()), (ModelConfig, ())],
    "filter": [(FilterConfig, ()), (ClipConfig, ())],
    "dpo": [(TrainConfig, ()), (ModelConfig, ("load_in_4bit", "batch_size")), (ClipConfig, CLIP_SCORING_FIELDS)],
    "eval": [(EvalConfig, ()), (ModelConfig, ("seed",)), (ClipConfig, CLIP_SCORING_FIELDS)],
    "keyframes": [(KeyframesConfig, ()), (ModelConfig, ()), (ClipConfig, CLIP_SCORING_FIELDS)],
    "round": [(ModelConfig, ())],
}


def flags_of(command: str) -> dict:
    cli = typer.main.get_command(app)
    return {name: param for param in cli.commands[command].params for name in param.opts}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_setting_flag_shows_the_help_and_default_of_its_one_declaration(command):
    flags = flags_of(command)
    for cls, left_out in COMMANDS[command]:
        for field in dataclasses.fields(cls):
            if field.name in left_out:  # absent, or the flag of another setting (dpo's --batch-size)
                flag = flags.get(flag_of(cls, field))
                assert flag is None or flag.help != field.metadata["help"]
                continue
            param = flags[flag_of(cls, field)]
            assert param.help == field.metadata["help"], f"{command} {flag_of(cls, field)}"
            assert param.show_default == default_text(field), f"{command} {flag_of(cls, field)}"
            assert param.default is None  # not given: savi.toml, then the declared default, decide


def test_every_settings_class_is_a_section_of_savi_toml_and_resolves_to_its_defaults(workspace):
    from stages.core.store import open_run

    run = open_run("fresh")
    run.path.mkdir(parents=True)
    for section, cls in SECTIONS.items():
        assert cls.SECTION == section
        assert resolve(run, cls) == cls()
    (run.path / "savi.toml").write_text("[dpo]\nbeta = 0.3\n[ask]\nkinds = ['what', 'why']\n")
    assert resolve(run, TrainConfig).beta == 0.3
    assert resolve(run, AskConfig, {"per_video": 4}) == AskConfig(per_video=4, kinds=("what", "why"))


def test_a_run_remembers_how_it_was_sampled(sampled_run):
    assert resolve(sampled_run, SampleConfig) == SampleConfig(frames=4)  # the fixture sampled at 4 frames


def test_a_list_setting_is_a_comma_separated_flag(sampled_run, monkeypatch):
    from typer.testing import CliRunner

    from stages import answer as answer_stage

    seen = {}
    monkeypatch.setattr(answer_stage, "run", lambda run, round, cfg, *a, **k: seen.setdefault("cfg", cfg) and
                        (_ for _ in ()).throw(SystemExit(0)))
    CliRunner().invoke(app, ["answer", "--run", "t", "--round", "1", "--temperatures", "0.2, 0.9"])
    assert seen["cfg"].temperatures == (0.2, 0.9)
    bad = CliRunner().invoke(app, ["answer", "--run", "t", "--round", "1", "--temperatures", "0.2,hot"])
    assert bad.exit_code == 1
    assert bad.stderr == "Error: --temperatures '0.2,hot' is not a comma-separated list of numbers\n"
