"""Judge accuracy where the truth is known: questions that carry their right answer (`Question.truth`), and
`savi filter` counting, per question kind, how often its choice agrees with it.

The filter runs for real (the stage, a tiny random CLIP, frames sampled from real clips). Random weights decide
nothing that matters here: critique-mode pairs keep the critique's choice, and where a judge-mode swap depends on
CLIP, the expected counts are computed from the chosen texts the filter wrote.
"""

import dataclasses

import pyarrow.parquet as pq
import pytest
from builders import write_questions

from stages import filter as filter_stage
from stages.core.clip import ClipConfig
from stages.core.records import QUESTIONS, Candidate, Question
from stages.core.store import ArtifactWriter
from stages.offline.tiny_clip import build_tiny_clip

FILTER = filter_stage.FilterConfig()


@pytest.fixture(scope="module")
def clip_cfg(tmp_path_factory) -> ClipConfig:
    return ClipConfig(model=f"local-dir:{build_tiny_clip(tmp_path_factory.mktemp('clip'))}", device="cpu")


@pytest.fixture
def videos(sampled_run) -> list[str]:
    return [s.video_id for s in sampled_run.artifact("samples").read()]


def question(question_id, video_id, kind, truth=None):
    return Question(question_id, video_id, kind, f"{question_id}?", "json", "ask/1", "world", truth=truth)


def candidate(pair_id, q, chosen, rejected, mode="critique", usable=True, note=None):
    return Candidate(pair_id, q.video_id, q.question_id, q.text, chosen, rejected, "revision", f"a-{pair_id}",
                     f"c-{pair_id}", mode, None, None, usable, note)


def write_candidates(run, round, candidates):
    writer = ArtifactWriter(run.artifact("candidates", round), params={}, inputs={})
    for c in candidates:
        writer.add(c)
    writer.finish()


def agreement_from_chosen(pairs, questions, true_text):
    """Counted by hand: `true_text[pair_id]` is the one text of that pair that is right (pairs not in it have
    none or two), and a kept pair agrees when the filter chose exactly that text."""
    kinds = {q.question_id: q.kind for q in questions}
    counts = {}
    for pair in pairs:
        if pair.kept and pair.pair_id in true_text:
            n = counts.setdefault(kinds[pair.question_id], {"pairs": 0, "agree": 0})
            n["pairs"] += 1
            n["agree"] += pair.chosen == true_text[pair.pair_id]
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Through the filter


@pytest.mark.slow
def test_filter_counts_per_kind_how_often_its_choice_is_the_truth(sampled_run, videos, clip_cfg):
    qs = {"right": question("q-right", videos[0], "direction", truth="right"),
          "lettered": question("q-lettered", videos[1], "direction", truth="B. left"),
          "up": question("q-up", videos[2], "direction", truth="up"),
          "red": question("q-red", videos[0], "colour", truth="red"),
          "blue": question("q-blue", videos[1], "colour", truth="(C) blue"),
          "asked": question("q-asked", videos[2], "spatial")}  # written by the model: no truth
    cands = [
        candidate("agree", qs["right"], "Right.", "left"),             # case and punctuation aside
        candidate("disagree", qs["right"], "left", "  RIGHT "),        # whitespace aside
        candidate("letter", qs["lettered"], "B", "A"),                 # the truth's option letter
        candidate("option-text", qs["lettered"], "down", "left"),      # the truth's option text
        candidate("neither", qs["up"], "left", "down"),                # both wrong: says nothing of the judge
        candidate("duplicate", qs["up"], "up", "Up!"),                 # dropped (near duplicate): not trained on
        candidate("colour", qs["red"], "red", "green"),
        candidate("tie", qs["red"], "red", "green", usable=False, note="tie"),  # dropped by the critique
        candidate("whole", qs["blue"], "C) blue", "It is blue."),      # "it is blue" is not "blue"
        candidate("letter-only", qs["blue"], "green", "(C)"),
        candidate("no-truth", qs["asked"], "right", "left"),
    ]
    write_questions(sampled_run, 1, list(qs.values()))
    write_candidates(sampled_run, 1, cands)

    result = filter_stage.run(sampled_run, 1, FILTER, clip_cfg)
    pairs = sampled_run.artifact("pairs", 1).read()
    assert {p.pair_id for p in pairs if not p.kept} == {"duplicate", "tie"}
    assert not any(p.swapped for p in pairs)  # critique mode: the critique's choice stands
    true_text = {"agree": "Right.", "disagree": "  RIGHT ", "letter": "B", "option-text": "left", "colour": "red",
                 "whole": "C) blue", "letter-only": "(C)", "duplicate": "up", "tie": "red"}
    expected = agreement_from_chosen(pairs, qs.values(), true_text)
    assert expected == {"direction": {"pairs": 4, "agree": 2}, "colour": {"pairs": 3, "agree": 2}}
    assert result.counts["judge_agreement"] == expected
    assert sampled_run.artifact("pairs", 1).manifest()["counts"]["judge_agreement"] == expected
    # An up-to-date filter reports the same from its manifest.
    again = filter_stage.run(sampled_run, 1, FILTER, clip_cfg)
    assert again.up_to_date and again.counts["judge_agreement"] == expected
    assert filter_stage.agreement_summary(again.counts["judge_agreement"]) == (
        "judge agrees with the truth on 4/7 pairs (57%): colour 2/3, direction 2/4")


