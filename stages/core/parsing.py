"""Parsers for what the model writes: questions, critiques, revised answers and judge scores.

Models, small ones and early rounds above all, follow output formats only loosely. JSON arrives in code fences,
wrapped in prose, cut off at the token limit, or as a Python list; lists arrive numbered or bulleted; a verdict
arrives in any spelling. These functions take whatever came back and extract what is actually there:
- they never raise, whatever the input (a bad generation must cost one row, not the run);
- they never invent: a score that cannot be read is None, not a default, and no question is made up.

Pure functions over strings: no model, no heavy imports, so stages and tests can call them freely.
"""

from __future__ import annotations

import ast
import json
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

NO_ERRORS = "NO_ERRORS"

# ---------------------------------------------------------------------------------------------------------------
# Text normalisation


def normalize_text(text: str) -> str:
    """Lowercase, turn punctuation, symbols and control characters into spaces, collapse whitespace.

    The key for "is this the same text?": two questions that differ only in case, spacing, quotes or a trailing
    "?" get the same key. NFKC first, so full-width letters and ligatures compare equal to plain ones.
    """
    if not isinstance(text, str):
        return ""
    text = unicodedata.normalize("NFKC", text).casefold()
    # Categories P* (punctuation), S* (symbols: string.punctuation has $+<=>^`|~) and C* (control, format).
    kept = [" " if unicodedata.category(c)[0] in "PSC" else c for c in text]
    return " ".join("".join(kept).split())


def similarity(a: str, b: str) -> float:
    """How alike two texts are, from 0 (nothing in common) to 1 (same after `normalize_text`).

    Used to call a revision "nearly identical" to the answer it revises. Character-level difflib ratio on the
    normalised texts; autojunk is off because on texts over 200 characters it would treat spaces and common
    letters as junk and understate the likeness. The arguments are put in a fixed order because difflib's ratio
    can differ slightly between (a, b) and (b, a), and a filter should not depend on argument order.
    """
    x, y = sorted((normalize_text(a), normalize_text(b)))
    if not x and not y:
        return 1.0
    return SequenceMatcher(None, x, y, autojunk=False).ratio()


# ---------------------------------------------------------------------------------------------------------------
# Finding JSON in free text

_OPENING = re.compile(r"[\[{]")
# Bracket positions tried per text, and how many of those may take the slower repair path: bounds the work on
# long outputs full of brackets (nested JSON needs only one try per top-level value, since a parsed value is skipped).
_MAX_JSON_STARTS = 200
_MAX_REPAIRS = 8
_MAX_REPAIR_CHARS = 20_000
_TRAILING_COMMA = re.compile(r",\s*([\]}])")


def _balanced_end(text: str, start: int) -> int | None:
    """End (exclusive) of the bracketed span opening at `start`, skipping quoted strings; None if it never closes."""
    depth, quote, escaped = 0, "", False
    for i in range(start, min(len(text), start + _MAX_REPAIR_CHARS)):
        c = text[i]
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _repair(snippet: str) -> Any:
    """Parse near-JSON: trailing commas (common) or a Python literal with single quotes (common in small models)."""
    try:
        return json.loads(_TRAILING_COMMA.sub(r"\1", snippet))
    except (ValueError, RecursionError):
        pass
    try:
        value = ast.literal_eval(snippet)
    except Exception:  # literal_eval raises a zoo of types (SyntaxError, ValueError, MemoryError, ...) on junk
        return None
    # Only lists and dicts: a set literal {"a", "b"} would come back in a hash-randomised order.
    return value if isinstance(value, (list, dict)) else None


