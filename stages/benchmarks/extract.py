"""Which option a generated reply picks, read the way lmms-eval 0.7.3 reads it, or by savi's own strict parser.

Two protocols:
- "strict": savi's `parse_choice` for every benchmark (a reply that names no option, or two, is unparsed).
- "lmms-eval": the answer extractor of the benchmark's lmms-eval 0.7.3 task, re-implemented from its behaviour,
  so that savi's figures can be set beside published lmms-eval figures. As lmms-eval's scoring loop does by
  default, reasoning blocks (<think>…</think>, <analysis>…</analysis>) are removed and the reply is stripped first.

The lmms-eval rules, per benchmark (X is a letter; "first" and "last" are positions in the reply):
- egoschema: MMMU-derived; collects every "(X)", "X " and "X." present; if several, the one whose last occurrence
  comes earliest; none and more than 5 words: the rendered option ("A. text") found in the reply; else random.
- nextqa: MMMU-derived; "(X)", else "X ", else "X." (each only if the previous found nothing); if several, the
  last mentioned; none and more than 5 words: the option text found in the reply, last mentioned; else random.
- mvbench: "X. text" at the start (any case), else the first standalone letter a-e after punctuation is removed
  and the reply lower-cased (so the article "a" reads as A); else wrong.
- perceptiontest: the first standalone capital A-D anywhere ("A man ..." reads as A); else wrong.
- tempcompass: multi-choice: the reply is exactly an option's line, or exactly "A".."D", or starts with "X." or
  "X)"; yes_no: starts with "yes" or "no" (any case); caption_matching: the reply is exactly an option's line
  ("Option 1: text"), its sentence (alone or after ") ") or its label ("Option 1", "1"); else a GPT judge decides.
- longvideobench: after removing answer prefixes such as "The answer is", the first capital A-E anywhere, even
  inside a word ("Based on the video, ..." reads as B); else random.
- videomme: `extract_mcq_answer`: every letter found in a known format gets a priority (starts the reply 10, ends
  it 9, after "the answer is" and similar 7, "(X)" 6, "X." 5, "X:" 4, "X)" 3, "X " 2, anywhere 0 only when
  nothing else matched); the highest priority wins, then the latest position; else wrong.
- world (savi's own benchmark): the strict parser under both protocols; it has no lmms-eval task.

Why savi never guesses: where lmms-eval draws a seeded random letter, the letter it draws depends on the seed and
on how the items are split across processes, so no re-implementation could reproduce it, and a guess would make
two runs of the same replies disagree. `read_answer` says instead what lmms-eval would have done (`fallback`):
"random" (the caller credits the expected 1/k), "judge" (TempCompass asks a paid GPT judge; counted unmatched),
or "wrong".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stages.benchmarks.choice import LETTERS, parse_choice
from stages.benchmarks.tempcompass import TEMPCOMPASS_TASKS
from stages.core.errors import SaviError

PROTOCOLS = ("lmms-eval", "strict")

# What lmms-eval does with a reply its rule cannot read.
RANDOM = "random"   # it draws a seeded random letter
JUDGE = "judge"     # TempCompass asks gpt-3.5-turbo whether the reply is right
WRONG = "wrong"     # it scores the reply wrong


@dataclass(frozen=True)
class Reading:
    """How a reply was read.

    index: the chosen option, or None. rule: the name of the rule that matched ("start", "(X)", "first-letter",
    "option-text", ...), or None when none did. fallback: what lmms-eval does when the reply yields no option
    ("random", "judge" or "wrong"); None exactly when `index` is set. A rule with no index means the rule read a
    letter beyond the item's options, which lmms-eval scores wrong.
    """
    index: int | None
    rule: str | None
    fallback: str | None


def parse_answer(benchmark: str, reply: str, options: Sequence[str], protocol: str = "lmms-eval", *,
                 yes_no: bool = False, task: str | None = None, labels: Sequence[str] | None = None) -> int | None:
    """The index of the option `reply` picks under `protocol`, or None when nothing matches (never a guess)."""
    return read_answer(benchmark, reply, options, protocol=protocol, yes_no=yes_no, task=task, labels=labels).index


def read_answer(benchmark: str, reply: str, options: Sequence[str], *, protocol: str = "lmms-eval",
                yes_no: bool = False, task: str | None = None, labels: Sequence[str] | None = None) -> Reading:
    """Read `reply` to a question of `benchmark` whose option texts (letter prefixes stripped) are `options`.

    `yes_no` marks a yes/no item (options ("yes", "no")); `task` is TempCompass's task ("multi-choice", "yes_no",
    "caption_matching"), taken as "yes_no" or "multi-choice" from `yes_no` when not given. `labels` are the
    options' labels where the prompt shows others than bare letters (`EvalItem.labels`: "(A)", "Option 1").
    """
    if benchmark not in BENCHMARK_NAMES:
        raise SaviError(f"no answer extractor for benchmark {benchmark!r}; known: {', '.join(BENCHMARK_NAMES)}")
    if protocol not in PROTOCOLS:
        raise SaviError(f"unknown answer protocol {protocol!r}; use one of: {', '.join(PROTOCOLS)}")
    if protocol == "strict" or benchmark == "world":
        return _strict(reply, options, yes_no, labels)
    reply = _without_reasoning(reply)
    if benchmark == "tempcompass":
        task = _tempcompass_task(task, yes_no)
        if task == "caption_matching":
            return _tempcompass_caption_matching(reply, options, labels)
        return _TEMPCOMPASS_RULES[task](reply, options)
    if yes_no:
        raise SaviError(f"lmms-eval's {benchmark} task has no yes/no questions; only TempCompass's yes_no task does")
    return _RULES[benchmark](reply, options)


def _strict(reply: str, options: Sequence[str], yes_no: bool, labels: Sequence[str] | None) -> Reading:
    index, how = parse_choice(reply, tuple(options), yes_no, labels=labels)
    # savi counts an unparsed reply wrong (and reports it as unparsed).
    return Reading(index, how, None) if index is not None else Reading(None, None, WRONG)


# ---------------------------------------------------------------------------------------------------------------
# Shared steps

# lmms-eval's default `--reasoning_tags`: these blocks are cut out of every reply before it is scored.
_REASONING_TAGS = (("<think>", "</think>"), ("<analysis>", "</analysis>"))


def _without_reasoning(reply: str) -> str:
    """The reply as lmms-eval's scoring loop hands it to the task: reasoning blocks removed, whitespace stripped."""
    for start, end in _REASONING_TAGS:
        while (i := reply.find(start)) != -1 and (j := reply.find(end, i)) != -1:
            reply = reply[:i] + reply[j + len(end):]
        # Some chat templates prefill the opening tag, so only the closing one is in the reply: keep what follows.
        if end in reply and start not in reply:
            reply = reply.rsplit(end, 1)[-1]
    return reply.strip()


