"""`savi eval` and `savi report` on tiny real models, over benchmark fixtures written in each real layout."""

import json

import numpy as np
import pytest
from builders import save_random_adapter
from PIL import Image
from typer.testing import CliRunner

from savi_cli.main import app
from stages import eval as eval_stage
from stages.benchmarks import read_benchmark
from stages.benchmarks.choice import parse_choice
from stages.benchmarks.extract import read_answer
from stages.benchmarks.protocol import frame_size
from stages.core.errors import SaviError
from stages.core.model import ModelConfig
from stages.core.query import run_query
from stages.core.store import open_run
from stages.core.video import VideoError, read_frame_folder, read_video
from stages.offline import videos as synthetic
from stages.offline.benchmark_files import LAYOUTS, write_benchmark

pytestmark = pytest.mark.slow

runner = CliRunner()


def evaluate(run, data, tiny_model, round=0, benchmark="egoschema", split=None, force=False, **kw):
    source = eval_stage.BenchmarkSource(benchmark, data, split)
    cfg = eval_stage.EvalConfig(frames=kw.pop("frames", 4), **kw)
    return eval_stage.run(run, round, source, cfg, ModelConfig(id=str(tiny_model()), batch_size=3), force=force)


# ---------------------------------------------------------------------------------------------------------------
# Frames for benchmark questions: time spans and frame folders


def test_a_time_span_restricts_the_sampled_frames(tmp_path):
    path = synthetic.write_video(tmp_path / "v.mp4", num_frames=40, fps=10, size=(64, 48)).path
    whole = read_video(path, frames=4)
    span = read_video(path, frames=4, start_s=1.0, end_s=2.0)
    assert whole.indices == [5, 15, 25, 35]
    assert all(1.0 <= t <= 2.0 for t in span.timestamps_s) and len(span.indices) == 4
    assert span.indices == [11, 14, 16, 19]  # midpoints of 4 segments of frames 10..20 (t = 1.0 .. 2.0 s)


def test_a_frame_folder_is_sampled_like_a_video(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((24, 32, 3), i * 20, np.uint8)).save(folder / f"{i + 1:05d}.jpg")
    decoded = read_frame_folder(folder, frames=3, folder_fps=3.0, start_s=1.0, end_s=3.0)
    assert decoded.indices == [4, 6, 8] and decoded.timestamps_s == pytest.approx([4 / 3, 2.0, 8 / 3])
    assert [int(f.mean()) for f in decoded.frames] == pytest.approx([80, 120, 160], abs=2)
    assert decoded.num_frames == 12 and decoded.fps == 3.0


def test_lmms_eval_sampling_takes_the_familys_frames_over_the_whole_clip_at_its_pixel_budget(tmp_path):
    path = synthetic.write_video(tmp_path / "v.mp4", num_frames=40, fps=10, size=(64, 48)).path
    qwen = read_video(path, sampling=eval_stage.lmms_eval_sampling("qwen2_5_vl", 4))
    assert qwen.indices == [0, 13, 26, 39]   # linspace(0, 39, 4), rounded: both ends included
    assert {f.shape for f in qwen.frames} == {(*frame_size("qwen2_5_vl", 48, 64, 4), 3)}
    llava = read_video(path, sampling=eval_stage.lmms_eval_sampling("llava_onevision", 32))
    assert llava.indices == np.linspace(0, 39, 32, dtype=int).tolist() and llava.frames[0].shape == (384, 384, 3)
    # Qwen3-VL's own path asks for 32 frames of any clip and fails on a shorter one; savi takes all it has.
    assert read_video(path, sampling=eval_stage.lmms_eval_sampling("qwen3_vl", 64)).indices == list(range(40))
    one = synthetic.write_video(tmp_path / "one.mp4", num_frames=1, fps=10, size=(64, 48)).path
    with pytest.raises(VideoError, match="fails on a 1-frame clip"):
        read_video(one, sampling=eval_stage.lmms_eval_sampling("qwen2_5_vl", 32))


# ---------------------------------------------------------------------------------------------------------------
# Every benchmark, in every layout, through the model