def _json_values(text: str) -> Iterator[tuple[int, int, Any]]:
    """Yield (start, end, value) for each top-level JSON list or object embedded in `text`, first to last.

    Tries each "[" or "{" in turn; after a value parses, the search continues after it, so the lists inside an
    object are not yielded again. Code fences and prose around the JSON need no special case: they are skipped.
    """
    decoder = json.JSONDecoder()
    pos, tries, repairs = 0, 0, 0
    while tries < _MAX_JSON_STARTS:
        match = _OPENING.search(text, pos)
        if match is None:
            return
        start, tries = match.start(), tries + 1
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            value, end = None, None
            if repairs < _MAX_REPAIRS:
                repairs += 1
                span_end = _balanced_end(text, start)
                if span_end is not None:
                    value = _repair(text[start:span_end])
                    end = span_end if value is not None else None
        if end is None:
            pos = start + 1
            continue
        yield start, end, value
        pos = end


# ---------------------------------------------------------------------------------------------------------------
# Questions

# A list marker at the start of a line: "1. ", "1) ", "1: ", "Q1: ", "Question 2. ", "(3) ", "[4] ", "- ", "* ", "• ".
# The marker must be followed by whitespace, so "1.5 seconds" or "-2 degrees" are not list items.
_MARKER = re.compile(
    r"""^[ \t]*(?:
        (?:q(?:uestion)?[ \t]*)?\d{1,3}[ \t]*[.):\]]
      | [(\[]\d{1,3}[)\]]
      | [-*+•·–—]
    )\s+""",
    re.IGNORECASE | re.VERBOSE,
)
# A label in front of the question itself: "Spatial: ...", "**Temporal question:** ...", "Q: ...", "Question 3: ...".
_LABEL = re.compile(
    r"^[*_]{0,3}[ \t]*(?:(?:spatial|temporal|what|why|how)(?:[ \t]+questions?)?|q(?:uestion)?[ \t]*\d{0,3})"
    r"[ \t]*[*_]{0,3}[ \t]*:[ \t]*[*_]{0,3}[ \t]*",
    re.IGNORECASE,
)
_FENCE_LINE = re.compile(r"^\s*(?:```|~~~)[\w+-]*\s*$")
_QUOTES = "\"'`“”‘’«»"
_QUOTE_PAIRS = {'"': '"', "'": "'", "`": "`", "“": "”", "‘": "’", "«": "»"}
# The first line of a reply that was meant to be JSON: '["What...', '{"spatial": [', or a bare '[' or '{'.
_JSON_START = re.compile(r'^\s*[\[{]\s*(?:"|$)')
_EMPHASIS = re.compile(r"([*_])(.+)\1", re.DOTALL)
# A JSON-looking string literal, for salvaging a list cut off at the token limit. Not followed by ":" (a dict key).
_STRING_LITERAL = re.compile(r'"((?:[^"\\\n]|\\.)*)"(?!\s*:)')
# Keys under which a JSON item object keeps its question, e.g. [{"question": "...", "type": "spatial"}].
_QUESTION_KEYS = ("question", "q", "text")


def _strings_in(value: Any, depth: int = 0) -> list[str]:
    """The strings of a parsed JSON value, in order: list items, dict values (dicts of lists are flattened)."""
    if depth > 5:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings_in(item, depth + 1)]
    if isinstance(value, dict):
        # An item object: its question field is the question; the other fields (kind, answer...) are not questions.
        lowered = {str(k).strip().lower(): v for k, v in value.items()}
        for key in _QUESTION_KEYS:
            if isinstance(lowered.get(key), str):
                return [lowered[key]]
        return [s for item in value.values() for s in _strings_in(item, depth + 1)]
    return []


def _clean_question(item: str) -> str:
    """Strip list markers, labels, quotes, markdown emphasis and trailing commas; collapse whitespace."""
    # Bold inside a question ("**Why** does...") is markup, never part of what is asked.
    text = " ".join(item.replace("**", "").replace("__", "").split())
    for _ in range(4):  # layers come in any order: '- "Q1: What...?",' — peel until nothing changes
        before = text
        text = _MARKER.sub("", text)
        text = _LABEL.sub("", text)
        text = text.strip().rstrip(",").strip()
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
        emphasis = _EMPHASIS.fullmatch(text)  # *italic* or _italic_ around the whole question
        if emphasis and emphasis.group(1) not in emphasis.group(2):  # not "*What* is *this*"
            text = emphasis.group(2).strip()
        if text == before:
            break
    return text


