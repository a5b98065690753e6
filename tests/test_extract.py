"""lmms-eval 0.7.3's answer extractors (`stages/benchmarks/extract.py`), on hand-written replies.

One table per benchmark: each row is a reply and what lmms-eval's rule makes of it (the option, the rule that
matched, and what lmms-eval does when no option comes out). The traps are there on purpose: "A man is ..." reads
as A under the first-standalone-letter rules, "Based on ..." as B under LongVideoBench, a letter beyond the options
is wrong, and unreadable replies get a random letter, a judge or a zero depending on the task.
"""

import pytest

from stages.benchmarks import BENCHMARKS
from stages.benchmarks.choice import parse_choice
from stages.benchmarks.extract import BENCHMARK_NAMES, JUDGE, RANDOM, WRONG, Reading, parse_answer, read_answer
from stages.core.errors import SaviError

# Option texts as the readers keep them (letter prefixes stripped); the prompts show them as "A. text".
CHORES = ("the man cooks dinner", "the man reads a book", "the man washes the dishes", "the man walks the dog",
          "the man sleeps")                                                                  # 5: EgoSchema, NExT-QA
FRUIT = ("Apples.", "Candles.", "Berries.", "The three kinds are of the same number.")      # 4: Video-MME, LVB
BASKETBALL = ("dunking a basketball", "dribbling a basketball", "passing a basketball")   # 3: MVBench, PT, TC
CAPTIONS = ("A man is dunking a basketball.", "A man is dribbling a basketball.")         # 2: caption matching


def case(reply, index, rule, fallback=None, *, id):
    return pytest.param(reply, Reading(index, rule, fallback), id=id)


# ---------------------------------------------------------------------------------------------------------------
# EgoSchema: every "(X)", "X " and "X." is collected; the earliest last occurrence wins; else random

EGOSCHEMA = [
    case("B", 1, "X ", id="bare letter"),
    case("(B)", 1, "(X)", id="letter in parentheses"),
    case("The answer is D.", 3, "X ", id="answer sentence with a final dot"),
    case("A man is cooking", 0, "X ", id="the article A reads as A"),
    case("A or B", 0, "X ", id="two letters: the earlier wins"),
    case("(C) or maybe (A)", 2, "(X)", id="two bracketed letters: the earlier wins"),
    case("B.!", 1, "X.", id="punctuation stripped one character at a time keeps the dot"),
    case("E", 4, "X ", id="the fifth letter"),
    case("b", None, None, RANDOM, id="lower-case letter is not read"),
    case("I think the man washes the dishes here", None, None, RANDOM,
         id="option text without its letter is not read"),
    case("So my pick is c. the man washes the dishes", 2, "option-text",
         id="option text with a lower-case letter, as the task renders options"),
    case("", None, None, RANDOM, id="empty"),
]


@pytest.mark.parametrize("reply,expected", EGOSCHEMA)
def test_egoschema_reads_replies_as_lmms_eval_does(reply, expected):
    assert read_answer("egoschema", reply, CHORES) == expected


# ---------------------------------------------------------------------------------------------------------------
# NExT-QA: "(X)", else "X ", else "X."; the last mention wins; option text past 5 words; else random

NEXTQA = [
    case("B", 1, "X ", id="bare letter"),
    case("(B)", 1, "(X)", id="letter in parentheses"),
    case("The answer is D.", 3, "X ", id="answer sentence with a final dot"),
    case("A man is cooking", 0, "X ", id="the article A reads as A"),
    case("A or B", 1, "X ", id="two letters: the last wins"),
    case("(C) or maybe (A)", 0, "(X)", id="two bracketed letters: the last wins"),
    case("B. Because A is not shown", 0, "X ", id="a bare letter beats an earlier letter with a dot"),
    case("I think the man washes the dishes here", 2, "option-text", id="option text in a reply of over 5 words"),
    case("the man cooks dinner and then the man walks the dog", 3, "option-text",
         id="two option texts: the last wins"),
    case("the man washes the dishes", None, None, RANDOM, id="option text alone is only 5 words: not read"),
    case("b", None, None, RANDOM, id="lower-case letter is not read"),
    case("", None, None, RANDOM, id="empty"),
]


