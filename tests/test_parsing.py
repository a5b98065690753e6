"""Parsers of model output (`stages/core/parsing.py`), on hand-written replies of the kinds models really give.

Each case asserts the exact result, so a change in what the parsers accept shows up here as a diff. A fuzz test
at the end feeds random text to every parser: they must never raise.
"""

import random
import string

import pytest

from stages.benchmarks.choice import parse_choice
from stages.core.parsing import (
    NO_ERRORS,
    CritiqueVerdict,
    JudgeScore,
    normalize_text,
    parse_critique,
    parse_judge,
    parse_questions,
    parse_revision,
    similarity,
)

# ---------------------------------------------------------------------------------------------------------------
# parse_questions

QUESTION_CASES = {
    "json list": (
        '["What colour is the car?", "Where is the dog relative to the bench?", "How many people are there?"]',
        ["What colour is the car?", "Where is the dog relative to the bench?", "How many people are there?"],
        "json",
    ),
    "json in a fence": (
        '```json\n[\n  "What is on the table?",\n  "Who opens the door?"\n]\n```',
        ["What is on the table?", "Who opens the door?"],
        "json",
    ),
    "json in a fence with prose around it": (
        "Sure! Here are the questions:\n```json\n"
        '["What happens after the man sits down?", "What does the woman do first?"]\n```\n'
        "Let me know if you need more.",
        ["What happens after the man sits down?", "What does the woman do first?"],
        "json",
    ),
    "json inline after a colon": (
        'Questions: ["Where is the cup?", "What is behind the sofa?"] I hope these help.',
        ["Where is the cup?", "What is behind the sofa?"],
        "json",
    ),
    "dict of lists (the v3 format)": (
        '{"spatial": ["Where is the adult relative to the child?", "What is to the left of the sled?"], '
        '"temporal": ["What happens before the child moves down the hill?"]}',
        [
            "Where is the adult relative to the child?",
            "What is to the left of the sled?",
            "What happens before the child moves down the hill?",
        ],
        "json",
    ),
    "dict with a questions key": (
        '{"questions": ["Why does the dog bark?", "Why is the door open?"]}',
        ["Why does the dog bark?", "Why is the door open?"],
        "json",
    ),
    "list of item objects": (
        '[{"question": "What is the man holding?", "type": "what"}, {"Question": "Why is he running?", "type": "why"}]',
        ["What is the man holding?", "Why is he running?"],
        "json",
    ),
    "json with a trailing comma": (
        '["Where is the lamp?", "What colour is the lamp?",]',
        ["Where is the lamp?", "What colour is the lamp?"],
        "json",
    ),
    "python list with single quotes": (
        """['Where is the shelf?', "What's on the shelf?",]""",
        ["Where is the shelf?", "What's on the shelf?"],
        "json",
    ),
    "json cut off at the token limit": (
        '["What is the woman carrying?", "Where does she put the bag?", "What does she do aft',
        ["What is the woman carrying?", "Where does she put the bag?"],
        "json",
    ),
    "fenced json after prose, cut off": (
        'Here are the questions:\n```json\n[\n  "Where is the red ball?",\n  "What is under the',
        ["Where is the red ball?"],
        "json",
    ),
    "dict cut off at the token limit": (
        '{\n  "spatial": [\n    "Where is the red ball?",\n    "What is under the',
        ["Where is the red ball?"],
        "json",
    ),
    "json with labels and numbering inside the strings": (
        '["Q1: What is the boy wearing?", "2. Spatial: Where is the boy standing?"]',
        ["What is the boy wearing?", "Where is the boy standing?"],
        "json",
    ),
    "numbered with dots": (
        "1. What is the girl holding?\n2. Where does the girl walk?\n3. What happens at the end?",
        ["What is the girl holding?", "Where does the girl walk?", "What happens at the end?"],
        "numbered",
    ),
    "numbered with parentheses and Q-labels, prose around": (
        "Here are three questions about the video:\n\n1) What is the chef cutting?\nQ2: Why does the chef stop?\n"
        "(3) How does the chef plate the food?\n\nThese questions focus on the actions.",
        ["What is the chef cutting?", "Why does the chef stop?", "How does the chef plate the food?"],
        "numbered",
    ),
    "bulleted with headers and bold": (
        "**Spatial questions:**\n- Where is the cat?\n* What is on the **left** of the cat?\n\n"
        "**Temporal questions:**\n- **What happens after the cat jumps?**\n• What does the cat do first?",
        ["Where is the cat?", "What is on the left of the cat?", "What happens after the cat jumps?",
         "What does the cat do first?"],
        "numbered",
    ),
    "numbered with labels and quotes": (
        '1. Spatial: "Where is the bicycle?"\n2. **Temporal:** "When does the rider fall?"',
        ["Where is the bicycle?", "When does the rider fall?"],
        "numbered",
    ),
    "numbered lines win over unnumbered prose": (
        "I watched the video.\nThe video shows a kitchen.\n- What is boiling on the stove?\n- Who turns off the stove?",
        ["What is boiling on the stove?", "Who turns off the stove?"],
        "numbered",
    ),
    "plain lines": (
        "What is the man doing?\nWhere is the ladder?\n\nWhy does the man climb?\n",
        ["What is the man doing?", "Where is the ladder?", "Why does the man climb?"],
        "lines",
    ),
    "plain lines with a header and quotes": (
        'Here are 2 questions:\n"What is the weather like?"\n"Where are the umbrellas?"',
        ["What is the weather like?", "Where are the umbrellas?"],
        "lines",
    ),
    "json quoted inside a question is not the list": (
        'What does the sign ["EXIT"] above the door say?\nWhere is the door?',
        ['What does the sign ["EXIT"] above the door say?', "Where is the door?"],
        "lines",
    ),
    "bracketed numbers are markers, not json": (
        '[1] What is the "EXIT" sign made of?\n[2] Where is it?',
        ['What is the "EXIT" sign made of?', "Where is it?"],
        "numbered",
    ),
    "duplicates up to case, spacing and punctuation": (
        '["What colour is the car?", "what colour is the car", "WHAT  colour is the car?!", "Where is the car?", '
        '"What colour is the car ?"]',
        ["What colour is the car?", "Where is the car?"],
        "json",
    ),
    "duplicates in numbered lines": (
        "1. Where is the dog?\n2. Where is the dog?\n3. where is the DOG",
        ["Where is the dog?"],
        "numbered",
    ),
    "overlong items are dropped": (
        '["' + "Why " * 100 + '?", "Where is the man?"]',
        ["Where is the man?"],
        "json",
    ),
    "items without letters are dropped": (
        '["???", "123", "", "   ", "Where is the box?", "- 4"]',
        ["Where is the box?"],
        "json",
    ),
    "json without usable strings falls back to lines": (
        "[1, 2, 3]\nWhat is the child holding?",
        ["What is the child holding?"],
        "lines",
    ),
    "mixed junk": (
        "```\n\n```\n---\n1.\n2. \n3. What is the woman holding?\n%%%\n",
        ["What is the woman holding?"],
        "numbered",
    ),
    "empty": ("", [], "none"),
    "whitespace": ("  \n\t\n ", [], "none"),
    "only a fence": ("```json\n```", [], "none"),
    "only headers": ("Spatial questions:\nTemporal questions:", [], "none"),
    "empty json list": ("[]", [], "none"),
    "letterless gibberish": ("\x00\x01\x02 ### 12345 !!! }}{{ ][", [], "none"),
}