@pytest.mark.slow
def test_agreement_follows_a_judge_swap_and_leaves_out_pairs_dropped_by_the_margin(sampled_run, videos, clip_cfg):
    right = question("q-right", videos[0], "direction", truth="right")
    write_questions(sampled_run, 1, [right])
    # The same pair written both ways: with a swap margin of 0 CLIP swaps exactly one, and both then choose
    # the text CLIP grounds better, right or wrong.
    write_candidates(sampled_run, 1, [candidate("ab", right, "right", "left", mode="judge"),
                                      candidate("ba", right, "left", "right", mode="judge")])
    result = filter_stage.run(sampled_run, 1, FILTER, clip_cfg)
    pairs = sampled_run.artifact("pairs", 1).read()
    assert sum(p.swapped for p in pairs) == 1 and len({p.chosen for p in pairs}) == 1
    expected = agreement_from_chosen(pairs, [right], {"ab": "right", "ba": "right"})
    assert expected["direction"]["pairs"] == 2 and expected["direction"]["agree"] in (0, 2)
    assert result.counts["judge_agreement"] == expected

    # Scores lie in [-1, 1], so a margin of 2 drops every pair: none is trained on, none is counted.
    strict = dataclasses.replace(FILTER, min_clip_margin=2.0)
    result = filter_stage.run(sampled_run, 1, strict, clip_cfg, force=True)
    assert result.counts["kept"] == 0
    assert result.counts["judge_agreement"] == {"direction": {"pairs": 0, "agree": 0}}
    assert filter_stage.agreement_summary(result.counts["judge_agreement"]) == (
        "judge agrees with the truth on 0/0 pairs: direction 0/0")


@pytest.mark.slow
def test_no_agreement_is_reported_without_a_known_answer(sampled_run, videos, clip_cfg):
    asked = question("q-asked", videos[0], "spatial")
    write_candidates(sampled_run, 1, [candidate("p", asked, "right", "left")])
    # No questions table at all (candidates written by hand), then one whose questions have no truth.
    assert "judge_agreement" not in filter_stage.run(sampled_run, 1, FILTER, clip_cfg).counts
    write_questions(sampled_run, 1, [asked, question("q-blank", videos[1], "spatial", truth="  ")])
    assert "judge_agreement" not in filter_stage.run(sampled_run, 1, FILTER, clip_cfg, force=True).counts


# ---------------------------------------------------------------------------------------------------------------
# The schema and the comparison


def test_a_questions_table_written_before_truth_existed_reads_with_no_truth(workspace):
    from stages.core.store import open_run

    run = open_run("old")
    write_questions(run, 1, [question("q1", "v1", "temporal", truth="right"), question("q2", "v1", "spatial")])
    art = run.artifact("questions", 1)
    assert [q.truth for q in art.read()] == ["right", None]
    assert QUESTIONS.stamp == "questions/2"
    # Rewrite it as the earlier version left it: no truth column, stamped questions/1.
    old = pq.read_table(art.path).drop_columns(["truth"]).replace_schema_metadata({b"savi.schema": b"questions/1"})
    pq.write_table(old, art.path)
    art.manifest_path.write_text(art.manifest_path.read_text().replace('"questions/2"', '"questions/1"'))
    rows = art.read()
    assert [(q.question_id, q.kind, q.truth) for q in rows] == [("q1", "temporal", None), ("q2", "spatial", None)]


def test_a_text_names_the_truth_whole_or_by_its_option_letter_or_text():
    assert filter_stage.truth_forms("right") == {"right"}
    assert filter_stage.truth_forms("B. right") == {"b right", "b", "right"}
    assert filter_stage.truth_forms("(C) dark blue") == {"c dark blue", "c", "dark blue"}
    assert filter_stage.truth_forms("D: up") == {"d up", "d", "up"}
    assert filter_stage.truth_forms("A red square") == {"a red square"}  # a word, not an option letter
    assert filter_stage.truth_forms("?!") == set()  # nothing left to compare: no text can name it


@pytest.mark.slow
def test_savi_filter_says_in_its_one_line_how_often_the_judge_agrees_with_the_truth(sampled_run, videos, clip_cfg):
    from typer.testing import CliRunner

    from savi_cli.main import app

    right = question("q-right", videos[0], "direction", truth="right")
    write_questions(sampled_run, 1, [right])
    write_candidates(sampled_run, 1, [candidate("agree", right, "Right.", "left")])
    result = CliRunner().invoke(app, ["filter", "--run", "t", "--round", "1", "--clip-model", clip_cfg.model,
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.splitlines()
    assert line.endswith("; judge agrees with the truth on 1/1 pairs (100%): direction 1/1")
    assert "judge_agreement" not in line and "{" not in line