@pytest.mark.parametrize("reply,expected", NEXTQA)
def test_nextqa_reads_replies_as_lmms_eval_does(reply, expected):
    assert read_answer("nextqa", reply, CHORES) == expected


# ---------------------------------------------------------------------------------------------------------------
# MVBench: "X. text" at the start, else the first standalone a-e once punctuation is gone; else wrong

MVBENCH = [
    case("C. passing a basketball", 2, "X.", id="letter with its option"),
    case("c. passing a basketball", 2, "X.", id="lower-case letter with its option"),
    case("(B) dribbling a basketball", 1, "first-letter", id="option as the prompt renders it"),
    case("(B)", 1, "first-letter", id="letter in parentheses"),
    case("b.", 1, "first-letter", id="lower-case letter"),
    case("B or C", 1, "first-letter", id="two letters: the first wins"),
    case("A man is dribbling", 0, "first-letter", id="the article A reads as A"),
    case("He is dribbling a basketball", 0, "first-letter", id="option text reads as A through its article"),
    case("The answer is D.", None, "first-letter", WRONG, id="a letter beyond the options is wrong"),
    case("e.g. the second one", None, "X.", WRONG, id="a reply starting with e.g. reads as the letter E"),
    case("the second one, i.e. dribbling", None, None, WRONG, id="periods are removed, so a later i.e. is no E"),
    case("Dribbling the ball", None, None, WRONG, id="no letter"),
    case("", None, None, WRONG, id="empty"),
]


@pytest.mark.parametrize("reply,expected", MVBENCH)
def test_mvbench_reads_replies_as_lmms_eval_does(reply, expected):
    assert read_answer("mvbench", reply, BASKETBALL) == expected


# ---------------------------------------------------------------------------------------------------------------
# Perception Test: the first standalone capital A-D; else wrong

PERCEPTIONTEST = [
    case("B", 1, "first-letter", id="bare letter"),
    case("(B)", 1, "first-letter", id="letter in parentheses"),
    case("A man is cooking", 0, "first-letter", id="the article A reads as A"),
    case("C or B", 2, "first-letter", id="two letters: the first wins"),
    case("Based on the video, the answer is C", 2, "first-letter", id="a capital inside a word is not a letter"),
    case("The answer is D.", None, "first-letter", WRONG, id="a letter beyond the 3 options is wrong"),
    case("b", None, None, WRONG, id="lower-case letter is not read"),
    case("dribbling a basketball", None, None, WRONG, id="option text without a letter"),
    case("", None, None, WRONG, id="empty"),
]


@pytest.mark.parametrize("reply,expected", PERCEPTIONTEST)
def test_perceptiontest_reads_replies_as_lmms_eval_does(reply, expected):
    assert read_answer("perceptiontest", reply, BASKETBALL) == expected


# ---------------------------------------------------------------------------------------------------------------
# TempCompass: exact hand-written rules, else the GPT judge

TEMPCOMPASS_MULTI_CHOICE = [
    case("B", 1, "letter", id="bare letter"),
    case(" B\n", 1, "letter", id="surrounding whitespace is stripped before scoring"),
    case("B. dribbling a basketball", 1, "option-text", id="an option's whole line"),
    case("B.dribbling", 1, "X.", id="starts with a letter and a dot"),
    case("C) passing a basketball", 2, "X)", id="starts with a letter and a bracket"),
    case("D", None, "letter", WRONG, id="a letter beyond the 3 options is wrong"),
    case("(B)", None, None, JUDGE, id="letter in parentheses goes to the judge"),
    case("b", None, None, JUDGE, id="lower-case letter goes to the judge"),
    case("A man dribbles", None, None, JUDGE, id="the article A is not read"),
    case("The answer is B.", None, None, JUDGE, id="answer sentence goes to the judge"),
    case("dribbling a basketball", None, None, JUDGE, id="option text without a letter goes to the judge"),
    case("", None, None, JUDGE, id="empty"),
]


