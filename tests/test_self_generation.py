"""`savi ask`, `savi answer` and `savi critique` on tiny real models, through the stage functions and the CLI."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from savi_cli.main import app
from stages import answer, ask, critique
from stages.core.errors import SaviError
from stages.core.model import ModelConfig, Policy
from stages.core.records import Answer, Critique, Question
from stages.core.store import open_run

pytestmark = pytest.mark.slow

FAST = {"max_new_tokens": 24}


def model_cfg(tiny_model, family="qwen2_5_vl", **kw):
    return ModelConfig(id=str(tiny_model(family)), batch_size=4, **kw)


def run_chain(run, mcfg, round=1, per_video=4):
    asked = ask.run(run, round, ask.AskConfig(per_video=per_video, **FAST), mcfg)
    answered = answer.run(run, round, answer.AnswerConfig(**FAST), mcfg)
    critiqued = critique.run(run, round, critique.CritiqueConfig(**FAST), mcfg)
    return asked, answered, critiqued


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_round_goes_from_videos_to_candidate_pairs(family, tiny_model, sampled_run):
    asked, answered, critiqued = run_chain(sampled_run, model_cfg(tiny_model, family))
    questions = sampled_run.artifact("questions", 1).read()
    answers = sampled_run.artifact("answers", 1).read()
    critiques = sampled_run.artifact("critiques", 1).read()
    candidates = sampled_run.artifact("candidates", 1).read()

    assert asked.items_done == 3 and 0 < len(questions) <= 12
    assert {q.kind for q in questions} <= {"spatial", "temporal"}
    assert all(q.prompt_version == "ask/1" and q.model == str(tiny_model(family)) for q in questions)
    per_video = {v: sum(q.video_id == v for q in questions) for v in {q.video_id for q in questions}}
    assert all(n <= 4 for n in per_video.values())

    assert len(answers) == len(questions)  # one candidate per question by default
    assert {a.question_id for a in answers} == {q.question_id for q in questions}
    assert all(a.temperature == 0.3 and a.sample_index == 0 and 0 < a.num_tokens <= 24 for a in answers)

    assert [c.answer_id for c in critiques] and {c.answer_id for c in critiques} == {a.answer_id for a in answers}
    assert all(c.mode == "critique" and c.revision is not None for c in critiques)
    assert len(candidates) == len(critiques)
    by_answer = {a.answer_id: a for a in answers}
    for pair in candidates:
        assert pair.rejected == by_answer[pair.rejected_source].text and pair.chosen_source == "revision"
        assert pair.usable == (pair.note is None)

    manifest = sampled_run.artifact("questions", 1).manifest()
    assert manifest["counts"]["questions"] == len(questions) and "parse_failures" in manifest["counts"]


def test_rerunning_a_finished_stage_does_nothing_and_never_loads_the_model(tiny_model, sampled_run, monkeypatch):
    mcfg = model_cfg(tiny_model)
    run_chain(sampled_run, mcfg)
    monkeypatch.setattr(Policy, "load", lambda *a, **k: pytest.fail("a finished stage must not load the model"))
    again = run_chain(sampled_run, mcfg)
    assert all(result.up_to_date for result in again)


def test_an_interrupted_batch_is_redone_whole_so_sampled_answers_match_an_uninterrupted_run(tiny_model, clip_folder):
    from stages import sample

    cfg = answer.AnswerConfig(candidates=2, temperatures=(0.9,), max_new_tokens=16)
    mcfg = model_cfg(tiny_model)  # batches of 4 answers
    runs = {}
    for name in ("clean", "interrupted"):
        runs[name] = open_run(name)
        sample.run(runs[name], [clip_folder], sample.SampleConfig(frames=4, workers=1))
        ask.run(runs[name], 1, ask.AskConfig(per_video=2, temperature=0.0, **FAST), mcfg)
    answer.run(runs["clean"], 1, cfg, mcfg)

    def stop_after_one(total):
        def tick():
            raise KeyboardInterrupt  # Ctrl-C right after the first answer of the first batch was recorded
        return tick

    with pytest.raises(KeyboardInterrupt):
        answer.run(runs["interrupted"], 1, cfg, mcfg, progress=stop_after_one)
    resumed = answer.run(runs["interrupted"], 1, cfg, mcfg)
    assert resumed.items_done == resumed.counts["answers"] - 1
    texts = [{a.answer_id: a.text for a in r.artifact("answers", 1).read()} for r in runs.values()]
    assert texts[0] == texts[1]


def test_redoing_answers_redoes_their_critiques_and_drops_the_stale_ones(tiny_model, sampled_run):
    mcfg = model_cfg(tiny_model)
    run_chain(sampled_run, mcfg)
    old = {c.critique_id for c in sampled_run.artifact("critiques", 1).read()}
    # Redone at another temperature: every answer is new (an answer that ended within 8 tokens would otherwise
    # come out the same, since each item draws from its own seeded stream).
    answer.run(sampled_run, 1, answer.AnswerConfig(max_new_tokens=8, temperatures=(0.5,)), mcfg, force=True)
    redone = critique.run(sampled_run, 1, critique.CritiqueConfig(**FAST), mcfg)

    answers = {a.answer_id: a for a in sampled_run.artifact("answers", 1).read()}
    critiques = sampled_run.artifact("critiques", 1).read()
    assert len(critiques) == len(answers) and not old & {c.critique_id for c in critiques}
    assert redone.items_done == len(answers)
    assert sampled_run.artifact("critiques", 1).manifest()["notes"]["stale_rows_dropped"] == len(old)
    for pair in sampled_run.artifact("candidates", 1).read():  # built from today's answers only
        assert pair.rejected == answers[pair.rejected_source].text


def test_changed_parameters_are_refused_without_force(tiny_model, sampled_run):
    mcfg = model_cfg(tiny_model)
    ask.run(sampled_run, 1, ask.AskConfig(per_video=4, **FAST), mcfg)
    with pytest.raises(SaviError, match=r"different parameters \(per_video: 4 -> 2\).*--force"):
        ask.run(sampled_run, 1, ask.AskConfig(per_video=2, **FAST), mcfg)
    redone = ask.run(sampled_run, 1, ask.AskConfig(per_video=2, **FAST), mcfg, force=True)
    assert redone.items_done == 3
    assert all(n <= 2 for n in _questions_per_video(sampled_run).values())


def _questions_per_video(run):
    counts: dict[str, int] = {}
    for q in run.artifact("questions", 1).read():
        counts[q.video_id] = counts.get(q.video_id, 0) + 1
    return counts


def test_parse_failures_are_counted_in_the_manifest(tiny_model, sampled_run, monkeypatch):
    real = ask.parse_questions
    calls = iter(range(10**6))

    def every_other_output_unparseable(text, max_chars):
        return ([], "none") if next(calls) % 2 else real(text, max_chars=max_chars)

    monkeypatch.setattr(ask, "parse_questions", every_other_output_unparseable)
    result = ask.run(sampled_run, 1, ask.AskConfig(per_video=4, **FAST), model_cfg(tiny_model))
    kinds_with_questions = {(q.video_id, q.kind) for q in sampled_run.artifact("questions", 1).read()}
    assert result.counts["parse_failures"] == 3 * 2 - len(kinds_with_questions) >= 3


def test_several_candidates_then_judge_mode_pairs_best_and_worst(tiny_model, sampled_run):
    mcfg = model_cfg(tiny_model)
    ask.run(sampled_run, 1, ask.AskConfig(per_video=2, **FAST), mcfg)
    with pytest.raises(SaviError, match="judge mode pairs the best and worst of several answers"):
        answer.run(sampled_run, 1, answer.AnswerConfig(**FAST), mcfg)
        critique.run(sampled_run, 1, critique.CritiqueConfig(mode="judge", **FAST), mcfg)
    answer.run(sampled_run, 1, answer.AnswerConfig(candidates=3, **FAST), mcfg, force=True)
    answers = sampled_run.artifact("answers", 1).read()
    assert sorted({(a.sample_index, a.temperature) for a in answers}) == [(0, 0.3), (1, 0.5), (2, 0.7)]
    result = critique.run(sampled_run, 1, critique.CritiqueConfig(mode="judge", **FAST), mcfg)
    critiques = sampled_run.artifact("critiques", 1).read()
    assert len(critiques) == len(answers) and all(c.mode == "judge" for c in critiques)
    assert result.counts["judged"] == len(answers)
    assert sampled_run.artifact("candidates", 1).complete


def judged(answer_id, question_id, score):
    return Critique(f"c-{answer_id}", answer_id, question_id, "v", "judge", "{}", score=score)


def test_judge_pairs_are_best_against_worst_and_ties_are_unusable():
    questions = {q: Question(q, "v", "temporal", f"{q}?", "json", "ask/1", "m") for q in ("q1", "q2", "q3")}
    answers = {f"{q}a{i}": Answer(f"{q}a{i}", q, "v", f"text {q}{i}", 0.3, i, 3, True, "answer/1", "m")
               for q in questions for i in range(3)}
    critiques = [judged("q1a0", "q1", 2.0), judged("q1a1", "q1", 4.5), judged("q1a2", "q1", 3.0),
                 judged("q2a0", "q2", 3.0), judged("q2a1", "q2", 3.0),
                 judged("q3a0", "q3", 5.0), judged("q3a1", "q3", None)]  # unparsed verdicts are never guessed
    pairs = critique.derive_candidates(critiques, answers, questions, critique.CritiqueConfig(mode="judge"))
    assert [(p.question_id, p.chosen_source, p.rejected_source, p.usable, p.note) for p in pairs] == [
        ("q1", "q1a1", "q1a0", True, None), ("q2", "q2a0", "q2a1", False, "tie")]
    assert (pairs[0].chosen_score, pairs[0].rejected_score) == (4.5, 2.0)


def test_critique_pairs_record_why_they_are_unusable():
    q = Question("q", "v", "spatial", "Where is the cup?", "json", "ask/1", "m")
    a = Answer("a", "q", "v", "The cup is on the left.", 0.3, 0, 6, True, "answer/1", "m")

    def pair(text, found_errors, revision, similarity):
        c = Critique("c", "a", "q", "v", "critique", text, found_errors=found_errors, revision=revision,
                     revision_similarity=similarity)
        return critique.derive_candidates([c], {"a": a}, {"q": q}, critique.CritiqueConfig())[0]

    assert pair("NO_ERRORS", False, "The cup is on the left.", 1.0).note == "no_errors"
    assert pair("", False, "x", 0.0).note == "empty_critique"
    assert pair("The cup is on the right.", True, "", 0.0).note == "empty_revision"
    assert pair("Wrong side.", True, "The cup is on the left!", 0.95).note == "revision_unchanged"
    good = pair("Wrong side: it is on the right.", True, "The cup is on the right.", 0.7)
    assert (good.usable, good.chosen, good.rejected) == (True, "The cup is on the right.", "The cup is on the left.")


def test_prompts_can_be_overridden_and_their_version_is_recorded(tiny_model, sampled_run, tmp_path):
    from stages.core.prompts import PROMPTS_DIR

    custom = tmp_path / "prompts"
    custom.mkdir()
    text = (PROMPTS_DIR / "ask.toml").read_text().replace('version = "ask/1"', 'version = "ask/mine"')
    (custom / "ask.toml").write_text(text.replace("Watch the video carefully", "Look closely at the video"))
    ask.run(sampled_run, 1, ask.AskConfig(per_video=2, **FAST), model_cfg(tiny_model), prompts_dir=custom)
    assert {q.prompt_version for q in sampled_run.artifact("questions", 1).read()} == {"ask/mine"}


def test_stages_say_what_to_run_first(tiny_model, sampled_run, workspace):
    mcfg = model_cfg(tiny_model)
    with pytest.raises(SaviError, match=r"no questions yet; run `savi ask --run t --round 1` first"):
        answer.run(sampled_run, 1, answer.AnswerConfig(), mcfg)
    with pytest.raises(SaviError, match=r"no answers yet; run `savi answer --run t --round 1` first"):
        critique.run(sampled_run, 1, critique.CritiqueConfig(), mcfg)
    with pytest.raises(SaviError, match=r"round 2 starts from the policy trained in round 1"):
        ask.run(sampled_run, 2, ask.AskConfig(), mcfg)
    with pytest.raises(SaviError, match=r"run 'empty' has no samples yet; run `savi sample VIDEOS --run empty`"):
        ask.run(open_run("empty"), 1, ask.AskConfig(), mcfg)
    with pytest.raises(SaviError, match="unknown question kind where"):
        ask.run(sampled_run, 1, ask.AskConfig(kinds=("where",)), mcfg)


# ---------------------------------------------------------------------------------------------------------------
# Through the CLI


def invoke(args, stdin=None):
    result = CliRunner().invoke(app, args, input=stdin)
    assert result.exit_code == 0, result.output
    return result


def test_the_stages_chain_through_pipes(tiny_model, clip_folder, workspace):
    model = str(tiny_model())
    sampled = invoke(["sample", str(clip_folder), "--run", "piped", "--frames", "4"])
    asked = invoke(["ask", "--round", "1", "--model", model, "--per-video", "2", "--max-new-tokens", "24"],
                   stdin=sampled.stdout)
    assert asked.stdout == f"{workspace / 'piped' / 'round=1' / 'questions.parquet'}\n"
    assert "3 videos done now" in asked.stderr
    answered = invoke(["answer", "--max-new-tokens", "24"], stdin=asked.stdout)  # model and round from the run
    assert answered.stdout == f"{workspace / 'piped' / 'round=1' / 'answers.parquet'}\n"
    critiqued = invoke(["critique", "-", "--max-new-tokens", "24"], stdin=answered.stdout)
    assert critiqued.stdout == f"{workspace / 'piped' / 'round=1' / 'critiques.parquet'}\n"
    counts = invoke(["query", "select count(*) from candidates where run = 'piped' and round = 1", "-f", "csv"])
    assert int(counts.stdout.splitlines()[1]) > 0
    again = invoke(["answer", "--run", "piped", "--round", "1", "--max-new-tokens", "24"])
    assert "answers up to date" in again.stderr


def test_cli_errors_are_one_line(tiny_model, sampled_run, tmp_path):
    runner = CliRunner()

    def one_error_line(result) -> str:
        assert result.exit_code == 1, (result.output, result.exception)
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("Error: ") and result.stderr.endswith("\n"), result.stderr
        return result.stderr.rstrip("\n")

    early = runner.invoke(app, ["critique", "--run", "t", "--round", "1"])
    assert one_error_line(early) == \
        "Error: round 1 of run 't' has no answers yet; run `savi answer --run t --round 1` first"
    wrong = runner.invoke(app, ["ask", "--run", "t", "--round", "1", "--model", str(tmp_path / "missing")])
    assert one_error_line(wrong).startswith(f"Error: cannot load model '{tmp_path / 'missing'}'")
    no_round = runner.invoke(app, ["ask", "--run", "t"])
    assert one_error_line(no_round) == "Error: --round is required (or pipe in the previous stage's output)"
    # An out-of-range flag is a usage error (exit 2): Typer's usage lines, then its one `Error:` line.
    zero = runner.invoke(app, ["ask", "--run", "t", "--round", "0"])
    assert zero.exit_code == 2 and zero.stdout == ""
    assert zero.stderr.splitlines() == [
        "Usage: savi ask [OPTIONS] [input]", "Try 'savi ask --help' for help.", "",
        "Error: Invalid value for '--round': Input should be greater than or equal to 1"]
    mismatch = runner.invoke(app, ["answer", "--round", "2"], input=str(sampled_run.path / "round=1" /
                                                                         "questions.parquet"))
    assert one_error_line(mismatch) == "Error: --round 2 disagrees with the piped table, which is from round 1"
    assert mismatch.exception is None or isinstance(mismatch.exception, SystemExit)  # no traceback


# ---------------------------------------------------------------------------------------------------------------
# A kill -9 in the middle of each stage


STAGES = [
    ["ask", "--per-video", "4", "--temperature", "0.8"],
    ["answer", "--candidates", "2", "--temperatures", "0.5,0.9"],
    ["critique", "--temperature", "0.7"],
]
TABLES = {"ask": ["questions"], "answer": ["answers"], "critique": ["critiques", "candidates"]}

# savi, writing a part after every finished item (instead of every 64 rows or every second): the first part then
# appears after the first item, with the rest of the stage still to do, however fast the machine.
SAVI_FLUSHING_EACH_ITEM = [sys.executable, "-c", """
from stages.core.store import ArtifactWriter
post_init = ArtifactWriter.__post_init__
def flush_each_item(self):
    self.flush_rows = 1
    post_init(self)