@pytest.mark.parametrize("text, questions, how", QUESTION_CASES.values(), ids=QUESTION_CASES.keys())
def test_parse_questions(text, questions, how):
    assert parse_questions(text) == (questions, how)


def test_parse_questions_max_chars_is_inclusive():
    question = "W" * 49 + "?"  # 50 characters
    assert parse_questions(f'["{question}"]', max_chars=50) == ([question], "json")
    assert parse_questions(f'["{question}"]', max_chars=49) == ([], "none")


def test_parse_questions_gibberish_lines_are_kept_as_lines():
    # Byte-level junk with letters in it is still "lines": the parser does not judge whether a line is a question.
    text = bytes(range(32, 127)).decode("ascii")
    assert parse_questions(text) == ([text.strip()], "lines")


def test_parse_questions_rejects_non_strings():
    assert parse_questions(None) == ([], "none")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# normalize_text and similarity


@pytest.mark.parametrize(
    "text, expected",
    [
        ("What colour is the CAR?", "what colour is the car"),
        ("  left-hand   side,\n\tthen   right ", "left hand side then right"),
        ("“Quoted” — and ‘single’…", "quoted and single"),
        ("ＦＵＬＬ width", "full width"),
        ("2+2=4 $5", "2 2 4 5"),
        ("", ""),
        ("?!.", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_similarity():
    assert similarity("The man waves.", "the MAN waves") == 1.0
    assert similarity("", "") == 1.0
    assert similarity("abc", "") == 0.0
    assert similarity("abc", "xyz") == 0.0
    a = "The adult stands beside the child, on the left of the sled."
    b = "The adult stands behind the child, on the right of the sled."
    assert 0.8 < similarity(a, b) < 1.0
    assert similarity(a, b) == similarity(b, a)
    assert similarity(a, "A dog runs across an empty beach at sunset.") < 0.5


def test_similarity_does_not_junk_common_characters_in_long_texts():
    # difflib's autojunk would treat spaces and "e" as junk in texts over 200 characters and score these far lower.
    a = "The man walks to the left of the red car and then he opens the door. " * 5
    b = a.replace("red", "blue", 1)
    assert similarity(a, b) > 0.98


# ---------------------------------------------------------------------------------------------------------------
# parse_critique

CLEAN = CritiqueVerdict(found_errors=False, error_types=())


@pytest.mark.parametrize(
    "text",
    [
        NO_ERRORS,
        "NO_ERRORS.",
        "no_errors",
        "No errors.",
        "No errors found.",
        "NO ERRORS",
        "No-errors",
        "**NO_ERRORS**",
        "`NO_ERRORS`",
        '"NO_ERRORS"',
        "Critique: NO_ERRORS",
        "The answer is fully correct. NO_ERRORS",
        "NO_ERRORS - all claims are supported by the frames.",
        "There are no errors in the answer.",
        "  \n NO_ERRORS \n",
    ],
)
def test_parse_critique_no_errors_variants(text):
    assert parse_critique(text) == CLEAN


@pytest.mark.parametrize(
    "text, types",
    [
        (
            "The answer says the adult is beside the child. Visual evidence shows the adult is standing behind "
            "the child, not beside it.",
            ("spatial",),
        ),
        ("The cup is on the right of the plate, not to the left.", ("spatial",)),
        ("The answer gets the order wrong: the door opens before the man enters, not after.", ("temporal",)),
        ("The sequence of events is reversed.", ("temporal",)),
        ("No waving occurs. The child sits still while the adult pushes. Visual frames show the child is stationary.",
         ("hallucination",)),
        ("The answer mentions a dog, which does not appear in any frame.", ("hallucination",)),
        ("There is no such umbrella; the answer hallucinates it.", ("hallucination",)),
        ("The man is not running because he is late; the frames show him chasing a bus.", ("causal",)),
        ("The stated reason for the fall is unsupported.", ("causal",)),
        ("The answer does not mention the second person at the table.", ("omission",)),
        ("Missing detail: the woman also picks up a book.", ("omission",)),
        ("The shirt is blue, not red.", ("factual",)),
        (
            "The answer puts the lamp to the left of the bed, but it is on the right. It also says the light turns on "
            "before the man enters, but it turns on after. It omits the cat.",
            ("spatial", "temporal", "omission"),
        ),
        ("NO_ERRORS, except that the car is red, not blue.", ("factual",)),
        ("It is not true that there are no errors: the woman is holding a cup, not a phone.", ("factual",)),
    ],
)
def test_parse_critique_errors(text, types):
    assert parse_critique(text) == CritiqueVerdict(found_errors=True, error_types=types)


@pytest.mark.parametrize("text", ["", "   ", "...", "\x00"])
def test_parse_critique_empty_found_nothing(text):
    assert parse_critique(text) == CLEAN


# ---------------------------------------------------------------------------------------------------------------
# parse_revision


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The adult stands behind the child.", "The adult stands behind the child."),
        ("Revised answer: The adult stands behind the child.", "The adult stands behind the child."),
        ("Corrected answer:\nThe adult stands behind the child.", "The adult stands behind the child."),
        ("**Revised Answer:** The adult stands behind the child.", "The adult stands behind the child."),
        ("Here is the corrected response: The cup is red.", "The cup is red."),
        ("Sure! Here is the revised answer:\n\nThe cup is red.", "The cup is red."),
        ('Revised answer: "The cup is red."', "The cup is red."),
        ("“The cup is red.”", "The cup is red."),
        ("```\nThe cup is red.\n```", "The cup is red."),
        ("```text\nRevised answer: The cup is red.\n```", "The cup is red."),
        ("Answer: The cup is red.", "The cup is red."),
        (
            "Question: What colour is the cup?\nPrevious answer: Blue.\nCritique: It is red.\nRevised answer: Red.",
            "Red.",
        ),
        ("  The man waves.  \nThen he leaves.   \n", "The man waves.\nThen he leaves."),
        ('"Stop," he says, and then "go"', '"Stop," he says, and then "go"'),
        ("", ""),
        ("Revised answer:", ""),
    ],
)
def test_parse_revision(text, expected):
    assert parse_revision(text) == expected


# ---------------------------------------------------------------------------------------------------------------
# parse_judge

NONE = JudgeScore(None, None, None, None)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"relevance": 4, "accuracy": 3, "temporal_grounding": 4, "clarity": 5}', JudgeScore(4.0, 3.0, 4.0, 5.0)),
        (
            'Here is my evaluation:\n```json\n{"relevance": 5, "accuracy": 2, "temporal_grounding": 3, "clarity": 4}\n'
            "```\nThe answer misses the order of events.",
            JudgeScore(5.0, 2.0, 3.0, 4.0),
        ),
        ('{"Relevance": 4, "Accuracy": 4, "Temporal grounding": 2, "Clarity": 3}', JudgeScore(4.0, 4.0, 2.0, 3.0)),
        ('{"relevance": 4, "accuracy": 4, "temporal": 1, "clarity": 3}', JudgeScore(4.0, 4.0, 1.0, 3.0)),
        ('{"relevance": "4", "accuracy": "3/5", "temporal_grounding": 4.5, "clarity": "good"}',
         JudgeScore(4.0, 3.0, 4.5, None)),
        ('{"relevance": {"score": 4, "reason": "on topic"}, "accuracy": {"score": 2}}',
         JudgeScore(4.0, 2.0, None, None)),
        ('{"scores": {"relevance": 3, "clarity": 4}, "comment": "fine"}', JudgeScore(3.0, None, None, 4.0)),
        ('{"relevance": 7, "accuracy": 0, "temporal_grounding": -2, "clarity": 5}', JudgeScore(5.0, 1.0, 1.0, 5.0)),
        ('{"relevance": true, "accuracy": null, "temporal_grounding": [4], "clarity": 4}',
         JudgeScore(None, None, None, 4.0)),
        ('{"relevance": 4, "accuracy": 3,}', JudgeScore(4.0, 3.0, None, None)),
        ("{'relevance': 2, 'accuracy': 2, 'temporal_grounding': 2, 'clarity': 2}", JudgeScore(2.0, 2.0, 2.0, 2.0)),
        ("Relevance: 4\nAccuracy: 3\nTemporal grounding: 2\nClarity: 5", JudgeScore(4.0, 3.0, 2.0, 5.0)),
        (
            "- **Relevance**: 5/5\n- **Accuracy**: 3/5\n- **Temporal_grounding**: 4/5\n- **Clarity**: 4/5",
            JudgeScore(5.0, 3.0, 4.0, 4.0),
        ),
        ("Relevance (1-5): 4\nAccuracy - 2\nclarity score = 5 out of 5", JudgeScore(4.0, 2.0, None, 5.0)),
        ("Relevance: 8/10, Accuracy: 6/10", JudgeScore(4.0, 3.0, None, None)),
        ("Relevance: 9\nAccuracy: 0", JudgeScore(5.0, 1.0, None, None)),
        ("Relevance: high\nAccuracy: 3", JudgeScore(None, 3.0, None, None)),
        ("4/5", JudgeScore(4.0, 4.0, 4.0, 4.0)),
        ("I would rate this answer 3 out of 5.", JudgeScore(3.0, 3.0, 3.0, 3.0)),
        ("Overall score: 2", JudgeScore(2.0, 2.0, 2.0, 2.0)),
        ("Score: 7/10", JudgeScore(3.5, 3.5, 3.5, 3.5)),
        ("First 4/5, on reflection 3/5.", NONE),  # two different scores: ambiguous, so nothing
        ("The event in frame 3/32 is missed.", NONE),
        ("The answer is good.", NONE),
        ("", NONE),
        ("{not json at all", NONE),
        ('{"verdict": "good"}', NONE),
        ("\x00\x01\x02", NONE),
    ],
)
def test_parse_judge(text, expected):
    assert parse_judge(text) == expected