def _keep_questions(items: list[str], max_chars: int) -> list[str]:
    """Clean, then drop empties, letterless junk, headers, overlong items and duplicates (first one wins)."""
    kept: list[str] = []
    seen: set[str] = set()
    for item in items:
        text = _clean_question(item)
        if not text or len(text) > max_chars or not any(c.isalpha() for c in text):
            continue
        # "Spatial questions:" or "Here are three questions:" introduce a list; they ask nothing.
        if text.endswith(":"):
            continue
        key = normalize_text(text)
        if key in seen:
            continue
        seen.add(key)
        kept.append(text)
    return kept


def _inside_a_sentence(text: str, start: int, end: int) -> bool:
    """True when JSON sits inside a line of prose, as in 'What does the sign ["EXIT"] say?'.

    Such JSON is part of a question, not the list of questions. A real list starts its line, follows prose that
    ends in punctuation ("Here they are: [...]"), or ends its line ("Questions [...]").
    """
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    before = text[line_start:start].rstrip()
    after = text[end : len(text) if line_end == -1 else line_end].strip()
    return bool(before) and before[-1].isalnum() and bool(after)


def parse_questions(text: str, max_chars: int = 300) -> tuple[list[str], str]:
    """Extract questions from a model's reply. Returns (questions, how): how is "json", "numbered", "lines" or "none".

    In order of preference:
    1. JSON: the first embedded list or object (fenced, with prose around it, with trailing commas, or as a Python
       literal) that yields a question; objects are flattened ({"spatial": [...], "temporal": [...]}). A list cut
       off at the token limit keeps its complete strings.
    2. Numbered or bulleted lines ("1. ", "1) ", "Q1: ", "- ", "* "): when any exist, only those.
    3. Every other non-empty line.
    Items are cleaned of markers, labels ("Spatial: "), quotes and emphasis; empty, letterless, overlong
    (> max_chars) and header-like items (ending in ":") are dropped, as are duplicates up to case, spacing and
    punctuation, keeping the first. "none" means nothing survived. Never raises.
    """
    if not isinstance(text, str) or not text.strip():
        return [], "none"

    for start, end, value in _json_values(text):
        if _inside_a_sentence(text, start, end):
            continue
        questions = _keep_questions(_strings_in(value), max_chars)
        if questions:
            return questions, "json"

    lines = [line for line in text.splitlines() if line.strip() and not _FENCE_LINE.match(line)]

    # JSON that starts a line but does not parse was most likely cut off at the token limit: keep its complete
    # string literals (from that line on; the prose before it, if any, is not part of the list).
    json_line = next((i for i, line in enumerate(lines) if _JSON_START.match(line)), None)
    if json_line is not None:
        literals = []
        for match in _STRING_LITERAL.finditer("\n".join(lines[json_line:])):
            try:
                literals.append(json.loads(f'"{match.group(1)}"'))
            except ValueError:  # an escape JSON does not know, e.g. "\q"
                continue
        questions = _keep_questions(literals, max_chars)
        if questions:
            return questions, "json"

    marked = [line for line in lines if _MARKER.match(line)]
    if marked:
        questions = _keep_questions(marked, max_chars)
        return (questions, "numbered") if questions else ([], "none")

    questions = _keep_questions(lines, max_chars)
    return (questions, "lines") if questions else ([], "none")


# ---------------------------------------------------------------------------------------------------------------
# Critiques


@dataclass(frozen=True)
class CritiqueVerdict:
    """What a critique says about an answer: whether it found errors, and which kinds (keyword tags, for stats)."""

    found_errors: bool
    error_types: tuple[str, ...]