ArtifactWriter.__post_init__ = flush_each_item
from savi_cli.main import app
app()
"""]


def test_kill_9_in_the_middle_of_each_stage_loses_and_duplicates_nothing(tiny_model, clip_folder, workspace):
    """Each stage is killed as soon as it has flushed its first item, then rerun. Sampling is on and batches hold
    several items: the resumed run forms the same batches with the same seeds, so the result must equal an
    uninterrupted run's, row for row."""
    savi = [sys.executable, "-c", "from savi_cli.main import app; app()"]
    env = dict(os.environ, SAVI_HOME=str(workspace))
    common = ["--round", "1", "--model", str(tiny_model()), "--batch-size", "2", "--max-new-tokens", "48"]
    for name in ("clean", "killed"):
        subprocess.run(savi + ["sample", str(clip_folder), "--run", name, "--frames", "4"], env=env, check=True,
                       capture_output=True)

    def kill_after_first_item(args) -> bool:
        """True if the stage was killed mid-work; False if it finished first (its tables are then removed, so the
        stage can be tried afresh)."""
        arts = [open_run("killed").artifact(table, 1) for table in TABLES[args[0]]]
        proc = subprocess.Popen(SAVI_FLUSHING_EACH_ITEM + args + ["--run", "killed"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300  # only against a hang
        try:
            while not list(arts[0].parts_dir.glob("part-*")) and proc.poll() is None:
                assert time.monotonic() < deadline, f"{args[0]} flushed nothing in 300 s"
                time.sleep(0.002)
        finally:
            proc.send_signal(signal.SIGKILL)  # nothing if it has already finished
            proc.wait()
        if proc.returncode == -signal.SIGKILL:
            assert not arts[0].complete
            return True
        assert proc.returncode == 0, f"{args[0]} failed with exit code {proc.returncode}"
        for art in arts:
            art.manifest_path.unlink()
            art.path.unlink()
        return False

    for stage in STAGES:
        args = stage + common
        subprocess.run(savi + args + ["--run", "clean"], env=env, check=True, capture_output=True)
        killed_mid_stage = any(kill_after_first_item(args) for _ in range(3))
        assert killed_mid_stage, f"{stage[0]} finished before it could be killed, three times"
        subprocess.run(savi + args + ["--run", "killed"], env=env, check=True, capture_output=True)

        for table in TABLES[stage[0]]:
            clean = open_run("clean").artifact(table, 1)
            killed = open_run("killed").artifact(table, 1)
            key = clean.spec.key
            drop = [c for c in ("model",) if c in clean.read_table().column_names]  # the model's path differs
            clean_rows = clean.read_table().drop_columns(drop).to_pylist()
            killed_rows = killed.read_table().drop_columns(drop).to_pylist()
            assert len({r[key] for r in killed_rows}) == len(killed_rows)  # nothing duplicated
            assert killed_rows == clean_rows, f"{table} differs after a kill"  # nothing lost, nothing changed
        assert open_run("killed").artifact(TABLES[stage[0]][0], 1).manifest()["resumed"] is True
    assert Path(open_run("killed").artifact("candidates", 1).path).is_file()
