"""Prompt files: load, check and render the text each stage puts in the user message next to the video.

There is one TOML file per stage in `stages/core/prompts/` (ask, answer, critique, judge, keyframes). The chat
template and the video part are added by the model runtime, not here. A file holds:
- `version`: a short string such as "ask/1". It is stored in every row the prompt produced, so rows made with
  different wording can always be told apart. Change it whenever the wording changes.
- `[templates]`: the prompt texts, rendered with `str.format` and named fields only ({question}, {n}...).
  A literal brace is written `{{` or `}}`, e.g. in a JSON example. Whitespace around a template is dropped, so
  where the `'''` quotes go does not matter.
- the tables a stage looks texts up in, e.g. ask's `[focus]`, one text per question kind. Table texts are plain
  text, passed as field values: no fields and no doubled braces. Their whitespace is collapsed to single spaces,
  since they go in mid-sentence, so a long one may span lines.

`--prompts DIR` overrides prompts file by file: DIR/ask.toml replaces the packaged ask.toml entirely (nothing is
merged), and stages without a file in DIR keep the packaged one. A replacement needs its own `version`.

Everything is checked when a prompt is loaded, so a typo fails before any model is loaded, as a `SaviError`
that names the file: the TOML syntax, the version, that each template the stage renders is there and uses
exactly the fields the stage passes, and the tables. Heavy imports: none.
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from pathlib import Path

from stages.core.errors import SaviError
from stages.core.parsing import NO_ERRORS
from stages.core.settings import KINDS

PROMPTS_DIR = Path(__file__).with_name("prompts")
PROMPT_NAMES = ("ask", "answer", "critique", "judge", "keyframes")

# The fields each stage passes to each of its templates. A template must use exactly these: an unknown field
# could never be filled in, and a missing one (a revise prompt without {critique}) would quietly ask the model
# something other than what the stage thinks it asks.
TEMPLATE_FIELDS: dict[str, dict[str, frozenset[str]]] = {
    "ask": {"questions": frozenset({"n", "focus"})},
    "answer": {"answer": frozenset({"question"})},
    "critique": {
        "critique": frozenset({"question", "answer"}),
        "revise": frozenset({"question", "answer", "critique"}),
    },
    "judge": {"judge": frozenset({"question", "answer"})},
    "keyframes": {"frame": frozenset({"question"})},
}

# The tables each prompt file must have, and the keys each must hold (no more, no fewer).
TABLE_KEYS: dict[str, dict[str, tuple[str, ...]]] = {"ask": {"focus": KINDS}}

# Values for a trial render at load time, so that a bad format spec ({n:q}) fails now, not in the middle of a run.
_TRIAL_VALUES: dict[str, object] = {"n": 3, "focus": "focus", "question": "question", "answer": "answer",
                                    "critique": "critique"}


@dataclass(frozen=True)
class Prompt:
    """One stage's prompt file, loaded and checked."""

    name: str  # "ask"
    version: str  # "ask/1": stored in every row this prompt produced
    source: Path  # the file it came from
    templates: dict[str, str]
    tables: dict[str, dict[str, str]]  # e.g. {"focus": {"spatial": "...", ...}} for ask

    def render(self, template: str, **fields: object) -> str:
        """The template filled in with `fields`, which must be exactly the fields the template uses."""
        if template not in self.templates:
            # Only a stage can ask for a template that is not there (loading checked the file): a bug, not a user error.
            raise KeyError(f"prompt {self.name!r} has no template {template!r} (it has: {', '.join(self.templates)})")
        text = self.templates[template]
        used = _fields(text)
        missing = sorted(used - fields.keys())
        if missing:
            raise SaviError(f"{self.source}: template {template!r} needs field(s) {', '.join(missing)}, not given")
        unused = sorted(fields.keys() - used)
        if unused:
            raise SaviError(f"{self.source}: template {template!r} does not use field(s) {', '.join(unused)}")
        return text.format(**fields)


def load_prompt(name: str, override_dir: Path | None = None) -> Prompt:
    """The prompt of stage `name`: from `override_dir` if it holds `<name>.toml`, else the packaged one."""
    if name not in PROMPT_NAMES:
        raise ValueError(f"unknown prompt {name!r}; prompts are {', '.join(PROMPT_NAMES)}")
    packaged = _load_file(name, PROMPTS_DIR / f"{name}.toml")
    if override_dir is None:
        return packaged
    path = _checked_dir(override_dir) / f"{name}.toml"
    if not path.exists():
        return packaged
    prompt = _load_file(name, path)
    # The version is what tells rows apart. A changed text under the packaged version would make rows from two
    # different prompts look alike; an unchanged copy is harmless.
    if prompt.version == packaged.version and (prompt.templates, prompt.tables) != (
        packaged.templates,
        packaged.tables,
    ):
        raise SaviError(
            f"{path}: version {prompt.version!r} is the packaged prompt's version, but the text differs; "
            f"give it its own version, e.g. {prompt.version + '-custom'!r}"
        )
    return prompt


def load_prompts(override_dir: Path | None = None) -> dict[str, Prompt]:
    """All prompts, checked, by name. Also refuses a `--prompts` folder with a .toml file no stage would read."""
    if override_dir is not None:
        folder = _checked_dir(override_dir)
        expected = {f"{name}.toml" for name in PROMPT_NAMES}
        unknown = sorted(p.name for p in folder.glob("*.toml") if p.name not in expected)
        if unknown:
            raise SaviError(
                f"{folder}: {', '.join(unknown)} is not a prompt file; prompt files are named "
                f"{', '.join(sorted(expected))}"
            )
    return {name: load_prompt(name, override_dir) for name in PROMPT_NAMES}