# "NO_ERRORS", "No errors.", "no_errors", "NO-ERRORS", "No error found", "**No errors detected**".
_NO_ERRORS = re.compile(r"\bno[\s_-]*errors?\b(?:[\s_-]*(?:found|detected|identified))?", re.IGNORECASE)
# Words that may stand beside NO_ERRORS without adding substance ("The answer is correct. NO_ERRORS"). Anything
# else ("not", "but", "the car", "left") means the critique says something, so it counts as having found errors.
_AFFIRMATION_WORDS = frozenset(
    """a all an and answer answers are as by claim claims complete completely consistent correct critique entirely
    evidence every everything found frame frames fully has have i in is it matches of output result response so
    supported the there this totally verdict video visual was were with accurate""".split()
)
# Keyword tags, in a fixed order. Heuristic: a critique that says "the spatial layout is right but the order is
# wrong" gets both tags. They describe the data (how many critiques mention order?); no filter should trust them.
_ERROR_KEYWORDS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        (
            "spatial",
            r"\bspatial|\bposition|\blocat(?:ion|ed)\b|\b(?:to|on) the (?:left|right)\b|\b(?:left|right) (?:of|side)\b"
            r"|\bbehind\b|\bin front\b|\babove\b|\bbelow\b|\bbeneath\b|\bbeside\b|\bnext to\b|\bon top of\b",
        ),
        ("temporal", r"\btemporal|\border\b|\bbefore\b|\bafter\b|\bsequence|\bearlier\b|\blater\b|\bchronolog"),
        (
            "hallucination",
            r"\bhallucinat|\bnot present\b|\b(?:does not|doesn't|do not|don't|never) (?:appear|occur|happen)"
            r"|\bno such\b|\bnot (?:visible|shown|seen)\b|\bno \w+ (?:occurs|happens|appears|is visible|is shown)\b",
        ),
        ("causal", r"\bcaus|\bbecause\b|\breason|\bdue to\b"),
        (
            "omission",
            r"\bmissing\b|\bomit|\bomission|\b(?:does not|doesn't|fails to|did not|didn't) mention"
            r"|\bnot mentioned\b|\bleaves out\b|\boverlook",
        ),
    )
)


def parse_critique(text: str) -> CritiqueVerdict:
    """Read a critique: found_errors is False iff it says NO_ERRORS (any case or punctuation) and nothing more.

    A critique that says NO_ERRORS next to only affirming words ("The answer is fully correct.") is clean; one that
    says NO_ERRORS and then names a problem is not. error_types are keyword tags ("spatial", "temporal",
    "hallucination", "causal", "omission"), or ("factual",) when errors were found but no keyword matched.
    An empty or letterless critique found nothing: (False, ()). A stage that wants to record "empty critique"
    as its own reason should check for that before calling.
    """
    if not isinstance(text, str) or not any(c.isalpha() for c in text):
        return CritiqueVerdict(False, ())
    if _NO_ERRORS.search(text):
        rest = normalize_text(_NO_ERRORS.sub(" ", text)).split()
        if all(word in _AFFIRMATION_WORDS for word in rest):
            return CritiqueVerdict(False, ())
    tags = tuple(name for name, pattern in _ERROR_KEYWORDS if pattern.search(text))
    return CritiqueVerdict(True, tags or ("factual",))


# ---------------------------------------------------------------------------------------------------------------
# Revised answers

# "Revised answer:", "**Corrected answer**:", "Here is the corrected response:", "Improved answer -". The first
# such label wins, wherever it starts a line: models often echo the question and critique before it.
_REVISION_LABEL = re.compile(
    r"^[ \t*_#>]{0,6}(?:(?:sure|okay|ok)[!,.]?[ \t]+)?(?:here(?: is|'s) (?:the |my |a )?)?"
    r"(?:revised|corrected|improved|updated|final|new)[ \t]+(?:answer|response|version)"
    r"[ \t*_]{0,4}(?::|-|–|—)[ \t*_]{0,4}",
    re.IGNORECASE | re.MULTILINE,
)
_ANSWER_LABEL = re.compile(r"^[ \t*_]{0,4}answer[ \t*_]{0,4}:[ \t*_]{0,4}", re.IGNORECASE)