def _chosen(letter: str, options: Sequence[str], rule: str) -> Reading:
    """The option a letter names. A letter beyond the item's options cannot equal the gold letter, so lmms-eval
    scores it wrong (the rule still counts as matched: no random letter, no judge)."""
    index = LETTERS.index(letter)
    return Reading(index, rule, None) if index < len(options) else Reading(None, rule, WRONG)


def _strip_each(text: str, chars: str) -> str:
    # The MMMU-derived parsers strip one character at a time, in this order, not the set at once: "B.!" keeps
    # its dot, because "." is stripped before "!" is.
    for char in chars:
        text = text.strip(char)
    return text


def _first_of_extremes(candidates: list, key: Callable, *, last: bool):
    # numpy's argmin/argmax, which the MMMU-derived parsers use: on a tie, the earliest candidate in list order.
    return (max if last else min)(candidates, key=key)


# ---------------------------------------------------------------------------------------------------------------
# EgoSchema and NExT-QA: two variants of MMMU's parse_multi_choice_response

_MMMU_PUNCTUATION = ",.!?;:'"
_MMMU_LETTERS = "ABCDE"   # both tasks list five choices, A to E
_MMMU_MARKS = (("(X)", "({})"), ("X ", "{} "), ("X.", "{}."))  # rule name, format


def _mmmu_text(reply: str) -> str:
    # Padded with spaces so that "X " and " X " also match at the ends.
    return f" {_strip_each(reply, _MMMU_PUNCTUATION)} "


