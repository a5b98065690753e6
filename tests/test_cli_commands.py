"""Commands and flags that no other test runs, each through the CLI on tiny random models (and the default DPO path
through `stages.dpo.run`). The tiny model writes babble: what is checked is the structure of what each command
wrote, never what the babble says."""

import json

import numpy as np
import pytest
from builders import write_pairs
from typer.testing import CliRunner

from savi_cli.main import app
from stages.core.clip import ClipConfig, ClipScorer
from stages.core.parsing import similarity
from stages.core.records import Candidate
from stages.core.store import ArtifactWriter, open_run
from stages.offline.benchmark_files import write_benchmark

pytestmark = pytest.mark.slow


def savi(*args, input=None):
    """Run savi; it must succeed. Returns the result."""
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def one_path(result):
    """What a stage command prints on stdout: one path, that of what it wrote."""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# savi tiny-clip, then savi filter with every flag


def candidate(pair_id, video_id, chosen, rejected, **kw):
    return Candidate(pair_id, video_id, f"q-{pair_id}", "Where does the square go?", chosen, rejected, "revision",
                     f"a-{pair_id}", f"c-{pair_id}", "critique", None, None, True, None, **kw)


def test_tiny_clip_builds_a_clip_that_savi_filter_scores_with_under_every_flag(sampled_run, workspace, tmp_path):
    folder = tmp_path / "tiny-clip"
    built = savi("tiny-clip", folder, "--seed", "3")
    assert one_path(built) == str(folder)
    assert (folder / "open_clip_config.json").is_file()

    videos = [s.video_id for s in sampled_run.artifact("samples").read()]
    right, up = "The red square moves steadily to the right.", "A blue ball rolls slowly upward."
    near = ("The red square moves to the right edge of the frame.", "The red square moves to the right side of frame.")
    assert 0.9 <= similarity(*near) < 0.95  # dropped at the default 0.9, kept at 0.95
    long = "The red square moves to the right and then stops there."
    assert 3 < len(long) / len("It goes right.") <= 5  # dropped at the default ratio 3, kept at 5
    cands = [candidate("ab", videos[0], right, up), candidate("ba", videos[0], up, right),  # the same pair, both ways
             candidate("cut", videos[1], right, up, chosen_finished=False, rejected_finished=True),
             candidate("near", videos[1], *near), candidate("long", videos[2], long, "It goes right."),
             candidate("dup", videos[2], right, right + " ")]
    writer = ArtifactWriter(sampled_run.artifact("candidates", 1), params={}, inputs={})
    for c in cands:
        writer.add(c)
    writer.finish()

    result = savi("filter", "--run", "t", "--round", "1", "--clip-model", f"local-dir:{folder}", "--swap", "on",
                  "--swap-margin", "0.0", "--min-clip-margin", "0.01", "--near-duplicate", "0.95",
                  "--max-length-ratio", "5", "--keep-cut-off", "--clip-pooling", "topk", "--clip-topk", "2",
                  "--text-pooling", "max", "--device", "cpu", "--clip-batch-size", "3")
    assert one_path(result) == str(workspace / "t" / "round=1" / "pairs.parquet")
    params = sampled_run.artifact("pairs", 1).manifest()["params"]
    assert {k: params[k] for k in ("swap", "swap_margin", "min_clip_margin", "near_duplicate", "max_length_ratio",
                                   "drop_cut_off", "clip_pooling", "clip_topk", "clip_text_pooling")} == {
        "swap": "on", "swap_margin": 0.0, "min_clip_margin": 0.01, "near_duplicate": 0.95, "max_length_ratio": 5.0,
        "drop_cut_off": False, "clip_pooling": "topk", "clip_topk": 2, "clip_text_pooling": "max"}

    pairs = {p.pair_id: p for p in sampled_run.artifact("pairs", 1).read()}
    assert set(pairs) == {c.pair_id for c in cands}
    assert (pairs["dup"].drop_reason, pairs["dup"].chosen_clip) == ("near_duplicate", None)  # 0.95 still applies
    scored = {k: p for k, p in pairs.items() if k != "dup"}
    assert all(p.chosen_clip is not None for p in scored.values())  # cut off, near and long all reached CLIP
    # --swap on swaps critique pairs too: of the same pair written both ways, exactly one was swapped, and both
    # then prefer the same text.
    assert pairs["ab"].swapped != pairs["ba"].swapped
    assert pairs["ab"].chosen == pairs["ba"].chosen
    assert pairs["ab"].chosen_clip == pytest.approx(pairs["ba"].chosen_clip, abs=1e-5)
    by_id = {c.pair_id: c for c in cands}
    for pair_id, p in scored.items():
        original = by_id[pair_id]
        assert (p.chosen, p.rejected) == ((original.rejected, original.chosen) if p.swapped else
                                          (original.chosen, original.rejected))
        assert p.chosen_clip >= p.rejected_clip  # a swap margin of 0: whichever is more grounded is chosen
        assert p.kept == (p.chosen_clip - p.rejected_clip >= 0.01)
        assert p.drop_reason == (None if p.kept else "low_clip_margin")

    # The scores are those of this CLIP pooled as the flags say (top 2 frames, the best sentence), not the defaults.
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    flagged = ClipScorer.load(ClipConfig(model=f"local-dir:{folder}", pooling="topk", topk=2, text_pooling="max",
                                         device="cpu"))
    default = ClipScorer.load(ClipConfig(model=f"local-dir:{folder}", device="cpu"))
    differs = False
    for p in scored.values():
        expected = flagged.score_texts(sampled_run, samples[p.video_id], [p.chosen, p.rejected])
        np.testing.assert_allclose([p.chosen_clip, p.rejected_clip], expected, atol=1e-5)
        pooled_by_default = default.score_texts(sampled_run, samples[p.video_id], [p.chosen, p.rejected])
        differs |= not np.allclose(expected, pooled_by_default, atol=1e-5)
    assert differs