@pytest.mark.parametrize("name,layout", [(n, layout) for n, layouts in LAYOUTS.items() for layout in layouts])
def test_every_benchmark_layout_is_evaluated_end_to_end(name, layout, tiny_model, tmp_path, workspace):
    data = write_benchmark(name, tmp_path, questions=2, layout=layout)
    run = open_run("t")
    split = "test" if (name, layout) == ("nextqa", "hf") else None  # the HF mirror has the test split only
    outcome = evaluate(run, data, tiny_model, benchmark=name, frames=2, limit=6, split=split, protocol="likelihood")
    rows = run.eval_artifact(outcome.table, 0).read()
    assert len(rows) == outcome.summary["evaluated"] > 0
    assert all(r.error is None and r.num_frames == 2 for r in rows)
    for r in rows:
        assert r.prediction == int(np.argmax(r.option_scores)) and len(r.option_scores) == len(r.options)
        assert r.correct == (None if r.answer is None else r.prediction == r.answer)
    scored = [r for r in rows if r.answer is not None]
    assert outcome.summary["questions"] == len(scored)
    if scored:
        assert outcome.summary["accuracy"] == pytest.approx(sum(r.correct for r in scored) / len(scored), abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Round against round, through the CLI


def test_round_0_and_round_1_through_the_cli_then_report(tiny_model, tmp_path, workspace):
    data = write_benchmark("egoschema", tmp_path, questions=6)
    base = ["eval", "egoschema", "--data", str(data), "--run", "t", "--frames", "4", "--protocol", "likelihood"]
    first = runner.invoke(app, base + ["--model", str(tiny_model()), "--round", "0"])
    assert first.exit_code == 0, first.output
    assert first.stdout.strip().endswith("round=0/eval/egoschema.parquet")
    assert "egoschema round 0: likelihood accuracy" in first.stderr

    run = open_run("t")
    not_trained = runner.invoke(app, base + ["--round", "1"])
    assert not_trained.exit_code == 1 and "round 1 of run 't' has no trained adapter" in not_trained.stderr
    save_random_adapter(run, 1, tiny_model)
    second = runner.invoke(app, base)  # the latest trained round by default
    assert second.exit_code == 0, second.output
    assert "egoschema round 1: likelihood accuracy" in second.stderr

    r0, r1 = (run.eval_artifact("egoschema", r).read() for r in (0, 1))
    assert [r.question_id for r in r0] == [r.question_id for r in r1]
    assert [r.option_scores for r in r0] != [r.option_scores for r in r1]  # the adapter changed the model
    assert r1[0].model.endswith("+round=1")

    report = runner.invoke(app, ["report", "--run", "t", "--format", "json"])
    assert report.exit_code == 0, report.output
    base_row, row = json.loads(report.stdout)
    acc = [sum(r.correct for r in rows) / len(rows) for rows in (r0, r1)]
    assert (base_row["round"], row["round"]) == (0, 1)
    assert row["benchmark"] == "egoschema" and row["questions"] == 4
    assert row["protocol"] == "likelihood" and row["strict"] is None  # nothing is parsed under likelihood
    assert base_row["accuracy"] == f"{100 * acc[0]:.1f}" and row["accuracy"] == f"{100 * acc[1]:.1f}"
    assert row["vs round 0"].startswith(f"{100 * (acc[1] - acc[0]):+.1f} (p=")
    with Image.open(run.path / "report.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 300

    columns, rows = run_query("select round, count(*), sum(correct::int) from evals group by 1 order by 1")
    assert rows == [(0, 4, sum(r.correct for r in r0)), (1, 4, sum(r.correct for r in r1))]


def test_perturb_evaluates_the_true_order_then_the_reversed_frames_and_reports_the_change(tiny_model, tmp_path,
                                                                                           workspace, monkeypatch):
    from stages.core import model as model_runtime

    received = []  # every video the processor was given, as given
    real_inputs = model_runtime.processor_inputs

    def spy(processor, videos, texts):
        received.extend(v.frames.copy() for v in videos)
        return real_inputs(processor, videos, texts)

    monkeypatch.setattr(model_runtime, "processor_inputs", spy)
    data = write_benchmark("egoschema", tmp_path, questions=6)
    result = runner.invoke(app, ["eval", "egoschema", "--data", str(data), "--run", "t", "--frames", "4",
                                 "--protocol", "likelihood", "--model", str(tiny_model()), "--round", "0",
                                 "--perturb", "reverse"])
    assert result.exit_code == 0, result.output
    assert [line.rsplit("/", 1)[1] for line in result.stdout.split()] == ["egoschema.parquet",
                                                                         "egoschema@reverse.parquet"]
    assert "egoschema@reverse round 0: likelihood accuracy" in result.stderr
    assert "vs the true order " in result.stderr

    run = open_run("t")
    true_rows = {r.question_id: r for r in run.eval_artifact("egoschema", 0).read()}
    reversed_rows = {r.question_id: r for r in run.eval_artifact("egoschema@reverse", 0).read()}
    assert true_rows.keys() == reversed_rows.keys() and len(true_rows) == 4
    assert all(r.frame_order == [] for r in true_rows.values())
    assert all(r.frame_order == [3, 2, 1, 0] for r in reversed_rows.values())  # recorded
    assert any(true_rows[q].option_scores != reversed_rows[q].option_scores for q in true_rows)
    # The model really received each clip's frames back to front.
    cfg = eval_stage.EvalConfig(frames=4)
    for item in read_benchmark("egoschema", data).items:
        if item.question_id in true_rows:
            frames = eval_stage.decode_item(item, cfg).frames
            assert any(np.array_equal(f, frames[::-1]) for f in received)
            assert not np.array_equal(frames, frames[::-1])

    report = runner.invoke(app, ["report", "--run", "t", "--format", "json"])
    assert report.exit_code == 0, report.output
    rows = {row["benchmark"]: row for row in json.loads(report.stdout)}
    accuracy = {name: sum(r.correct for r in table.values()) / 4 for name, table in
                (("egoschema", true_rows), ("egoschema@reverse", reversed_rows))}
    change = 100 * (accuracy["egoschema@reverse"] - accuracy["egoschema"])
    assert rows["egoschema@reverse"]["vs true order"].startswith(f"{change:+.1f} (p=")
    assert rows["egoschema"]["vs true order"] is None
    summary = json.loads((run.round_dir(0) / "eval" / "egoschema@reverse.summary.json").read_text())
    assert summary["perturb"] == "reverse" and summary["frames"].endswith("perturbed: reverse")


def test_report_without_evaluations_says_what_to_run(tiny_model, sampled_run):
    result = runner.invoke(app, ["report", "--run", "t"])
    assert result.exit_code == 1 and "has no evaluations yet" in result.stderr and "--round 0" in result.stderr


def test_a_chart_that_cannot_be_written_is_one_error_line(tiny_model, tmp_path, workspace):
    evaluate(open_run("t"), write_benchmark("egoschema", tmp_path, questions=3), tiny_model)
    result = runner.invoke(app, ["report", "--run", "t", "--chart", "/proc/savi-chart.png"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot write the chart to /proc/savi-chart.png") and \
        len(result.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------------
# The lmms-eval protocol: generated replies, read by each task's extractor, the strict reading beside them


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_benchmark_reads_its_replies_with_its_lmms_eval_extractor_and_the_strict_parser(name, tiny_model,
                                                                                             tmp_path, workspace):
    data = write_benchmark(name, tmp_path, questions=2)
    run = open_run("t")
    split = "test" if name == "nextqa" else None
    outcome = evaluate(run, data, tiny_model, benchmark=name, split=split, frames=2, limit=4, max_new_tokens=6)
    rows = run.eval_artifact(outcome.table, 0).read()
    assert rows and all(r.mode == "lmms-eval" and r.option_scores == [] and r.num_frames == 2 for r in rows)
    assert outcome.summary["frames"] == "lmms-eval's qwen2_5_vl path: up to 2 frames at its pixel budget"
    items = {item.question_id: item for item in read_benchmark(name, data, split).items}
    for r in rows:
        item = items[r.question_id]
        task = r.meta.get("task") if name == "tempcompass" else None
        reading = read_answer(name, r.response, r.options, yes_no=item.yes_no, task=task, labels=item.labels)
        assert (r.prediction, r.parsed_as, r.fallback) == (reading.index, reading.rule, reading.fallback)
        assert r.strict_prediction == parse_choice(r.response, r.options, item.yes_no, labels=item.labels)[0]
    scored = [r for r in rows if r.answer is not None]
    for r in scored:
        guess = 1 / len(r.options) if r.prediction is None and r.fallback == "random" else 0.0
        assert r.score == (1.0 if r.correct else guess)
        assert r.strict_correct == (r.strict_prediction == r.answer)
    if scored:
        s = outcome.summary
        assert s["protocol"] == "lmms-eval" and s["questions"] == len(scored)
        assert s["accuracy"] == pytest.approx(sum(r.score for r in scored) / len(scored), abs=1e-4)
        assert s["strict_accuracy"] == pytest.approx(sum(r.strict_correct for r in scored) / len(scored), abs=1e-4)
        assert s["unmatched"] == sum(r.prediction is None for r in scored)
        assert s["strict_unparsed"] == sum(r.strict_prediction is None for r in scored)


def test_video_mme_asks_qwen3_vl_in_the_format_and_after_the_system_turn_lmms_eval_gives_it(tiny_model, tmp_path,
                                                                                           workspace, monkeypatch):
    from stages.core.model import Policy

    data = write_benchmark("videomme", tmp_path, questions=2)
    asked, systems = [], []
    generate = Policy.generate

    def recording(self, videos, prompts, **kw):  # the real generation, its prompts noted on the way
        asked.extend(prompts)
        systems.append(kw.get("system"))
        return generate(self, videos, prompts, **kw)

    monkeypatch.setattr(Policy, "generate", recording)
    for family in ("qwen3_vl", "qwen2_5_vl"):
        evaluate(open_run(family), data, lambda: tiny_model(family), benchmark="videomme", limit=1, frames=2,
                 max_new_tokens=4)
    qwen3, qwen25 = asked
    assert qwen3.startswith("Question: ") and qwen3.endswith("\nAnswer with the option letter only.")
    assert "\nOptions:\nA. " in qwen3
    assert qwen25.startswith("Select the best answer") and qwen25.endswith(
        "Answer with the option's letter from the given choices directly.")
    # lmms-eval's Qwen3-VL path sends a system turn; Qwen2.5-VL's chat template adds the same one itself.
    assert systems == ["You are a helpful assistant.", None]


def test_the_reply_is_greedy_with_the_shipped_penalty_and_the_tasks_length_unless_told_otherwise(tiny_model, tmp_path,
                                                                                                  workspace):
    data = write_benchmark("longvideobench", tmp_path, questions=1)
    run = open_run("t")
    evaluate(run, data, tiny_model, benchmark="longvideobench", limit=1)
    decoding = run.eval_artifact("longvideobench", 0).manifest()["params"]["decoding"]
    # Greedy, with the repetition penalty Qwen2.5-VL-7B-Instruct's generation_config.json ships, which
    # lmms-eval's path leaves in force.
    assert decoding == {"max_new_tokens": 32, "temperature": 0.0, "repetition_penalty": 1.05, "sampler": "greedy"}
    evaluate(run, data, tiny_model, benchmark="longvideobench", limit=1, max_new_tokens=5, force=True)
    assert run.eval_artifact("longvideobench", 0).manifest()["params"]["decoding"]["max_new_tokens"] == 5


def test_rescore_reads_the_stored_replies_again_without_loading_the_model(tiny_model, tmp_path, workspace,
                                                                          monkeypatch):
    data = write_benchmark("mvbench", tmp_path, questions=2)
    args = ["eval", "mvbench", "--data", str(data), "--run", "t", "--round", "0", "--frames", "2",
            "--max-new-tokens", "6"]
    first = runner.invoke(app, args + ["--model", str(tiny_model())])
    assert first.exit_code == 0, first.output
    assert "mvbench round 0: lmms-eval accuracy" in first.stderr and ", strict " in first.stderr
    run = open_run("t")
    before = run.eval_artifact("mvbench", 0).read()

    # A changed parser: every reply now reads as the last option.
    from stages.benchmarks.extract import Reading
    from stages.core.model import Policy
    monkeypatch.setattr(eval_stage, "read_answer", lambda benchmark, reply, options, **kw: Reading(
        len(options) - 1, "patched", None) if kw.get("protocol", "lmms-eval") == "lmms-eval" else
        Reading(None, None, "wrong"))
    monkeypatch.setattr(Policy, "load", lambda *a, **k: pytest.fail("--rescore must not load the model"))
    again = runner.invoke(app, args + ["--rescore"])
    assert again.exit_code == 0, again.output
    after = run.eval_artifact("mvbench", 0).read()
    assert [r.response for r in after] == [r.response for r in before]
    assert all(r.prediction == len(r.options) - 1 and r.parsed_as == "patched" for r in after)
    assert all(r.strict_prediction is None for r in after)
    summary = json.loads((run.eval_artifact("mvbench", 0).path.with_name("mvbench.summary.json")).read_text())
    assert summary["accuracy"] == pytest.approx(sum(r.correct for r in after) / len(after), abs=1e-4)
    assert summary["strict_accuracy"] == 0.0 and summary["unmatched"] == 0


def test_rescore_needs_a_finished_eval_with_replies(tiny_model, tmp_path, workspace):
    data = write_benchmark("egoschema", tmp_path, questions=2)
    args = ["eval", "egoschema", "--data", str(data), "--run", "t", "--round", "0"]
    nothing = runner.invoke(app, args + ["--model", str(tiny_model()), "--rescore"])
    assert nothing.exit_code == 1
    assert nothing.stderr.startswith("Error: run t has no finished egoschema eval of round 0 to rescore")
    likelihood = runner.invoke(app, args + ["--model", str(tiny_model()), "--protocol", "likelihood", "--frames", "2"])
    assert likelihood.exit_code == 0, likelihood.output
    scored = runner.invoke(app, args + ["--rescore"])
    assert scored.exit_code == 1 and "scored options by likelihood: it holds no replies" in scored.stderr


# ---------------------------------------------------------------------------------------------------------------
# Resume, reruns and parameters


def test_an_interrupted_eval_resumes_with_nothing_lost_or_duplicated(tiny_model, tmp_path, workspace):
    data = write_benchmark("nextqa", tmp_path, questions=7)
    clean = open_run("clean")
    evaluate(clean, data, tiny_model, benchmark="nextqa", max_new_tokens=8)
    cut = open_run("cut")

    def stop_after(n):
        def progress(total):
            seen = []

            def tick():
                seen.append(1)
                if len(seen) == n:
                    raise KeyboardInterrupt
            return tick
        return progress

    source, cfg = eval_stage.BenchmarkSource("nextqa", data), eval_stage.EvalConfig(frames=4, max_new_tokens=8)
    mcfg = ModelConfig(id=str(tiny_model()), batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        eval_stage.run(cut, 0, source, cfg, mcfg, progress=stop_after(4))
    assert cut.eval_artifact("nextqa", 0).in_progress
    resumed = eval_stage.run(cut, 0, source, cfg, mcfg)
    assert resumed.result.items_done == 3 and resumed.summary["questions"] == 7
    rows = [cut.eval_artifact("nextqa", 0).read_table().drop_columns(["model"]).to_pylist(),
            clean.eval_artifact("nextqa", 0).read_table().drop_columns(["model"]).to_pylist()]
    assert rows[0] == rows[1]


def test_a_finished_eval_is_not_redone_a_larger_limit_adds_and_a_new_protocol_needs_force(tiny_model, tmp_path,
                                                                                      workspace, monkeypatch):
    data = write_benchmark("nextqa", tmp_path, questions=6)
    run = open_run("t")
    assert evaluate(run, data, tiny_model, benchmark="nextqa", limit=2, protocol="likelihood").summary["questions"] == 2
    grown = evaluate(run, data, tiny_model, benchmark="nextqa", limit=5, protocol="likelihood")
    assert grown.result.items_done == 3 and grown.summary["questions"] == 5
    with pytest.raises(SaviError, match="different parameters.*protocol"):
        evaluate(run, data, tiny_model, benchmark="nextqa", limit=5, protocol="lmms-eval")
    from stages.core.model import Policy
    monkeypatch.setattr(Policy, "load", lambda *a, **k: pytest.fail("a finished eval must not load the model"))
    assert evaluate(run, data, tiny_model, benchmark="nextqa", limit=5, protocol="likelihood").result.up_to_date


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_videos_are_counted_and_named_and_allow_missing_evaluates_the_rest(tiny_model, tmp_path, workspace):
    data = write_benchmark("egoschema", tmp_path, questions=6)
    gone = sorted((data / "videos").glob("*.mp4"))[0]
    gone.unlink()
    run = open_run("t")
    with pytest.raises(SaviError, match=rf"1 video of egoschema missing .*\({gone.stem}\).*--allow-missing"):
        evaluate(run, data, tiny_model)
    outcome = evaluate(run, data, tiny_model, allow_missing=True)
    assert outcome.summary["missing_videos"] == 1
    assert gone.stem not in {r.question_id for r in run.eval_artifact("egoschema", 0).read()}


def test_a_corrupt_video_is_an_error_row_and_is_left_out_of_the_accuracy(tiny_model, tmp_path, workspace):
    data = write_benchmark("egoschema", tmp_path, questions=6)
    answered = sorted(json.loads((data / "subset_answers.json").read_text()))
    synthetic.write_corrupt(data / "videos" / f"{answered[0]}.mp4")
    run = open_run("t")
    outcome = evaluate(run, data, tiny_model)
    rows = {r.question_id: r for r in run.eval_artifact("egoschema", 0).read()}
    bad = rows[answered[0]]
    assert bad.error and bad.prediction is None and bad.correct is None
    assert outcome.summary["video_errors"] == 1 and outcome.summary["questions"] == len(rows) - 1


def test_hidden_answers_give_a_submission_file(tiny_model, tmp_path, workspace):
    data = write_benchmark("egoschema", tmp_path, questions=6)
    run = open_run("t")
    outcome = evaluate(run, data, tiny_model, split="full", protocol="likelihood")
    assert outcome.table == "egoschema-full"
    rows = run.eval_artifact("egoschema-full", 0).read()
    assert len(rows) == 6 and outcome.summary["hidden_answers"] == 2 and outcome.summary["questions"] == 4
    submitted = json.loads(outcome.submission_path.read_text())
    assert submitted == {r.question_id: r.prediction for r in rows}


def test_cli_errors_for_bad_benchmarks_are_one_line(tmp_path, workspace, tiny_model):
    def one_error_line(result) -> str:
        assert result.exit_code == 1, (result.output, result.exception)
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("Error: ") and result.stderr.endswith("\n"), result.stderr
        return result.stderr

    base = ["--data", str(tmp_path), "--model", str(tiny_model())]
    unknown = one_error_line(runner.invoke(app, ["eval", "egoshema"] + base))
    assert unknown == ("Error: unknown benchmark 'egoshema'; known benchmarks: egoschema, mvbench, nextqa, "
                       "perceptiontest, tempcompass, longvideobench, videomme, world\n")
    missing = one_error_line(runner.invoke(app, ["eval", "nextqa"] + base))
    assert missing.startswith(f"Error: NExT-QA: found no test.csv or MC/test-00000-of-00001.parquet in {tmp_path}; ")
    (tmp_path / "questions.json").write_text('[{"q_uid": "a",}]')
    (tmp_path / "subset_answers.json").write_text("{}")
    malformed = one_error_line(runner.invoke(app, ["eval", "egoschema"] + base))
    assert "questions.json" in malformed and "line 1" in malformed