def _egoschema(reply: str, options: Sequence[str]) -> Reading:
    text = _mmmu_text(reply)
    # All three mark formats are collected together: the guards that would try them in turn are commented out
    # in the task file.
    found = [(rule, fmt.format(x), x) for rule, fmt in _MMMU_MARKS for x in _MMMU_LETTERS if fmt.format(x) in text]
    if found:
        # Several: the mark whose last occurrence comes first.
        rule, _, letter = _first_of_extremes(found, key=lambda f: text.rfind(f[1]), last=False)
        return _chosen(letter, options, rule)
    if len(text.split()) > 5:
        # The task's option strings carry their letter ("A. text"), so the option text counts only with it,
        # in any case ("a. text"): with a capital letter the "X." mark above would already have matched.
        lowered = text.lower()
        rendered = [f"{LETTERS[k]}. {option.strip()}".lower() for k, option in enumerate(options)]
        named = [k for k, option in enumerate(rendered) if option in lowered]
        if named:
            return Reading(_first_of_extremes(named, key=lambda k: lowered.rfind(rendered[k]), last=False),
                           "option-text", None)
    return Reading(None, None, RANDOM)


def _nextqa(reply: str, options: Sequence[str]) -> Reading:
    text = _mmmu_text(reply)
    for rule, fmt in _MMMU_MARKS:
        letters = [x for x in _MMMU_LETTERS if fmt.format(x) in text]
        if not letters:
            continue  # the next format is tried only when this one found nothing
        # Several: the last mentioned, located by "(X)" for brackets and by " X " otherwise (so a letter found
        # only as "X." or inside a word has position -1 and loses to any letter found standing alone).
        located = "({})" if rule == "(X)" else " {} "
        letter = _first_of_extremes(letters, key=lambda x: text.rfind(located.format(x)), last=True)
        return _chosen(letter, options, rule)
    if len(text.split()) > 5:
        lowered = text.lower()
        texts = [option.strip().lower() for option in options]
        named = [k for k, option in enumerate(texts) if option in lowered]
        if named:
            return Reading(_first_of_extremes(named, key=lambda k: lowered.rfind(texts[k]), last=True),
                           "option-text", None)
    return Reading(None, None, RANDOM)


# ---------------------------------------------------------------------------------------------------------------
# MVBench: mcq_acc

_MVBENCH_OPTION = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE)
_MVBENCH_LETTER = re.compile(r"\b([A-E])\b", re.IGNORECASE)
# The VQA-style punctuation clean-up mcq_acc runs before looking for a standalone letter.
_VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                    "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The task's pattern opens with `(?!<=\d)`, a look-ahead for the text "<=" and a digit, which never matches at a
# period: every period not followed by a digit goes.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_LIMIT = 32  # the task passes re.UNICODE (32) where `count` goes, so at most 32 periods are removed


def _vqa_punctuation(text: str) -> str:
    out = text
    for mark in _VQA_PUNCTUATION:
        # The test looks at the original text each time: a mark next to a space (or any "1,000" in the text)
        # is deleted, otherwise it becomes a space.
        if mark + " " in text or " " + mark in text or _DIGIT_COMMA_DIGIT.search(text):
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_LIMIT)


def _mvbench(reply: str, options: Sequence[str]) -> Reading:
    # An empty reply is left out of lmms-eval's per-task denominator ("answered" means non-empty); savi counts it
    # wrong, like any reply without a letter.
    match = _MVBENCH_OPTION.match(reply.strip())
    if match:
        return _chosen(match.group(1).upper(), options, "X.")
    text = reply.replace("\n", " ").replace("\t", " ").strip()
    text = _vqa_punctuation(text).strip("'").strip('"').strip(")").strip("(").strip().lower()
    match = _MVBENCH_LETTER.search(text)
    if match:
        return _chosen(match.group(1).upper(), options, "first-letter")
    return Reading(None, None, WRONG)


# ---------------------------------------------------------------------------------------------------------------
# Perception Test

_PERCEPTIONTEST_LETTER = re.compile(r"\b([A-D])\b")  # case-sensitive: "a" is not A, but "A man" is