def _unfence(text: str) -> str:
    """The content of a reply wrapped in one ``` or ~~~ code fence; other text unchanged."""
    stripped = text.strip()
    for fence in ("```", "~~~"):
        if stripped.startswith(fence):
            first_newline = stripped.find("\n")
            if first_newline == -1:  # a one-line fence: ```The man waves.```
                return stripped.strip("`~").strip()
            body = stripped[first_newline + 1 :]
            if body.rstrip().endswith(fence):
                body = body.rstrip()[: -len(fence)]
            return body.strip()
    return stripped


def parse_revision(text: str) -> str:
    """The revised answer alone: without a "Revised answer:"-style label, code fence, surrounding quotes or
    trailing spaces. Inner line breaks are kept, so the revision keeps the answer's own formatting. Never raises.
    """
    if not isinstance(text, str):
        return ""
    text = _unfence(text)
    label = _REVISION_LABEL.search(text)
    if label:
        text = text[label.end() :]
    else:
        text = _ANSWER_LABEL.sub("", text, count=1)
    text = _unfence(text)
    # Quotes around the whole answer go; '"Stop" he said, and "go"' starts and ends with quotes that are not a
    # pair, so a text with the same quote inside is left alone.
    closing = _QUOTE_PAIRS.get(text[:1])
    if len(text) >= 2 and closing and text[-1] == closing and text[0] not in text[1:-1] and closing not in text[1:-1]:
        text = text[1:-1].strip()
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


# ---------------------------------------------------------------------------------------------------------------
# Judge scores


@dataclass(frozen=True)
class JudgeScore:
    """A judge's 1-5 scores of one candidate answer; None where the reply gave no readable score."""

    relevance: float | None
    accuracy: float | None
    temporal_grounding: float | None
    clarity: float | None

    @property
    def overall(self) -> float | None:
        """Mean of the criteria that were read; None if none was."""
        present = [s for s in (self.relevance, self.accuracy, self.temporal_grounding, self.clarity) if s is not None]
        return sum(present) / len(present) if present else None


CRITERIA = ("relevance", "accuracy", "temporal_grounding", "clarity")
_CRITERION_ALIASES = {
    "relevance": "relevance",
    "accuracy": "accuracy",
    "temporal_grounding": "temporal_grounding",
    "temporalgrounding": "temporal_grounding",
    "temporal": "temporal_grounding",
    "clarity": "clarity",
}
_NUMBER = r"([-+]?\d{1,4}(?:\.\d{1,4})?)"
_OUT_OF = r"(?:[ \t]*(?:/|out[ \t]+of)[ \t]*(\d{1,4}(?:\.\d{1,4})?))?"
# "Relevance: 4", "**Accuracy**: 3/5", "Temporal grounding - 4", "clarity score = 5 out of 5", "Relevance (1-5): 4".
_CRITERION_LINE = re.compile(
    r"\b(relevance|accuracy|temporal[ \t_-]*grounding|temporal|clarity)\b(?:[ \t]+(?:score|rating))?"
    r"[ \t*_\"'`]{0,4}(?:\([^)\n]{0,20}\)[ \t*_\"'`]{0,4})?[:=–—-]?[ \t*_\"'`]{0,4}" + _NUMBER + _OUT_OF,
    re.IGNORECASE,
)
# A single overall score without criteria: "4/5", "Score: 4", "Overall rating: 4 out of 10". Bare fractions only
# out of 5 or 10: "frame 3/32" in a reply is not a score.
_BARE_FRACTION = re.compile(r"(?<![\w./])" + _NUMBER + r"[ \t]*(?:/|out[ \t]+of)[ \t]*(5|10)(?!\w|[./]\d)")
_BARE_LABELLED = re.compile(
    r"\b(?:overall(?:[ \t]+(?:score|rating))?|score|rating)[ \t*_]{0,4}[:=][ \t*_]{0,4}" + _NUMBER + r"(?![\d/])",
    re.IGNORECASE,
)