@pytest.mark.parametrize("reply,expected", TEMPCOMPASS_MULTI_CHOICE)
def test_tempcompass_multi_choice_reads_replies_as_lmms_eval_does(reply, expected):
    assert read_answer("tempcompass", reply, BASKETBALL, task="multi-choice") == expected


TEMPCOMPASS_YES_NO = [
    case("Yes, he is.", 0, "yes/no", id="yes"),
    case("no", 1, "yes/no", id="no"),
    case("NO.", 1, "yes/no", id="upper case"),
    case("Not sure", 1, "yes/no", id="anything starting with no reads as no"),
    case("Yesterday", 0, "yes/no", id="anything starting with yes reads as yes"),
    case("The answer is yes", None, None, JUDGE, id="yes not at the start goes to the judge"),
    case("", None, None, JUDGE, id="empty"),
]


@pytest.mark.parametrize("reply,expected", TEMPCOMPASS_YES_NO)
def test_tempcompass_yes_no_reads_replies_as_lmms_eval_does(reply, expected):
    assert read_answer("tempcompass", reply, ("yes", "no"), yes_no=True, task="yes_no") == expected


TEMPCOMPASS_CAPTION_MATCHING = [
    case("Option 2", 1, "label", id="the file's whole label"),
    case("2", 1, "label", id="the label's number alone"),
    case("2.", 1, "label", id="the number and a dot"),
    case("Option 1: A man is dunking a basketball.", 0, "option-text", id="an option's whole line"),
    case("A man is dribbling a basketball.", 1, "sentence", id="a caption alone"),
    case("(2) A man is dribbling a basketball.", 1, "sentence", id="a caption after a bracketed label"),
    case("Option 3", None, None, JUDGE, id="a label beyond the 2 options goes to the judge"),
    case("A", None, None, JUDGE, id="a letter the prompt never showed goes to the judge"),
    case("A man is dribbling", None, None, JUDGE, id="part of a caption goes to the judge"),
    case("", None, None, JUDGE, id="empty"),
]


@pytest.mark.parametrize("reply,expected", TEMPCOMPASS_CAPTION_MATCHING)
def test_tempcompass_caption_matching_reads_replies_as_lmms_eval_does(reply, expected):
    assert read_answer("tempcompass", reply, CAPTIONS, task="caption_matching",
                       labels=("Option 1", "Option 2")) == expected


def test_tempcompass_caption_matching_reads_sentence_and_caption_labels_whole_or_short():
    for labels in (("Sentence A", "Sentence B"), ("Caption A", "Caption B")):
        for reply in (labels[1], "B", "B.", f"{labels[1]}: {CAPTIONS[1]}"):
            assert parse_answer("tempcompass", reply, CAPTIONS, task="caption_matching", labels=labels) == 1
    # Without the file's labels the options read as lettered lines.
    assert read_answer("tempcompass", "B", CAPTIONS, task="caption_matching") == Reading(1, "label", None)


def test_tempcompass_task_defaults_to_multi_choice_or_yes_no_from_the_item():
    assert read_answer("tempcompass", "B", BASKETBALL) == Reading(1, "letter", None)
    assert read_answer("tempcompass", "Yes", ("yes", "no"), yes_no=True) == Reading(0, "yes/no", None)


# ---------------------------------------------------------------------------------------------------------------
# LongVideoBench: answer prefixes removed, then the first capital A-E anywhere; else random