def _perceptiontest(reply: str, options: Sequence[str]) -> Reading:
    match = _PERCEPTIONTEST_LETTER.search(reply.strip())
    if match:
        return _chosen(match.group(1), options, "first-letter")
    return Reading(None, None, WRONG)


# ---------------------------------------------------------------------------------------------------------------
# TempCompass: hand-written rules, then a GPT judge
#
# lmms-eval compares the reply with the gold answer string ("B. dribbling a basketball", "Option 2: ..."); savi
# reads the reply without knowing the answer, so "equal to the answer" becomes "equal to one option's line as the
# prompt shows it". savi's prompt shows every option as "A. text" (see the reader), so that is the line compared.

_TEMPCOMPASS_LETTERS = "ABCD"


def _lines(options: Sequence[str]) -> list[str]:
    return [f"{LETTERS[k]}. {option}" for k, option in enumerate(options)]


def _tempcompass_multi_choice(reply: str, options: Sequence[str]) -> Reading:
    lines = _lines(options)
    if reply in lines:
        # lmms-eval's `pred == answer`; a reply equal to another option's line falls to "X." below and is scored
        # wrong there, so either way the reply picks the option whose line it is.
        return Reading(lines.index(reply), "option-text", None)
    if len(reply) == 1 and reply in _TEMPCOMPASS_LETTERS:   # exactly "A", no space, no dot
        return _chosen(reply, options, "letter")
    if len(reply) >= 2 and reply[0] in _TEMPCOMPASS_LETTERS and reply[1] in ".)":   # "B. ...", "C)..."
        return _chosen(reply[0], options, "X" + reply[1])
    return Reading(None, None, JUDGE)


def _tempcompass_yes_no(reply: str, options: Sequence[str]) -> Reading:
    # Any reply beginning with the word's letters counts: "Not sure" reads as no, "Yesterday" as yes.
    lowered = reply.lower()
    for word in ("yes", "no"):
        if lowered.startswith(word):
            return Reading(("yes", "no").index(word), "yes/no", None)   # the reader's options are ("yes", "no")
    return Reading(None, None, JUDGE)


def _tempcompass_caption_matching(reply: str, options: Sequence[str], labels: Sequence[str] | None) -> Reading:
    # lmms-eval's eval_rule: the reply is an option's whole line ("Option 1: text"), its sentence (alone or after
    # ") "), or its label, whole ("Sentence A") or short ("A"); the checks run in this order and a later match
    # replaces an earlier one. Without the file's labels the options read as lettered lines ("A. text").
    # A label beyond the options matches nothing here, so it goes to the judge.
    if labels:
        lines = [f"{label}: {option}" for label, option in zip(labels, options)]
        names = [*labels, *(label.split()[-1] for label in labels)]   # "Option 1" and "1"
    else:
        lines, names = _lines(options), list(LETTERS[:len(options)])
    chosen = None
    for k, line in enumerate(lines):
        if reply == line:
            chosen = Reading(k, "option-text", None)
    after_bracket = reply.split(") ")[1] if ") " in reply else None   # "(A) text" and "A) text" give "text"
    for k, sentence in enumerate(options):
        if reply == sentence or after_bracket == sentence:
            chosen = Reading(k, "sentence", None)
    for k, name in enumerate(names):
        if reply == name or reply.replace(".", "") == name:
            chosen = Reading(k % len(options), "label", None)
    return chosen or Reading(None, None, JUDGE)


# Caption matching reads by the options' labels too (`read_answer`).
_TEMPCOMPASS_RULES: dict[str, Callable[[str, Sequence[str]], Reading]] = {
    "multi-choice": _tempcompass_multi_choice,
    "yes_no": _tempcompass_yes_no,
}


def _tempcompass_task(task: str | None, yes_no: bool) -> str:
    if task is None:
        return "yes_no" if yes_no else "multi-choice"
    if task == "captioning":
        raise SaviError("TempCompass captioning has no answer extractor: lmms-eval scores every caption with a GPT "
                        "judge")
    if task not in TEMPCOMPASS_TASKS:
        raise SaviError(f"unknown TempCompass task {task!r}; known: {', '.join(TEMPCOMPASS_TASKS)}")
    if yes_no != (task == "yes_no"):
        raise SaviError(f"TempCompass: yes_no={yes_no} contradicts the task {task!r}")
    return task