def _score(value: Any, out_of: Any = None) -> float | None:
    """A number on the 1-5 scale, or None. Other scales ("8/10") are rescaled; out-of-range values are clamped."""
    if isinstance(value, bool):  # JSON true is a Python int; it is not a score
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*" + _NUMBER + _OUT_OF + r"\s*", value)
        if match is None:
            return None
        value, out_of = match.group(1), match.group(2) or out_of
    if isinstance(value, dict):  # {"relevance": {"score": 4, "reason": "..."}}
        for key in ("score", "rating", "value"):
            if key in value:
                return _score(value[key])
        return None
    try:
        number = float(value)
        scale = float(out_of) if out_of is not None else 5.0
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or not math.isfinite(scale) or scale <= 0:
        return None
    if scale != 5.0:
        number = number / scale * 5.0
    return min(5.0, max(1.0, number))


def _criterion(key: Any) -> str | None:
    return _CRITERION_ALIASES.get(re.sub(r"[\s_-]+", "_", str(key).strip().lower()))


def _scores_from_object(value: Any) -> dict[str, float | None] | None:
    """Criterion scores of a parsed JSON object, or None when it names no criterion (not a judge object)."""
    if isinstance(value, list):  # [{"relevance": ...}]: the first object that is a judge object
        for item in value[:8]:
            found = _scores_from_object(item)
            if found is not None:
                return found
        return None
    if not isinstance(value, dict):
        return None
    scores: dict[str, float | None] = {}
    for key, item in value.items():
        name = _criterion(key)
        if name is not None and name not in scores:
            scores[name] = _score(item)
    if scores:
        return scores
    for key in ("scores", "score", "ratings", "evaluation"):  # {"scores": {...}, "reason": "..."}
        if key in value:
            return _scores_from_object(value[key])
    return None


def parse_judge(text: str) -> JudgeScore:
    """Read a judge's reply into 1-5 scores. Never guesses: what cannot be read is None.

    Sources, first that works: a JSON object with the criteria as keys (fenced or inside prose; "temporal
    grounding" and "temporal" count as temporal_grounding; values may be numbers, "4", "4/5" or {"score": 4});
    "Relevance: 4"-style lines; a single overall score ("4/5", "Score: 4"), which is then given to every criterion
    so that `overall` is that score (two different bare scores are ambiguous: all None). Scores on another scale
    ("8/10") are rescaled to 5; values are clamped to 1..5; non-numeric values are None.
    """
    if not isinstance(text, str):
        return JudgeScore(None, None, None, None)

    for _, _, value in _json_values(text):
        scores = _scores_from_object(value)
        if scores is not None:
            return JudgeScore(**{name: scores.get(name) for name in CRITERIA})

    lined: dict[str, float | None] = {}
    for match in _CRITERION_LINE.finditer(text):
        name = _criterion(match.group(1))
        if name is not None and name not in lined:
            lined[name] = _score(match.group(2), match.group(3))
    if lined:
        return JudgeScore(**{name: lined.get(name) for name in CRITERIA})

    bare = {_score(m.group(1), m.group(2)) for m in _BARE_FRACTION.finditer(text)}
    bare |= {_score(m.group(1)) for m in _BARE_LABELLED.finditer(text)}
    bare.discard(None)
    if len(bare) == 1:
        (overall,) = bare
        return JudgeScore(overall, overall, overall, overall)
    return JudgeScore(None, None, None, None)