LONGVIDEOBENCH = [
    case("C", 2, "first-character", id="bare letter"),
    case("(D)", 3, "first-character", id="letter in parentheses"),
    case("The answer is C", 2, "first-character", id="answer prefix removed"),
    case("Best answer: D", 3, "first-character", id="best answer prefix removed"),
    case("Based on the video, the answer is C", 1, "first-character", id="the B of Based reads as B"),
    case("A man is cooking", 0, "first-character", id="the article A reads as A"),
    case("D. A book", 3, "first-character", id="the first capital wins over a later one"),
    case("E", None, "first-character", WRONG, id="a letter beyond the 4 options is wrong"),
    case("the answer is c", None, None, RANDOM, id="lower-case reply has no letter"),
    case("I think it is the one with the most fruit in the picture here", None, None, RANDOM,
         id="long reply without a capital A-E"),
    case("", None, None, RANDOM, id="empty"),
]


@pytest.mark.parametrize("reply,expected", LONGVIDEOBENCH)
def test_longvideobench_reads_replies_as_lmms_eval_does(reply, expected):
    assert read_answer("longvideobench", reply, FRUIT) == expected


# ---------------------------------------------------------------------------------------------------------------
# Video-MME: extract_mcq_answer's priorities; else wrong

VIDEOMME = [
    case("B", 1, "start", id="bare letter"),
    case("(B)", 1, "(X)", id="letter in parentheses"),
    case("A man is cooking", 0, "start", id="the article A reads as A"),
    case("A or B", 0, "start", id="two letters: the start beats the end"),
    case("The answer is D.", 3, "end", id="answer sentence ending in a letter"),
    case("The answer is (C), not A", 0, "end", id="a letter at the end beats the answer phrase"),
    case("I think the answer is C because it fits", 2, "phrase", id="the letter after an answer phrase"),
    case("Option C: the berries", 2, "X:", id="letter and a colon"),
    case("Cooking", 2, "any", id="a capital inside a word when nothing else matched"),
    case("<think>Maybe A.</think> The answer is B", 1, "end", id="reasoning block removed before scoring"),
    case("</think>C", 2, "start", id="text after a lone closing reasoning tag"),
    case("E", None, None, WRONG, id="E is not among the choices A-D"),
    case("b", None, None, WRONG, id="lower-case letter is not read"),
    case("I think", None, None, WRONG, id="no letter"),
    case("", None, None, WRONG, id="empty"),
]


@pytest.mark.parametrize("reply,expected", VIDEOMME)
def test_videomme_reads_replies_as_lmms_eval_does(reply, expected):
    assert read_answer("videomme", reply, FRUIT) == expected


# ---------------------------------------------------------------------------------------------------------------
# What lmms-eval does with an unreadable reply, per task

UNREADABLE_FALLBACKS = [
    ("egoschema", CHORES, {}, RANDOM),
    ("nextqa", CHORES, {}, RANDOM),
    ("mvbench", BASKETBALL, {}, WRONG),
    ("perceptiontest", BASKETBALL, {}, WRONG),
    ("tempcompass", BASKETBALL, {"task": "multi-choice"}, JUDGE),
    ("tempcompass", ("yes", "no"), {"task": "yes_no", "yes_no": True}, JUDGE),
    ("tempcompass", CAPTIONS, {"task": "caption_matching"}, JUDGE),
    ("longvideobench", FRUIT, {}, RANDOM),
    ("videomme", FRUIT, {}, WRONG),
]


@pytest.mark.parametrize("benchmark,options,kwargs,fallback", UNREADABLE_FALLBACKS,
                         ids=[f"{b}-{kw.get('task', 'mc')}" for b, _, kw, _ in UNREADABLE_FALLBACKS])
@pytest.mark.parametrize("reply", ["I am not sure", ""])
def test_unreadable_reply_yields_no_option_and_names_lmms_evals_fallback(benchmark, options, kwargs, fallback,
                                                                          reply):
    assert read_answer(benchmark, reply, options, **kwargs) == Reading(None, None, fallback)
    assert parse_answer(benchmark, reply, options, **kwargs) is None