# ---------------------------------------------------------------------------------------------------------------
# savi ask --kinds, savi answer --candidates, savi critique --mode judge


def test_ask_with_kinds_what_why_how_asks_each_kind_of_each_video(tiny_model, sampled_run):
    result = savi("ask", "--run", "t", "--round", "1", "--model", tiny_model(), "--kinds", "what,why,how",
                  "--per-video", "3", "--max-new-tokens", "24", "--device", "cpu")
    assert one_path(result).endswith("round=1/questions.parquet")
    art = sampled_run.artifact("questions", 1)
    manifest = art.manifest()
    assert manifest["params"]["kinds"] == ["what", "why", "how"] and manifest["params"]["per_video"] == 3
    questions = art.read()
    assert {q.kind for q in questions} <= {"what", "why", "how"}
    assert all(sum(q.video_id == v for q in questions) <= 3 for v in {q.video_id for q in questions})
    # Every (video, kind) was asked: each gave questions, or counts as one parse failure.
    asked = {(q.video_id, q.kind) for q in questions}
    assert manifest["counts"]["parse_failures"] == 3 * 3 - len(asked)


def test_three_candidates_per_question_then_judge_mode_pairs_the_best_with_the_worst(tiny_model, sampled_run,
                                                                                     monkeypatch):
    import hashlib

    from stages import critique

    # The random model's verdicts are babble that seldom parses. Each one that does not is read as a stand-in
    # verdict, "Score: k/5" with k drawn from its text, so that the pairing runs on every question.
    real_parse_judge = critique.parse_judge
    stand_ins = []

    def parse_judge(text):
        parsed = real_parse_judge(text)
        if parsed.overall is not None:
            return parsed
        stand_ins.append(text)
        return real_parse_judge(f"Score: {1 + hashlib.sha256(text.encode()).digest()[0] % 5}/5")

    monkeypatch.setattr(critique, "parse_judge", parse_judge)
    model = tiny_model()
    savi("ask", "--run", "t", "--round", "1", "--model", model, "--per-video", "2", "--max-new-tokens", "24",
         "--temperature", "0")
    questions = sampled_run.artifact("questions", 1).read()
    if not questions:
        pytest.fail("the tiny model's babble parsed as no question at all; pick another --seed")
    answered = savi("answer", "--run", "t", "--round", "1", "--candidates", "3", "--max-new-tokens", "16")
    assert one_path(answered).endswith("round=1/answers.parquet")
    answers = sampled_run.artifact("answers", 1).read()
    assert len(answers) == 3 * len(questions)
    for q in questions:
        mine = sorted((a.sample_index, a.temperature) for a in answers if a.question_id == q.question_id)
        assert mine == [(0, 0.3), (1, 0.5), (2, 0.7)]  # candidate k at the k-th of the default temperatures

    judged = savi("critique", "--run", "t", "--round", "1", "--mode", "judge", "--max-new-tokens", "48")
    assert one_path(judged).endswith("round=1/critiques.parquet")
    critiques = sampled_run.artifact("critiques", 1).read()
    assert sorted(c.answer_id for c in critiques) == sorted(a.answer_id for a in answers)
    assert all(c.mode == "judge" and (c.score is None or 1 <= c.score <= 5) for c in critiques)
    assert sampled_run.artifact("critiques", 1).manifest()["params"]["mode"] == "judge"

    assert all(c.score is not None for c in critiques) and stand_ins
    # A candidate pair for each question (it has three scored answers): its best-scored answer against its worst,
    # unusable when they tie.
    score = {c.answer_id: c.score for c in critiques}
    text = {a.answer_id: a.text for a in answers}
    own = {q.question_id: [a.answer_id for a in answers if a.question_id == q.question_id] for q in questions}
    scored = {q: [score[a] for a in ids if score[a] is not None] for q, ids in own.items()}
    candidates = sampled_run.artifact("candidates", 1)
    assert candidates.complete
    pairs = candidates.read()
    assert sorted(p.question_id for p in pairs) == sorted(q.question_id for q in questions)
    for pair in pairs:
        best, worst = max(scored[pair.question_id]), min(scored[pair.question_id])
        assert pair.mode == "judge" and pair.chosen_source != pair.rejected_source
        assert {pair.chosen_source, pair.rejected_source} <= set(own[pair.question_id])
        assert (pair.chosen, pair.rejected) == (text[pair.chosen_source], text[pair.rejected_source])
        assert (score[pair.chosen_source], score[pair.rejected_source]) == (best, worst)
        assert (pair.chosen_score, pair.rejected_score) == (best, worst)
        assert (pair.usable, pair.note) == ((True, None) if best > worst else (False, "tie"))