# ---------------------------------------------------------------------------------------------------------------
# LongVideoBench

# Removed wherever they occur, case-sensitively, in this order ("The answer is" before "The answer").
_LONGVIDEOBENCH_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                            "The best option is", "The correct option is", "Best answer:", "Best option:")
_LONGVIDEOBENCH_LETTER = re.compile(r"[ABCDE]")  # any capital A-E, even inside a word


def _longvideobench(reply: str, options: Sequence[str]) -> Reading:
    text = reply.strip()
    for prefix in _LONGVIDEOBENCH_PREFIXES:
        text = text.replace(prefix, "")
    # The task also draws a random letter for a reply of more than 10 words with no capital A-E; that is the
    # same outcome as finding no letter, so one search covers both.
    match = _LONGVIDEOBENCH_LETTER.search(text)
    if match:
        return _chosen(match.group(0), options, "first-character")
    return Reading(None, None, RANDOM)


# ---------------------------------------------------------------------------------------------------------------
# Video-MME: _task_utils/mcq_extract.extract_mcq_answer, with the choices A to D

_VIDEOMME_LETTERS = "ABCD"
_VIDEOMME_PUNCTUATION = ",.!?;:'\""
# Marks in the order the extractor collects them, with their priority (higher wins).
_VIDEOMME_MARKS = (("(X)", "({})", 6), ("X.", "{}.", 5), ("X:", "{}:", 4), ("X)", "{})", 3), ("X ", "{} ", 2))
_PHRASE, _START, _END, _ANYWHERE = 7, 10, 9, 0
# Matched in the lower-cased reply; the letter is then the first capital choice letter after the phrase.
_ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is",
    "옵션", "정답은", "답은", "답:",   # Korean
    "答案是", "答案为", "选",          # Chinese
    "答えは",                          # Japanese
)


def _videomme(reply: str, options: Sequence[str]) -> Reading:
    if not reply.strip():
        return Reading(None, None, WRONG)
    text = f" {_strip_each(reply.strip(), _VIDEOMME_PUNCTUATION)} "
    found: list[tuple[int, int, str, str]] = []   # (priority, position, letter, rule)
    for rule, fmt, priority in _VIDEOMME_MARKS:
        for x in _VIDEOMME_LETTERS:
            if fmt.format(x) in text:
                found.append((priority, text.rfind(fmt.format(x)), x, rule))
    lowered = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lowered.find(phrase)   # only the phrase's first occurrence counts
        if at != -1:
            for x in _VIDEOMME_LETTERS:
                position = text.find(x, at + len(phrase))
                if position != -1:
                    found.append((_PHRASE, position, x, "phrase"))
    core = text.strip()
    for x in _VIDEOMME_LETTERS:
        # A standalone letter: not followed (at the start) or preceded (at the end) by another letter.
        if core.startswith(x) and (len(core) == 1 or not core[1].isalpha()):
            found.append((_START, 0, x, "start"))
        if core.endswith(x) and (len(core) == 1 or not core[-2].isalpha()):
            found.append((_END, len(text) - 1, x, "end"))
    if not found:
        found = [(_ANYWHERE, text.rfind(x), x, "any") for x in _VIDEOMME_LETTERS if x in text]
    if not found:
        return Reading(None, None, WRONG)
    # Highest priority, then latest position. Two letters never share both, so the order of `found` cannot matter.
    _, _, letter, rule = max(found, key=lambda f: (f[0], f[1]))
    return _chosen(letter, options, rule)


# ---------------------------------------------------------------------------------------------------------------

_RULES: dict[str, Callable[[str, Sequence[str]], Reading]] = {
    "egoschema": _egoschema,
    "mvbench": _mvbench,
    "nextqa": _nextqa,
    "perceptiontest": _perceptiontest,
    "longvideobench": _longvideobench,
    "videomme": _videomme,
}
# TempCompass reads by task (`_TEMPCOMPASS_RULES`); the world is read by the strict parser only.
BENCHMARK_NAMES = ("egoschema", "mvbench", "nextqa", "perceptiontest", "tempcompass", "longvideobench", "videomme",
                   "world")