def _checked_dir(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise SaviError(f"{folder}: prompts folder not found (--prompts takes a folder of .toml files)")
    return folder


def _fields(template: str) -> set[str]:
    """The field names a template uses. Assumes `_check_template` accepted it."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def _check_template(path: Path, key: str, template: str, expected: frozenset[str]) -> None:
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone "{" or "}"
        raise SaviError(f"{path}: template {key!r}: {exc}; write a literal brace as {{{{ or }}}}") from None
    used: set[str] = set()
    for _, field, spec, _ in parts:
        if field is None:
            continue
        # Only plain names: "{}" or "{0}" has no name to fill, and "{answer.upper}" or "{answer[0]}" would reach
        # into the value, which no stage means.
        if not field.isidentifier():
            raise SaviError(f"{path}: template {key!r}: field {{{field}}} is not a plain name like {{question}}")
        if spec and ("{" in spec or "}" in spec):
            raise SaviError(f"{path}: template {key!r}: field {{{field}}} has a nested field in its format spec")
        used.add(field)
    unknown = sorted(used - expected)
    if unknown:
        raise SaviError(
            f"{path}: template {key!r} uses unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; "
            f"it may use {', '.join('{' + f + '}' for f in sorted(expected))} (write a literal brace as {{{{ or }}}})"
        )
    missing = sorted(expected - used)
    if missing:
        raise SaviError(
            f"{path}: template {key!r} does not use {', '.join('{' + f + '}' for f in missing)}, "
            "which the stage passes"
        )
    try:
        template.format(**{f: _TRIAL_VALUES[f] for f in used})
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise SaviError(f"{path}: template {key!r} does not render: {exc}") from None


def _load_file(name: str, path: Path) -> Prompt:
    """Read and check one prompt file; every problem is a one-line SaviError naming the file."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SaviError(f"{path}: not valid TOML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError:
        raise SaviError(f"{path}: not valid TOML: the file is not UTF-8 text") from None
    except OSError as exc:
        raise SaviError(f"{path}: cannot read: {exc.strerror or exc}") from None

    expected_templates = TEMPLATE_FIELDS[name]
    expected_tables = TABLE_KEYS.get(name, {})
    allowed = {"version", "templates", *expected_tables}
    unknown = sorted(set(data) - allowed)
    if unknown:  # a misspelt table ("[fokus]") must not be silently ignored
        raise SaviError(
            f"{path}: unknown key(s) {', '.join(unknown)}; the {name} prompt has {', '.join(sorted(allowed))}"
        )

    version = data.get("version")
    if version is None:
        raise SaviError(f'{path}: no version; add a line such as version = "{name}/1-custom" at the top')
    if not isinstance(version, str) or not version.strip() or "\n" in version:
        raise SaviError(f"{path}: version must be a one-line, non-empty string, e.g. \"{name}/1\"")

    raw_templates = data.get("templates")
    if not isinstance(raw_templates, dict):
        raise SaviError(f"{path}: no [templates] table; the {name} prompt needs {', '.join(expected_templates)}")
    templates: dict[str, str] = {}
    for key in expected_templates:
        if key not in raw_templates:
            raise SaviError(f"{path}: missing template {key!r} in [templates]")
        value = raw_templates[key]
        if not isinstance(value, str) or not value.strip():
            raise SaviError(f"{path}: template {key!r} must be a non-empty string")
        # Same text whatever the editor's line endings or the placement of the closing quotes.
        templates[key] = value.replace("\r\n", "\n").strip()
        _check_template(path, key, templates[key], expected_templates[key])
    extra = sorted(set(raw_templates) - set(expected_templates))
    if extra:
        raise SaviError(
            f"{path}: unknown template(s) {', '.join(extra)}; the {name} prompt has {', '.join(expected_templates)}"
        )
    # The critique parser looks for the literal NO_ERRORS; a prompt that asks for another word would make every
    # critique look like it found errors.
    if name == "critique" and NO_ERRORS not in templates["critique"]:
        raise SaviError(f"{path}: template 'critique' must tell the model to answer {NO_ERRORS} when it finds no error")

    tables: dict[str, dict[str, str]] = {}
    for table, keys in expected_tables.items():
        raw = data.get(table)
        if not isinstance(raw, dict):
            raise SaviError(f"{path}: no [{table}] table; it needs one text for each of {', '.join(keys)}")
        missing = [k for k in keys if k not in raw]
        if missing:
            raise SaviError(f"{path}: [{table}] has no text for {', '.join(missing)}")
        extra = sorted(set(raw) - set(keys))
        if extra:
            raise SaviError(f"{path}: [{table}] has unknown key(s) {', '.join(extra)}; keys are {', '.join(keys)}")
        bad = [k for k in keys if not isinstance(raw[k], str) or not raw[k].strip()]
        if bad:
            raise SaviError(f"{path}: [{table}] {', '.join(bad)} must be non-empty strings")
        tables[table] = {k: " ".join(raw[k].split()) for k in keys}

    return Prompt(name=name, version=version.strip(), source=path, templates=templates, tables=tables)
