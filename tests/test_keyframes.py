"""SeViLA's keyframes: the policy and CLIP localizers (`savi keyframes`), answering from the keyframes, and eval
with `--keyframes`, on tiny real models."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from builders import ask_about_each_video
from typer.testing import CliRunner

from savi_cli.main import app
from stages import answer
from stages import eval as eval_stage
from stages import keyframes as keyframes_stage
from stages.core import model as model_runtime
from stages.core.clip import ClipConfig, ClipScorer
from stages.core.model import ModelConfig, Policy, Video, load_video
from stages.core.prompts import load_prompts
from stages.offline.benchmark_files import write_benchmark
from stages.offline.tiny_clip import build_tiny_clip

pytestmark = pytest.mark.slow

runner = CliRunner()


@pytest.fixture(scope="module")
def clip_cfg(tmp_path_factory) -> ClipConfig:
    return ClipConfig(model=f"local-dir:{build_tiny_clip(tmp_path_factory.mktemp('clip'))}", device="cpu")


@pytest.fixture
def questions(sampled_run):
    return ask_about_each_video(sampled_run, 1, 5, "spatial", "Where is the shape at the start?")


def test_top_k_is_the_argmax_of_the_scores_kept_in_temporal_order():
    assert keyframes_stage.top_k([0.1, 0.9, 0.3, 0.8, 0.2], 2) == [1, 3]
    assert keyframes_stage.top_k([0.7, 0.1, 0.9, 0.8], 3) == [0, 2, 3]
    assert keyframes_stage.top_k([0.5, 0.5, 0.5], 2) == [0, 1]  # a tie goes to the earlier frame
    assert keyframes_stage.top_k([0.2, 0.4], 4) == [0, 1]  # fewer frames than k: all of them


def test_the_policy_localizer_reads_p_yes_from_the_models_forward_pass_batched_or_not(sampled_run, tiny_model):
    prompt = load_prompts()["keyframes"]
    samples = sampled_run.artifact("samples").read()
    videos = [load_video(sampled_run, s) for s in samples]
    asked = [f"Is the shape red? ({i})" for i in range(len(videos))]
    unbatched = Policy.load(ModelConfig(id=str(tiny_model()), batch_size=1))
    batched = Policy.load(ModelConfig(id=str(tiny_model()), batch_size=8))
    one_by_one = keyframes_stage.policy_scores(unbatched, prompt, videos, asked)
    together = keyframes_stage.policy_scores(batched, prompt, videos, asked)
    assert [len(s) for s in together] == [4, 4, 4]
    np.testing.assert_allclose(np.array(one_by_one), np.array(together), atol=1e-4)

    # By hand, for one frame: the model's next-token distribution after the prompt, "yes" against "no".
    tokenizer = unbatched.processor.tokenizer
    frame = Video.of(videos[1].frames[2:3], videos[1].total_frames, videos[1].fps, videos[1].indices[2:3])
    inputs = unbatched._inputs([frame], [prompt.render("frame", question=asked[1])])
    with torch.no_grad():
        logits = unbatched.model(**inputs).logits[0, -1].float()
    probs = torch.softmax(logits, dim=-1)
    first = {word: tokenizer.encode(word, add_special_tokens=False)[0] for word in ("yes", "Yes", "no", "No")}
    yes = sum(probs[token] for token in {first["yes"], first["Yes"]})
    no = sum(probs[token] for token in {first["no"], first["No"]})
    assert together[1][2] == pytest.approx(float(yes / (yes + no)), abs=1e-4)
    assert len({round(s, 4) for scores in together for s in scores}) > 1  # the frames do differ


def test_the_policy_localizer_writes_every_frames_score_and_its_top_k(sampled_run, tiny_model, questions):
    cfg = keyframes_stage.KeyframesConfig(localizer="policy", top_k=2)
    mcfg = ModelConfig(id=str(tiny_model()), batch_size=3)
    result = keyframes_stage.run(sampled_run, 1, cfg, mcfg, ClipConfig())
    rows = {k.question_id: k for k in sampled_run.artifact("keyframes", 1).read()}
    assert rows.keys() == {q.question_id for q in questions}
    for row in rows.values():
        assert row.localizer == "policy" and row.prompt_version == "keyframes/1" and len(row.scores) == 4
        assert all(0.0 <= s <= 1.0 for s in row.scores)
        assert row.chosen == keyframes_stage.top_k(row.scores, 2)
    assert result.counts == {"questions": 5, "frames_scored": 20, "keyframes": 10, "localizer": "policy"}
    assert keyframes_stage.run(sampled_run, 1, cfg, mcfg, ClipConfig()).up_to_date


def test_the_clip_localizer_reads_the_cached_frame_embeddings_and_embeds_no_frame(sampled_run, questions,
                                                                                   clip_cfg, monkeypatch):
    scorer = ClipScorer.load(clip_cfg)
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    cached = {v: scorer.frame_embeddings(sampled_run, s) for v, s in samples.items()}  # as `savi filter` leaves

    def no_frames(self, frames):
        raise AssertionError("the frames were embedded again")

    monkeypatch.setattr(ClipScorer, "encode_frames", no_frames)
    keyframes_stage.run(sampled_run, 1, keyframes_stage.KeyframesConfig(localizer="clip", top_k=3),
                        ModelConfig(), clip_cfg)
    for row in sampled_run.artifact("keyframes", 1).read():
        question = next(q for q in questions if q.question_id == row.question_id)
        (text,) = scorer.text_embeddings([question.text])
        np.testing.assert_allclose(row.scores, (cached[row.video_id] @ text.T).mean(axis=1), atol=1e-5)
        assert row.chosen == sorted(np.argsort(-np.array(row.scores), kind="stable")[:3].tolist())
        assert row.localizer == "clip" and row.model == scorer.fingerprint


def test_a_killed_keyframes_run_resumes_with_every_question_exactly_once(sampled_run, questions, clip_cfg,
                                                                         workspace):
    args = ["keyframes", "--run", "t", "--round", "1", "--localizer", "clip", "--clip-model", clip_cfg.model,
            "--top-k", "2"]
    # The first run writes each question to disk as it is scored, and is killed after the third.
    die_after_three = ("import os, signal\n"
                       "from stages.core import store\n"
                       "add = store.ArtifactWriter.add\n"
                       "def add_and_flush(self, record):\n"
                       "    done = add(self, record)\n"
                       "    self.flush()\n"
                       "    if self.spec.name == 'keyframes' and len(self.done_items) == 3:\n"
                       "        os.kill(os.getpid(), signal.SIGKILL)\n"
                       "    return done\n"
                       "store.ArtifactWriter.add = add_and_flush\n"
                       "from savi_cli.main import app\n"
                       "app()\n")
    env = dict(os.environ, SAVI_HOME=str(workspace))
    killed = subprocess.run([sys.executable, "-c", die_after_three, *args], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not sampled_run.artifact("keyframes", 1).complete

    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    rows = sampled_run.artifact("keyframes", 1).read()
    assert sorted(k.question_id for k in rows) == sorted(q.question_id for q in questions)
    manifest = sampled_run.artifact("keyframes", 1).manifest()
    assert manifest["rows_added"] == 2  # only the two questions the killed run had not written


def test_answers_from_keyframes_are_written_from_those_frames_and_say_so(sampled_run, tiny_model, questions,
                                                                          monkeypatch):
    mcfg = ModelConfig(id=str(tiny_model()), batch_size=4)
    keyframes_stage.run(sampled_run, 1, keyframes_stage.KeyframesConfig(top_k=2), mcfg, ClipConfig())
    received = []
    real_inputs = model_runtime.processor_inputs

    def spy(processor, videos, texts):
        received.extend(v.frames.copy() for v in videos)
        return real_inputs(processor, videos, texts)

    monkeypatch.setattr(model_runtime, "processor_inputs", spy)
    cfg = answer.AnswerConfig(max_new_tokens=6, temperatures=(0.0,), keyframes=True, temporal=("reverse",))
    result = answer.run(sampled_run, 1, cfg, mcfg)
    assert result.counts["answers"] == 10
    chosen = {k.question_id: k.chosen for k in sampled_run.artifact("keyframes", 1).read()}
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    for a in sampled_run.artifact("answers", 1).read():
        stored = load_video(sampled_run, samples[a.video_id]).frames
        keys = chosen[a.question_id]
        expected = keys if a.perturbation is None else keys[::-1]  # the negative reverses the keyframes
        assert a.frame_order == expected and a.localizer == "policy"
        assert any(f.shape == stored[expected].shape and np.array_equal(f, stored[expected]) for f in received)
    manifest = sampled_run.artifact("answers", 1).manifest()
    assert manifest["params"]["keyframes"] is True and "keyframes" in manifest["inputs"]


def test_answering_from_keyframes_before_finding_them_says_which_command_to_run(sampled_run, tiny_model,
                                                                                 questions):
    result = runner.invoke(app, ["answer", "--run", "t", "--round", "1", "--model", str(tiny_model()),
                                 "--keyframes"])
    assert result.exit_code == 1
    assert result.stderr == ("Error: round 1 of run 't' has no keyframes yet; run `savi keyframes --run t "
                             "--round 1` first\n")


@pytest.mark.parametrize("localizer", ["policy", "clip"])
def test_eval_from_keyframes_answers_from_the_top_k_frames_and_says_which(localizer, tiny_model, clip_cfg, tmp_path,
                                                                          workspace):
    data = write_benchmark("egoschema", tmp_path, questions=6)
    result = runner.invoke(app, ["eval", "egoschema", "--data", str(data), "--run", "t", "--frames", "4",
                                 "--protocol", "likelihood", "--model", str(tiny_model()), "--round", "0",
                                 "--keyframes", "2", "--localizer", localizer, "--clip-model", clip_cfg.model])
    assert result.exit_code == 0, result.output
    table = f"egoschema@keyframes2-{localizer}"
    assert result.stdout.strip().endswith(f"round=0/eval/{table}.parquet")
    from stages.core.store import open_run

    run = open_run("t")
    rows = run.eval_artifact(table, 0).read()
    assert len(rows) == 4
    assert all(r.localizer == localizer and len(r.frame_order) == 2 and r.frame_order == sorted(r.frame_order)
               and r.num_frames == 2 for r in rows)
    summary = json.loads((run.round_dir(0) / "eval" / f"{table}.summary.json").read_text())
    assert summary["frames"].endswith(f"then the 2 keyframes the {localizer} localizer finds for each question")
    assert run.eval_artifact(table, 0).manifest()["params"]["keyframes"]["localizer"] == localizer
    assert eval_stage.true_order_table(table) is None