def test_parse_answer_returns_the_index_read_answer_finds():
    assert parse_answer("longvideobench", "Based on the video, the answer is C", FRUIT) == 1
    assert parse_answer("perceptiontest", "The answer is D.", BASKETBALL) is None
    assert parse_answer("videomme", "(B)", FRUIT, "lmms-eval") == 1


# ---------------------------------------------------------------------------------------------------------------
# The strict protocol, and the world

STRICT_REPLIES = ["B", "(C)", "The answer is C.", "A man is passing a basketball to a friend.", "A or B", "D",
                  "He is dribbling a basketball.", "Based on the video, the answer is C", "b", ""]


@pytest.mark.parametrize("benchmark", BENCHMARK_NAMES)
@pytest.mark.parametrize("reply", STRICT_REPLIES)
def test_strict_protocol_agrees_with_parse_choice(benchmark, reply):
    index, how = parse_choice(reply, BASKETBALL)
    reading = read_answer(benchmark, reply, BASKETBALL, protocol="strict")
    assert (reading.index, reading.rule) == (index, how)
    assert reading.fallback == (None if index is not None else WRONG)
    assert parse_answer(benchmark, reply, BASKETBALL, "strict") == index


def test_strict_protocol_reads_yes_no_like_parse_choice():
    for reply in ("Yes.", "no, it is not", "Nope", "It is unclear"):
        expected = parse_choice(reply, ["yes", "no"], yes_no=True)[0]
        assert parse_answer("tempcompass", reply, ("yes", "no"), "strict", yes_no=True) == expected


@pytest.mark.parametrize("reply", STRICT_REPLIES)
def test_world_uses_the_strict_parser_under_the_lmms_eval_protocol_too(reply):
    assert read_answer("world", reply, BASKETBALL) == read_answer("world", reply, BASKETBALL, protocol="strict")


def test_the_strict_parser_does_not_guess_where_lmms_eval_rules_do():
    # "A man is ..." is A for lmms-eval's first-letter rules; savi reads the option text instead.
    reply = "A man is passing a basketball to a friend."
    assert parse_answer("perceptiontest", reply, BASKETBALL) == 0
    assert parse_answer("perceptiontest", reply, BASKETBALL, "strict") == 2


# ---------------------------------------------------------------------------------------------------------------
# Errors

def test_every_savi_benchmark_has_an_extractor():
    assert set(BENCHMARK_NAMES) == set(BENCHMARKS)


@pytest.mark.parametrize("call,message", [
    (lambda: parse_answer("mmmu", "A", FRUIT), "no answer extractor for benchmark 'mmmu'"),
    (lambda: parse_answer("videomme", "A", FRUIT, "lenient"), "unknown answer protocol 'lenient'"),
    (lambda: parse_answer("tempcompass", "A", BASKETBALL, task="captioning"), "TempCompass captioning"),
    (lambda: parse_answer("tempcompass", "A", BASKETBALL, task="ordering"), "unknown TempCompass task"),
    (lambda: parse_answer("tempcompass", "yes", ("yes", "no"), yes_no=True, task="multi-choice"), "contradicts"),
    (lambda: parse_answer("videomme", "yes", ("yes", "no"), yes_no=True), "no yes/no questions"),
], ids=["unknown benchmark", "unknown protocol", "captioning", "unknown tempcompass task", "yes_no vs task",
        "yes_no outside tempcompass"])
def test_bad_arguments_raise_savi_error_with_one_line(call, message):
    with pytest.raises(SaviError, match=message) as raised:
        call()
    assert "\n" not in str(raised.value)


def test_parse_answer_is_the_benchmarks_packages_one_reading_function():
    from stages import benchmarks

    assert benchmarks.parse_answer is parse_answer
    assert benchmarks.parse_answer("longvideobench", "Based on the video, the answer is C", FRUIT) == 1
    assert benchmarks.parse_answer("longvideobench", "Based on the video, the answer is C", FRUIT, "strict") == 2
