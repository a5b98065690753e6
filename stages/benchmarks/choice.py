"""Reading which option of a multiple-choice question a model's reply picks (`savi eval`: the strict reading).

Benchmarks label their options with letters (A., B., ...); `LETTERS` is the one alphabet the readers render them
with and the answers are read back with.
"""

from __future__ import annotations

import re

from stages.core.parsing import normalize_text

LETTERS = "ABCDEFGHIJ"

_ANSWER_PREFIX = re.compile(
    r"^[\s*_#>]*(?:(?:the\s+)?(?:best|correct|final|right)\s+(?:answer|option|choice)(?:\s+is)?|"
    r"(?:the\s+)?(?:answer|option|choice)(?:\s+is)?|best\s+option)\s*[:：\-]?\s*",
    re.IGNORECASE,
)
_LEADING_LETTER = re.compile(r"^[\s*_\[(]*([A-J])(?:\s*[.:)\]*]|\s*$)")
_LEADING_LETTER_WORD = re.compile(r"^([B-HJ])\s+\w")  # "B dunking ..."; A and I are words, so not these
_EXPLICIT_LETTER = re.compile(
    r"\(([A-J])\)|\b(?:option|answer|choice)\s*(?:is\s*)?[:：]?\s*\(?([A-J])\b|(?<![\w'])([A-J])[.)](?=\s|$)"
)
_YES_NO = re.compile(r"^[\s*_\"'(]*(yes|no)\b", re.IGNORECASE)


def parse_choice(text: str, options: list[str] | tuple[str, ...], yes_no: bool = False, *,
                 labels: list[str] | tuple[str, ...] | None = None) -> tuple[int | None, str | None]:
    """Read which option a generated answer picks: (index into options, how it was read), or (None, None).

    Stricter than the reference scorers, which guess a random letter when nothing matches: an answer that
    cannot be read, or that names two different options, is unparsed and reported as such, never guessed.
    In order: for options the prompt labels otherwise than by letter (`labels`: "Option 1", "Sentence A"), a
    leading label; a leading letter ("B", "(B)", "B. text", "The answer is B"); a single letter marked as one
    anywhere ("(C)", "option C", "C."); the text of exactly one option; for yes/no, a leading yes or no.
    """
    if not isinstance(text, str) or not options:
        return None, None
    stripped = _ANSWER_PREFIX.sub("", text.strip(), count=1).strip()
    if yes_no:
        match = _YES_NO.match(stripped)
        return (0 if match.group(1).lower() == "yes" else 1, "yes_no") if match else (None, None)
    if labels:
        # Before and after an answer prefix: "Option 2: ..." starts with a label that the prefix would eat.
        leading_labels = {k for k, label in enumerate(labels) for said in (text.strip(), stripped)
                          if re.match(rf"[\s*_\[(]*{re.escape(label)}(?!\w)", said, re.IGNORECASE)}
        if len(leading_labels) == 1:
            return leading_labels.pop(), "label"

    letters = LETTERS[:len(options)]
    leading = _LEADING_LETTER.match(stripped) or _LEADING_LETTER_WORD.match(stripped)
    marked = {g for m in _EXPLICIT_LETTER.finditer(stripped) for g in m.groups() if g}
    if leading:
        marked.add(leading.group(1))
    if len(marked) == 1 and (letter := marked.pop()) in letters:
        return letters.index(letter), "letter"
    if marked:
        return None, None  # several letters named, or one that is not an option: ambiguous

    said = f" {normalize_text(stripped)} "
    named = [k for k, option in enumerate(options) if normalize_text(option)
             and f" {normalize_text(option)} " in said]
    # An option contained in a longer one that was also named ("red" in "dark red") is not a second answer.
    named = [k for k in named if not any(j != k and normalize_text(options[k]) in normalize_text(options[j])
                                         for j in named)]
    return (named[0], "text") if len(named) == 1 else (None, None)