# ---------------------------------------------------------------------------------------------------------------
# savi sample --fps


def test_sample_with_fps_2_takes_frames_at_that_rate(clip_folder, workspace):
    # The clips are 16 frames at 8 fps: 2 s, so 2 fps gives 4 frames, at the middle of each half second.
    result = savi("sample", clip_folder, "--run", "rate", "--fps", "2", "--frames", "32")
    assert one_path(result) == str(workspace / "rate" / "samples.parquet")
    run = open_run("rate")
    assert run.artifact("samples").manifest()["params"]["fps"] == 2.0
    rows = run.artifact("samples").read()
    assert len(rows) == 3
    for row in rows:
        assert row.status == "ok" and row.sampling == "fps"
        assert row.timestamps_s == pytest.approx([0.25, 0.75, 1.25, 1.75], abs=0.07)
        assert len(row.frame_indices) == 4
        assert sorted(p.name for p in (run.path / row.frames_dir).iterdir()) == [f"{k:04d}.jpg" for k in range(4)]


# ---------------------------------------------------------------------------------------------------------------
# savi dpo and savi eval on every family


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "llava_onevision"])
def test_dpo_then_eval_of_the_trained_round(family, tiny_model, sampled_run, workspace, tmp_path):
    from stages.core.prompts import load_prompts

    model = tiny_model(family)
    user_turn = load_prompts()["answer"].render("answer", question="Which way does the shape move?")
    write_pairs(sampled_run, 1, n=2, prompt=user_turn)
    trained = savi("dpo", "--run", "t", "--round", "1", "--model", model, "--no-4bit", "--max-steps", "1",
                   "--batch-size", "2", "--grad-accum", "1", "--lora-r", "4", "--lr", "1e-3")
    adapter = workspace / "t" / "round=1" / "adapter"
    assert one_path(trained) == str(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(model)
    assert (adapter / "adapter_model.safetensors").is_file()
    log = sampled_run.artifact("train_log", 1).read()
    assert [s.step for s in log] == [1] and np.isfinite(log[0].loss)
    assert not (workspace / "t" / "round=1" / ".checkpoints").exists()

    data = write_benchmark("egoschema", tmp_path / "bench", questions=2)
    evaluated = savi("eval", "egoschema", "--data", data, "--run", "t", "--frames", "2",
                     "--protocol", "likelihood")  # the latest round: 1
    table = workspace / "t" / "round=1" / "eval" / "egoschema.parquet"
    assert one_path(evaluated) == str(table)
    assert evaluated.stderr.startswith("egoschema round 1: likelihood accuracy ")
    rows = sampled_run.eval_artifact("egoschema", 1).read()
    assert len(rows) == 2 and all(r.error is None and r.num_frames == 2 for r in rows)
    assert all(r.model.endswith("+round=1") for r in rows)
    for r in rows:
        assert len(r.option_scores) == len(r.options) == 5 and r.prediction == int(np.argmax(r.option_scores))
        assert r.correct == (r.prediction == r.answer)
    summary = json.loads(table.with_name("egoschema.summary.json").read_text())
    assert summary["questions"] == 2 and summary["correct"] == sum(r.correct for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# The default DPO path


def test_the_default_dpo_settings_train_a_4bit_base_with_gradient_checkpointing(sampled_run, tiny_model):
    from stages import dpo
    from stages.core.model import ModelConfig
    from stages.core.settings import TrainConfig

    write_pairs(sampled_run, 1, n=2)
    cfg = TrainConfig(max_steps=1, batch_size=2, grad_accum=1)
    assert cfg.four_bit and cfg.gradient_checkpointing  # the defaults under test
    result = dpo.run(sampled_run, 1, cfg, ModelConfig(id=str(tiny_model()), device="cpu"))
    adapter = sampled_run.round_dir(1) / "adapter"
    assert result.path == adapter and result.counts["steps"] == 1
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    log = sampled_run.artifact("train_log", 1)
    assert log.complete and [s.step for s in log.read()] == [1] and np.isfinite(log.read()[0].loss)
    params = log.manifest()["params"]
    assert params["four_bit"] is True and params["gradient_checkpointing"] is True
