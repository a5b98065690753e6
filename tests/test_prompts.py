"""Prompt files (`stages/core/prompts.py` and `stages/core/prompts/*.toml`): loading, checking, rendering, overrides.

Golden files: every template of every packaged prompt is rendered with the fixed fields in `SAMPLE_FIELDS` (the ask
template once per question kind) and compared byte for byte with `tests/golden/prompts/<name>.<template>.txt`
or `<name>.<template>.<kind>.txt`. A golden file holds exactly the rendered text (no trailing newline is added).
This catches silent prompt drift: a changed prompt changes the model's training data.

After changing a prompt on purpose (and bumping its `version`), rewrite the golden files and review the diff:

    SAVI_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_prompts.py

With the variable set to 1, the golden tests write the files (and delete stale ones), then fail, saying that the
files were rewritten and must be reviewed; rerun without the variable to see them pass. Set to anything else, they
fail without writing. So a variable that leaks into CI can never make the suite pass without comparing.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.core.errors import SaviError
from stages.core.parsing import parse_critique, parse_judge, parse_questions
from stages.core.prompts import (
    KINDS,
    PROMPT_NAMES,
    PROMPTS_DIR,
    TEMPLATE_FIELDS,
    Prompt,
    load_prompt,
    load_prompts,
)

GOLDEN_DIR = Path(__file__).parent / "golden" / "prompts"


def updating_golden() -> bool:
    """Whether to rewrite the golden files (SAVI_UPDATE_GOLDEN=1). Read when each test runs."""
    value = os.environ.get("SAVI_UPDATE_GOLDEN", "")
    if value not in ("", "1"):
        pytest.fail(f"SAVI_UPDATE_GOLDEN={value!r}: set it to 1 to rewrite the golden files, or unset it to compare")
    return value == "1"


SAMPLE_FIELDS = {
    "n": 3,
    "question": "What does the woman do after she puts the cup on the table?",
    "answer": "She sits down on the chair to the left of the table and opens a book.",
    "critique": "The answer says she opens a book, but the frames show her picking up a phone. "
    "The chair is to the right of the table, not to the left.",
}


def golden_renderings() -> dict[str, str]:
    """File name -> rendered text, for every template of every packaged prompt (ask's once per kind)."""
    out = {}
    for name, prompt in load_prompts().items():
        for template, fields in TEMPLATE_FIELDS[name].items():
            values = {field: SAMPLE_FIELDS[field] for field in fields if field != "focus"}
            if "focus" in fields:
                for kind in KINDS:
                    out[f"{name}.{template}.{kind}.txt"] = prompt.render(
                        template, focus=prompt.tables["focus"][kind], **values
                    )
            else:
                out[f"{name}.{template}.txt"] = prompt.render(template, **values)
    return out


GOLDEN = golden_renderings()


@pytest.mark.parametrize("filename", sorted(GOLDEN))
def test_golden(filename):
    path = GOLDEN_DIR / filename
    expected = GOLDEN[filename].encode("utf-8")
    if updating_golden():
        before = path.read_bytes() if path.exists() else None
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        path.write_bytes(expected)
        pytest.fail(f"{path} was rewritten ({'unchanged' if before == expected else 'CHANGED'}) because "
                    "SAVI_UPDATE_GOLDEN=1: review the golden files (git diff tests/golden), then run the tests again "
                    "without SAVI_UPDATE_GOLDEN", pytrace=False)
    assert path.exists(), f"{path} is missing; run SAVI_UPDATE_GOLDEN=1 pytest {__file__}"
    assert path.read_bytes() == expected, (
        f"{filename}: the rendered prompt changed. If that was intended, bump the prompt's version and run "
        "SAVI_UPDATE_GOLDEN=1 pytest tests/test_prompts.py"
    )


def test_no_stale_golden_files():
    stale = sorted(p.name for p in GOLDEN_DIR.glob("*.txt") if p.name not in GOLDEN)
    if updating_golden():
        for name in stale:
            (GOLDEN_DIR / name).unlink()
        pytest.fail(f"stale golden files deleted because SAVI_UPDATE_GOLDEN=1: {stale or 'none'}; review, then run "
                    "the tests again without SAVI_UPDATE_GOLDEN", pytrace=False)
    assert stale == [], f"golden files for templates that no longer exist: {stale}"


def test_golden_tests_compare_without_the_variable_and_fail_with_it(tmp_path, monkeypatch):
    """The guard itself, on a scratch copy: never the committed files."""
    filename = sorted(GOLDEN)[0]
    monkeypatch.setattr(sys.modules[__name__], "GOLDEN_DIR", tmp_path)
    monkeypatch.delenv("SAVI_UPDATE_GOLDEN", raising=False)
    (tmp_path / filename).write_bytes(b"a prompt that drifted")
    (tmp_path / "gone.template.txt").write_bytes(b"a template that no longer exists")
    with pytest.raises(AssertionError, match="the rendered prompt changed"):
        test_golden(filename)
    with pytest.raises(AssertionError, match=r"no longer exist: \['gone.template.txt'\]"):
        test_no_stale_golden_files()

    monkeypatch.setenv("SAVI_UPDATE_GOLDEN", "1")
    with pytest.raises(pytest.fail.Exception, match=r"was rewritten \(CHANGED\).*review the golden files"):
        test_golden(filename)
    assert (tmp_path / filename).read_bytes() == GOLDEN[filename].encode("utf-8")
    with pytest.raises(pytest.fail.Exception, match=r"was rewritten \(unchanged\)"):
        test_golden(filename)  # even when nothing changed: a leaked variable never passes
    with pytest.raises(pytest.fail.Exception, match=r"stale golden files deleted .*gone.template.txt"):
        test_no_stale_golden_files()
    assert not (tmp_path / "gone.template.txt").exists()

    monkeypatch.setenv("SAVI_UPDATE_GOLDEN", "yes")
    with pytest.raises(pytest.fail.Exception, match="set it to 1 to rewrite the golden files, or unset it"):
        test_golden(filename)
    monkeypatch.delenv("SAVI_UPDATE_GOLDEN")
    test_golden(filename)  # the rewritten file now compares equal


# ---------------------------------------------------------------------------------------------------------------
# Packaged prompts


def test_packaged_prompts_load_and_validate():
    prompts = load_prompts()
    assert list(prompts) == list(PROMPT_NAMES)
    for name, prompt in prompts.items():
        assert isinstance(prompt, Prompt)
        assert prompt.name == name
        assert prompt.version == f"{name}/1"
        assert prompt.source == PROMPTS_DIR / f"{name}.toml"
        assert set(prompt.templates) == set(TEMPLATE_FIELDS[name])
        assert all(text == text.strip() and text for text in prompt.templates.values())
    assert list(prompts["ask"].tables) == ["focus"]
    assert tuple(prompts["ask"].tables["focus"]) == KINDS
    assert all(prompt.tables == {} for name, prompt in prompts.items() if name != "ask")
    assert load_prompt("critique") == prompts["critique"]


def test_packaged_prompts_are_package_data():
    # pyproject's package-data must list these files, or an installed savi has no prompts.
    assert sorted(p.name for p in PROMPTS_DIR.glob("*.toml")) == sorted(f"{name}.toml" for name in PROMPT_NAMES)


def test_render_fills_fields():
    ask = load_prompt("ask")
    text = ask.render("questions", n=5, focus=ask.tables["focus"]["temporal"])
    assert "exactly 5 different questions about the course of events" in text
    assert "JSON list of 5 strings" in text
    revise = load_prompt("critique").render("revise", question="Q?", answer="A0.", critique="C.")
    assert "Question: Q?\nPrevious answer: A0.\nCritique of the previous answer: C." in revise


def test_render_keeps_values_verbatim():
    # Field values are not templates: braces in a question stay as they are.
    answer = load_prompt("answer")
    assert "Question: What does {the sign} say?" in answer.render("answer", question="What does {the sign} say?")


def test_render_missing_field_is_an_error_naming_it():
    with pytest.raises(SaviError, match=r"critique\.toml: template 'revise' needs field\(s\) critique"):
        load_prompt("critique").render("revise", question="Q", answer="A")


def test_render_unused_field_is_an_error():
    with pytest.raises(SaviError, match=r"does not use field\(s\) kind"):
        load_prompt("answer").render("answer", question="Q", kind="spatial")


def test_render_unknown_template_is_a_bug():
    with pytest.raises(KeyError, match="no template 'questions'"):
        load_prompt("answer").render("questions", question="Q")


def test_judge_example_has_single_braces_and_parses():
    # The JSON example is written with {{ }} in the TOML; rendered, it is plain JSON that parse_judge reads.
    text = load_prompt("judge").render("judge", question="Q", answer="A")
    example = next(line for line in text.splitlines() if line.startswith("{"))
    assert example == '{"relevance": 4, "accuracy": 3, "temporal_grounding": 4, "clarity": 5}'
    assert parse_judge(example).overall == 4.0


def test_prompts_and_parsers_agree():
    # The format each prompt asks for is one its parser reads.
    ask = load_prompt("ask").render("questions", n=2, focus="x")
    example = ask[ask.index("["):]
    assert parse_questions(example) == (["First question?", "Second question?"], "json")
    assert "output exactly NO_ERRORS" in load_prompt("critique").templates["critique"]
    assert parse_critique("NO_ERRORS").found_errors is False


def test_importing_prompts_is_light():
    code = (
        "import sys, stages.core.prompts, stages.core.parsing\n"
        "heavy = [m for m in ('torch', 'transformers', 'pyarrow', 'duckdb', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ---------------------------------------------------------------------------------------------------------------
# Overrides (--prompts DIR)

GOOD_ASK = """
version = "ask/mine-1"

[templates]
questions = '''
Ask {n} questions about {focus}. Reply as JSON: {{"questions": [...]}}
'''

[focus]
spatial = "where things are"
temporal = "when things happen"
what = "what is there"
why = "why it happens"
how = '''how it
  happens'''
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_override_replaces_the_packaged_file(tmp_path):
    write(tmp_path, "ask.toml", GOOD_ASK)
    prompts = load_prompts(tmp_path)
    ask = prompts["ask"]
    assert ask.version == "ask/mine-1"
    assert ask.source == tmp_path / "ask.toml"
    assert ask.tables["focus"]["how"] == "how it happens"  # table texts are collapsed to one line
    assert ask.render("questions", n=2, focus="where things are") == (
        'Ask 2 questions about where things are. Reply as JSON: {"questions": [...]}'
    )
    # Stages without a file in the folder keep the packaged prompt.
    assert prompts["answer"] == load_prompt("answer")
    assert load_prompt("ask", tmp_path) == ask
    assert load_prompt("judge", tmp_path).source == PROMPTS_DIR / "judge.toml"


def test_override_with_an_unchanged_copy_is_fine(tmp_path):
    # Line endings do not matter either: a copy saved with CRLF renders the same text.
    text = (PROMPTS_DIR / "critique.toml").read_text(encoding="utf-8").replace("\n", "\r\n")
    write(tmp_path, "critique.toml", text)
    assert load_prompt("critique", tmp_path).templates == load_prompt("critique").templates


BROKEN = {
    "no version": (GOOD_ASK.replace('version = "ask/mine-1"', ""), "ask.toml: no version"),
    "empty version": (GOOD_ASK.replace('"ask/mine-1"', '""'), "ask.toml: version must be"),
    "numeric version": (GOOD_ASK.replace('"ask/mine-1"', "2"), "ask.toml: version must be"),
    "unknown field": (GOOD_ASK.replace("{focus}", "{topic}"), r"ask.toml: template 'questions' uses unknown field"),
    "field not used": (GOOD_ASK.replace("{n} ", "some "), r"ask.toml: template 'questions' does not use \{n\}"),
    "single brace": (GOOD_ASK.replace('{{"questions"', '{"questions"'), "ask.toml: template 'questions'"),
    "lone closing brace": (GOOD_ASK.replace("[...]}}", "[...]}"), "ask.toml: template 'questions'.*brace"),
    "positional field": (GOOD_ASK.replace("{focus}", "{focus} {}"), r"ask.toml: .*field \{\} is not a plain name"),
    "attribute field": (GOOD_ASK.replace("{focus}", "{focus.upper}"), r"ask.toml: .*\{focus.upper\} is not a plain"),
    "bad format spec": (GOOD_ASK.replace("{n}", "{n:q}"), "ask.toml: template 'questions' does not render"),
    "missing template": (GOOD_ASK.replace("questions = '''", "quest = '''"), "ask.toml: missing template 'questions'"),
    "no templates table": (GOOD_ASK.replace("[templates]\nquestions", "questions"), r"ask.toml: .*questions"),
    "extra template": (GOOD_ASK.replace("[focus]", "x = 'Ask.'\n[focus]"), r"ask.toml: unknown template\(s\) x"),
    "missing focus kind": (GOOD_ASK.replace('why = "why it happens"', ""), r"ask.toml: \[focus\] has no text for why"),
    "unknown focus kind": (GOOD_ASK + 'spacial = "typo"\n', r"ask.toml: \[focus\] has unknown key\(s\) spacial"),
    "empty focus text": (GOOD_ASK.replace('"what is there"', '"  "'), r"ask.toml: \[focus\] what must be"),
    "no focus table": (GOOD_ASK.split("[focus]")[0], r"ask.toml: no \[focus\] table"),
    "unknown top-level key": (GOOD_ASK.replace("[focus]", "[fokus]"), r"ask.toml: unknown key\(s\) fokus"),
    "bad toml": ('version = "ask/2"\n[templates\nquestions = "x"', "ask.toml: not valid TOML"),
    "not toml at all": ("Ask {n} questions about {focus}.", "ask.toml: not valid TOML"),
    "packaged version, other text": (GOOD_ASK.replace("ask/mine-1", "ask/1"), "ask.toml: version 'ask/1' is the pack"),
}


@pytest.mark.parametrize("text, message", BROKEN.values(), ids=BROKEN.keys())
def test_broken_override_is_a_one_line_error_naming_the_file(tmp_path, text, message):
    write(tmp_path, "ask.toml", text)
    for load in (lambda: load_prompt("ask", tmp_path), lambda: load_prompts(tmp_path)):
        with pytest.raises(SaviError, match=message) as excinfo:
            load()
        assert str(tmp_path / "ask.toml") in str(excinfo.value)
        assert "\n" not in str(excinfo.value)


def test_broken_override_of_another_stage(tmp_path):
    critique = (PROMPTS_DIR / "critique.toml").read_text(encoding="utf-8")
    write(tmp_path, "critique.toml", critique.replace("critique/1", "critique/2").replace("{critique}", ""))
    with pytest.raises(SaviError, match=r"critique.toml: template 'revise' does not use \{critique\}"):
        load_prompts(tmp_path)
    write(tmp_path, "critique.toml", critique.replace("critique/1", "critique/2").replace("NO_ERRORS", "FINE"))
    with pytest.raises(SaviError, match="critique.toml: template 'critique' must tell the model to answer NO_ERRORS"):
        load_prompt("critique", tmp_path)
    judge = (PROMPTS_DIR / "judge.toml").read_text(encoding="utf-8")
    write(tmp_path, "critique.toml", critique)
    write(tmp_path, "judge.toml", judge.replace("judge/1", "judge/2").replace("{answer}", "{candidate}"))
    with pytest.raises(SaviError, match=r"judge.toml: template 'judge' uses unknown field\(s\) \{candidate\}"):
        load_prompts(tmp_path)


def test_override_file_that_is_not_utf8(tmp_path):
    (tmp_path / "answer.toml").write_bytes(b'version = "answer/x"\n\xff\xfe')
    with pytest.raises(SaviError, match="answer.toml: not valid TOML"):
        load_prompt("answer", tmp_path)


def test_override_folder_with_a_misnamed_file(tmp_path):
    write(tmp_path, "asks.toml", GOOD_ASK)
    with pytest.raises(SaviError, match="asks.toml is not a prompt file"):
        load_prompts(tmp_path)


def test_override_folder_must_exist(tmp_path):
    with pytest.raises(SaviError, match="prompts folder not found"):
        load_prompts(tmp_path / "nope")
    with pytest.raises(SaviError, match="prompts folder not found"):
        load_prompt("ask", tmp_path / "nope")


def test_unknown_prompt_name_is_a_bug():
    with pytest.raises(ValueError, match="unknown prompt 'eval'"):
        load_prompt("eval")
