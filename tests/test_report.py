"""`savi report` says how sure each figure is: the statistics on their own, then the report over eval tables whose
per-question results are chosen here, so every interval, p-value and noise label can be worked out by hand."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from savi_cli.main import app
from stages import eval as eval_stage
from stages.benchmarks.common import Benchmark
from stages.core.records import EvalResult
from stages.core.stats import discordant, mcnemar_exact, paired_bootstrap_interval, wilson_interval
from stages.core.store import ArtifactWriter, open_run, write_json

runner = CliRunner()


# ---------------------------------------------------------------------------------------------------------------
# The statistics


def test_wilson_interval_matches_the_published_values():
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(6, 20) == pytest.approx((0.1455, 0.5190), abs=1e-4)


def test_wilson_interval_at_the_edges_stays_inside_zero_and_one():
    z2 = 1.959963984540054 ** 2
    assert wilson_interval(20, 20) == pytest.approx((20 / (20 + z2), 1.0))  # all right: the top end is exactly 1
    assert wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 20) == pytest.approx((0.0, z2 / (20 + z2)))  # all wrong: the bottom end is exactly 0
    assert wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no questions: nothing is known


def test_wilson_interval_refuses_more_correct_than_questions():
    with pytest.raises(ValueError, match="correct must be between 0 and total"):
        wilson_interval(5, 4)


def test_discordant_counts_questions_lost_and_gained():
    before = [True, True, False, False, True]
    after = [False, True, True, True, True]
    assert discordant(before, after) == (1, 2)
    with pytest.raises(ValueError, match="the same questions"):
        discordant([True], [True, False])


def test_mcnemar_exact_matches_the_binomial_tail():
    assert mcnemar_exact(1, 9) == 0.021484375  # 2 * (C(10,0) + C(10,1)) / 2**10
    assert mcnemar_exact(9, 1) == 0.021484375  # two-sided: the direction does not matter
    assert mcnemar_exact(3, 12) == 0.03515625  # 2 * (1 + 15 + 105 + 455) / 2**15
    assert mcnemar_exact(0, 0) == 1.0  # no disagreement: no evidence of a change
    assert mcnemar_exact(5, 5) == 1.0  # an even split is capped at 1, not 2 * (a tail past the middle)
    assert 0 < mcnemar_exact(0, 1000) < 1e-300  # a large benchmark stays exact instead of overflowing


def test_paired_bootstrap_is_deterministic_under_its_seed():
    before = [i % 3 == 0 for i in range(200)]
    after = [i % 2 == 0 for i in range(200)]
    first = paired_bootstrap_interval(before, after, seed=7)
    assert paired_bootstrap_interval(before, after, seed=7) == first


def test_paired_bootstrap_agrees_with_the_normal_approximation_on_a_large_sample():
    # 100 questions: 10 lost, 30 gained, so the change is +0.20. Its standard error over resampled questions is
    # sqrt((b + c) / n - change**2) / sqrt(n) = sqrt(0.40 - 0.04) / 10 = 0.06: a 95% interval of about
    # 0.20 +- 1.96 * 0.06 = [0.082, 0.318]. The percentile bootstrap lands within a point of that.
    before = [True] * 10 + [False] * 30 + [True] * 20 + [False] * 40
    after = [False] * 10 + [True] * 30 + [True] * 20 + [False] * 40
    low, high = paired_bootstrap_interval(before, after)
    assert low == pytest.approx(0.20 - 1.96 * 0.06, abs=0.01)
    assert high == pytest.approx(0.20 + 1.96 * 0.06, abs=0.01)


def test_paired_bootstrap_at_the_edges():
    assert paired_bootstrap_interval([], []) == (-1.0, 1.0)  # no questions: the change can be anything
    assert paired_bootstrap_interval([True] * 9, [True] * 9) == (0.0, 0.0)  # all right before and after
    assert paired_bootstrap_interval([False] * 9, [False] * 9) == (0.0, 0.0)  # all wrong before and after
    assert paired_bootstrap_interval([False] * 9, [True] * 9) == (1.0, 1.0)  # every question gained


# ---------------------------------------------------------------------------------------------------------------
# Eval tables with chosen results, written as `savi eval` writes them


def write_eval(run, benchmark, round, results):
    """One round's eval table and its summary through the writer and `summarize` that `savi eval` uses.
    `results`: (question_id, number of options, correct), correct None for a video that did not decode."""
    rows = []
    for question_id, options, correct in results:
        answer = 0
        prediction = None if correct is None else (0 if correct else 1)
        rows.append(EvalResult(
            question_id=question_id, benchmark=benchmark, category="all", meta={}, video=f"{question_id}.mp4",
            question="What happens?", options=[f"option {k}" for k in range(options)], answer=answer,
            mode="likelihood", prediction=prediction, correct=correct,
            parsed_as=None if correct is None else "likelihood", response="",
            option_scores=[] if correct is None else [0.0] * options, num_frames=0 if correct is None else 4,
            error="cannot decode the video" if correct is None else None, model="tiny"))
    art = run.eval_artifact(benchmark, round)
    writer = ArtifactWriter(art, params={"benchmark": benchmark}, inputs={"questions": len(rows)})
    for row in rows:
        writer.add(row)
    bench = Benchmark(benchmark, "default", [], [], True)
    write_json(art.path.with_name(f"{benchmark}.summary.json"),
               eval_stage.summarize(rows, bench, round, "likelihood", "tiny"))
    writer.finish(counts={"questions": len(rows)})


def right_set(names, right):
    return [(q, 5, q in right) for q in names]


EGO = [f"q{i:02d}" for i in range(20)]  # 20 questions with 5 options each: chance 20.0


@pytest.fixture
def three_rounds():
    """egoschema over rounds 0-2, and mvbench over rounds 0-1 on partly different questions.

    egoschema: round 0 gets q00-q05 right (6/20); round 1 loses q00 and gains q06-q14 (14/20); round 2 loses
    q01-q02 and gains q15-q17 (15/20). Round 0 also holds a question whose video did not decode, with 2 options:
    it counts neither in the accuracy nor in chance.
    mvbench: round 0 has m0-m7 (m0-m3 with 4 options, m4-m7 with 2) and gets m0, m1, m4 right (3/8); round 1
    has m2-m9 (m8, m9 with 4 options) and gets m2-m5 and m8 right (5/8)."""
    run = open_run("t")
    write_eval(run, "egoschema", 0, right_set(EGO, set(EGO[0:6])) + [("q20", 2, None)])
    write_eval(run, "egoschema", 1, right_set(EGO, set(EGO[1:15])))
    write_eval(run, "egoschema", 2, right_set(EGO, set(EGO[3:18])))
    options = {f"m{i}": 4 if i in (0, 1, 2, 3, 8, 9) else 2 for i in range(10)}
    write_eval(run, "mvbench", 0, [(q, options[q], q in {"m0", "m1", "m4"}) for q in [f"m{i}" for i in range(8)]])
    write_eval(run, "mvbench", 1, [(q, options[q], q in {"m2", "m3", "m4", "m5", "m8"})
                                   for q in [f"m{i}" for i in range(2, 10)]])
    return run


def test_report_shows_intervals_p_values_and_noise_labels(three_rounds):
    result = runner.invoke(app, ["report", "--run", "t"])
    assert result.exit_code == 0, result.output
    # Intervals: Wilson 95% for 6/20, 14/20, 15/20, 3/8 and 5/8.
    # egoschema round 1 against round 0: 1 lost, 9 gained: +40.0, p = 2 * (1 + 10) / 2**10 = 0.021.
    # egoschema round 2 against round 1: 2 lost, 3 gained: +5.0, p = 2 * (1 + 5 + 10) / 2**5 = 1: noise.
    # egoschema round 2 against round 0: q00-q02 lost, q06-q17 gained: +45.0, p = 2 * 576 / 2**15 = 0.035.
    # mvbench round 1 against round 0, on the 6 shared questions m2-m7: 0 lost, m2, m3, m5 gained: +50.0,
    # p = 2 / 2**3 = 0.25: noise. Chance: (6 * 1/4 + 4 * 1/2) / 10 = 35.0 over the 10 questions of both rounds.
    assert result.stdout == (
        "benchmark  protocol    round  questions  accuracy  95% CI        strict  chance  vs round 0     "
        "                  "
        "vs previous\n"
        "---------  ----------  -----  ---------  --------  ------------  ------  ------  ---------------"
        "----------------  "
        "-------------------------------\n"
        "egoschema  likelihood  0      20         30.0      [14.5, 51.9]          20.0\n"
        "egoschema  likelihood  1      20         70.0      [48.1, 85.5]          20.0    +40.0 (p=0.021)"
        "                  "
        "+40.0 (p=0.021)\n"
        "egoschema  likelihood  2      20         75.0      [53.1, 88.8]          20.0    +45.0 (p=0.035)"
        "                  "
        "+5.0 (p=1, noise)\n"
        "mvbench    likelihood  0      8          37.5      [13.7, 69.4]          35.0\n"
        "mvbench    likelihood  1      8          62.5      [30.6, 86.3]          35.0    +50.0 (p=0.25, "
        "noise, 6 shared)  "
        "+50.0 (p=0.25, noise, 6 shared)\n"
    )


def test_report_as_json_and_csv_carries_the_same_figures(three_rounds):
    as_json = runner.invoke(app, ["report", "--run", "t", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert rows[2] == {"benchmark": "egoschema", "protocol": "likelihood", "round": 2, "questions": 20,
                       "accuracy": "75.0", "95% CI": "[53.1, 88.8]", "strict": None, "chance": "20.0",
                       "vs round 0": "+45.0 (p=0.035)", "vs previous": "+5.0 (p=1, noise)"}
    assert rows[0]["vs round 0"] is None and rows[0]["vs previous"] is None  # the base has nothing to compare to

    as_csv = runner.invoke(app, ["report", "--run", "t", "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    lines = as_csv.stdout.splitlines()
    assert lines[0] == "benchmark,protocol,round,questions,accuracy,95% CI,strict,chance,vs round 0,vs previous"
    assert lines[5] == 'mvbench,likelihood,1,8,62.5,"[30.6, 86.3]",,35.0,"+50.0 (p=0.25, noise, 6 shared)",' \
                       '"+50.0 (p=0.25, noise, 6 shared)"'


def test_an_lmms_eval_table_shows_its_credited_accuracy_with_the_strict_one_beside_it():
    # 10 questions of 4 options: 4 replies read right, 2 unread that lmms-eval would answer with a random letter
    # (1/4 each), 4 read wrong; savi's strict parser reads 3 of the right ones and nothing else.
    rows = []
    for k in range(10):
        right, guessed = k < 4, k in (4, 5)
        rows.append(EvalResult(
            question_id=f"q{k}", benchmark="egoschema", category="all", meta={}, video=f"q{k}.mp4",
            question="What happens?", options=["a", "b", "c", "d"], answer=0, mode="lmms-eval",
            prediction=None if guessed else (0 if right else 1), correct=right,
            parsed_as=None if guessed else "X ", response="...", option_scores=[], num_frames=4, error=None,
            model="tiny", fallback="random" if guessed else None, score=1.0 if right else 0.25 if guessed else 0.0,
            strict_prediction=0 if k < 3 else None, strict_correct=k < 3))
    run = open_run("t")
    art = run.eval_artifact("egoschema", 0)
    writer = ArtifactWriter(art, params={"benchmark": "egoschema"}, inputs={})
    for row in rows:
        writer.add(row)
    summary = eval_stage.summarize(rows, Benchmark("egoschema", "subset", [], [], True), 0, "lmms-eval", "tiny")
    write_json(art.path.with_name("egoschema.summary.json"), summary)
    writer.finish()
    assert (summary["accuracy"], summary["strict_accuracy"], summary["correct"]) == (0.45, 0.3, 4)
    assert (summary["unmatched"], summary["guessed"], summary["strict_unparsed"]) == (2, 2, 7)
    assert eval_stage.summary_line(summary) == ("lmms-eval accuracy 45.0% (4/10), strict 30.0%; 2 unmatched "
                                                "(2 credited 1/k)")

    result = runner.invoke(app, ["report", "--run", "t", "--format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    low, high = wilson_interval(4.5, 10)
    assert (row["protocol"], row["accuracy"], row["strict"]) == ("lmms-eval", "45.0", "30.0")
    assert row["95% CI"] == f"[{100 * low:.1f}, {100 * high:.1f}]"


def test_a_table_from_before_the_strict_reading_has_no_strict_figure_rather_than_zero():
    rows = [EvalResult(question_id=f"q{k}", benchmark="egoschema", category="all", meta={}, video=f"q{k}.mp4",
                       question="What happens?", options=["a", "b"], answer=0, mode="generate", prediction=0,
                       correct=True, parsed_as="letter", response="A", option_scores=[], num_frames=4, error=None,
                       model="tiny") for k in range(3)]
    summary = eval_stage.summarize(rows, Benchmark("egoschema", "subset", [], [], True), 0, "generate", "tiny")
    assert summary["accuracy"] == 1.0 and summary["strict_accuracy"] is None
    assert eval_stage.summary_line(summary) == "generate accuracy 100.0% (3/3)"


def test_a_round_without_the_base_is_compared_with_the_previous_round_only():
    run = open_run("t")
    write_eval(run, "egoschema", 1, right_set(EGO, set(EGO[0:10])))
    write_eval(run, "egoschema", 3, right_set(EGO, set(EGO[0:10])))
    result = runner.invoke(app, ["report", "--run", "t", "--format", "json"])
    assert result.exit_code == 0, result.output
    first, third = json.loads(result.stdout)
    assert (first["round"], first["vs round 0"], first["vs previous"]) == (1, None, None)
    assert (third["round"], third["vs round 0"], third["vs previous"]) == (3, None, "+0.0 (p=1, noise)")


def test_the_chart_is_a_png_at_the_path_asked_for(three_rounds, tmp_path):
    chart = tmp_path / "charts" / "rounds.png"
    chart.parent.mkdir()
    result = runner.invoke(app, ["report", "--run", "t", "--chart", str(chart)])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"chart: {chart}\n"
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert not (three_rounds.path / "report.png").exists()  # only where it was asked for


def test_a_damaged_eval_table_is_one_error_line_naming_the_command_to_redo_it(three_rounds):
    three_rounds.eval_artifact("mvbench", 1).path.write_bytes(b"not a parquet file")
    result = runner.invoke(app, ["report", "--run", "t"])
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("Error: ")
    assert "is damaged" in result.stderr and "savi eval BENCHMARK --data DIR --run t --round 1 --force" in \
        result.stderr