def test_judge_overall():
    assert JudgeScore(4.0, 3.0, 4.0, 5.0).overall == 4.0
    assert JudgeScore(4.0, None, 2.0, None).overall == 3.0
    assert NONE.overall is None


# ---------------------------------------------------------------------------------------------------------------
# Fuzz: no input makes a parser raise

_JSONISH = ['[', ']', '{', '}', '"', "'", ",", ":", "\n", "```", "1. ", "- ", "Q1: ", "NO_ERRORS", "relevance: ",
            "4/5", "\\", "null", "true", " ", "What is", "?", "Revised answer:", "**", "(1)", "\u200b", "\x00"]


def _random_text(rng: random.Random) -> str:
    style = rng.randrange(3)
    length = rng.randrange(0, 300)
    if style == 0:  # printable ASCII
        return "".join(rng.choice(string.printable) for _ in range(length))
    if style == 1:  # any code point but surrogates
        return "".join(chr(rng.choice([rng.randrange(0xD800), rng.randrange(0xE000, 0x110000)])) for _ in range(length))
    return "".join(rng.choice(_JSONISH) for _ in range(length // 4))  # fragments of the formats the parsers look for


# ---------------------------------------------------------------------------------------------------------------
# parse_choice (savi eval, generate mode)

BASKETBALL = ["dunking a basketball", "dribbling a basketball", "passing a basketball"]

CHOICE_CASES = {
    "bare letter": ("B", (1, "letter")),
    "letter in parentheses": ("(C)", (2, "letter")),
    "letter with its option": ("A. dunking a basketball", (0, "letter")),
    "lower-case letter with a dot is not taken as the article-free letter": ("b.", (None, None)),
    "answer prefix": ("The answer is C.", (2, "letter")),
    "best option prefix as VideoChat2 prompts it": ("Best option:(B) dribbling a basketball", (1, "letter")),
    "bold letter": ("**C**", (2, "letter")),
    "letter named inside a sentence": ("I would say option B, since he bounces it.", (1, "letter")),
    "option text only": ("He is dribbling a basketball.", (1, "text")),
    "the article A is not the letter A": ("A man is passing a basketball to a friend.", (2, "text")),
    "two letters: ambiguous, not guessed": ("A or B", (None, None)),
    "two letters marked: ambiguous": ("(A) or maybe (C)", (None, None)),
    "a letter beyond the options": ("D", (None, None)),
    "two option texts": ("dunking a basketball and then passing a basketball", (None, None)),
    "nothing usable": ("The video shows a sunny day.", (None, None)),
    "empty": ("", (None, None)),
}


def test_parse_choice_reads_a_leading_label_where_the_prompt_labels_options_otherwise_than_by_letter():
    captions = ["A man is dunking a basketball.", "A man is dribbling a basketball."]
    for labels in (["Option 1", "Option 2"], ["Sentence A", "Sentence B"]):
        assert parse_choice(f"{labels[1]}: {captions[1]}", captions, labels=labels) == (1, "label")
        assert parse_choice(labels[0].lower(), captions, labels=labels) == (0, "label")
    assert parse_choice("Option 10", captions, labels=["Option 1", "Option 2"]) == (None, None)
    assert parse_choice("A man is dribbling a basketball.", captions, labels=["Option 1", "Option 2"]) == (1, "text")


@pytest.mark.parametrize("reply", CHOICE_CASES, ids=list(CHOICE_CASES))
def test_parse_choice_reads_only_what_is_there(reply):
    text, expected = CHOICE_CASES[reply]
    assert parse_choice(text, BASKETBALL) == expected


def test_parse_choice_prefers_the_longer_option_that_contains_a_shorter_one():
    assert parse_choice("It is dark red.", ["red", "dark red", "blue"]) == (1, "text")


@pytest.mark.parametrize("text,expected", [("Yes.", (0, "yes_no")), ("no, it is not", (1, "yes_no")),
                                           ("Answer: yes", (0, "yes_no")), ("Nope", (None, None)),
                                           ("It is unclear", (None, None)), ("yesterday", (None, None))])
def test_parse_choice_yes_no(text, expected):
    assert parse_choice(text, ["yes", "no"], yes_no=True) == expected


def test_fuzz_parsers_never_raise():
    rng = random.Random(20240601)
    for _ in range(500):
        text = _random_text(rng)
        questions, how = parse_questions(text)
        assert isinstance(questions, list) and all(isinstance(q, str) and q for q in questions)
        assert how in ("json", "numbered", "lines", "none") and (how == "none") == (not questions)
        verdict = parse_critique(text)
        assert isinstance(verdict.found_errors, bool) and all(isinstance(t, str) for t in verdict.error_types)
        assert isinstance(parse_revision(text), str)
        score = parse_judge(text)
        for value in (score.relevance, score.accuracy, score.temporal_grounding, score.clarity):
            assert value is None or 1.0 <= value <= 5.0
        assert isinstance(normalize_text(text), str)
        assert 0.0 <= similarity(text, text[::-1]) <= 1.0
        choice, how = parse_choice(text, BASKETBALL)
        assert (choice is None and how is None) or (0 <= choice < 3 and how in ("letter", "text"))
