"""Temporal negatives: frames perturbed in time (reverse, shuffle, drop), answered by a tiny real model, and the
`temporal:<kind>` pairs `savi critique` makes of them."""

import numpy as np
import pytest
from builders import ask_about_each_video
from typer.testing import CliRunner

from savi_cli.main import app
from stages import answer, critique
from stages.core import model as model_runtime
from stages.core.model import ModelConfig, load_video
from stages.core.temporal import frame_order

KINDS = ("reverse", "shuffle", "drop")


def test_each_perturbation_is_a_fixed_function_of_its_seed_key():
    assert frame_order("reverse", 8, "0:q1") == [7, 6, 5, 4, 3, 2, 1, 0]
    for kind in KINDS:
        assert frame_order(kind, 8, "0:q1") == frame_order(kind, 8, "0:q1")
    shuffles = {tuple(frame_order("shuffle", 8, f"0:q{i}")) for i in range(20)}
    assert len(shuffles) > 10 and tuple(range(8)) not in shuffles
    assert sorted(frame_order("shuffle", 8, "0:q1")) == list(range(8))
    assert frame_order("shuffle", 2, "0:q1") == [1, 0]  # the only order of two frames that is not the true one


def test_drop_cuts_one_contiguous_quarter_at_a_seeded_place():
    starts = set()
    for i in range(30):
        kept = frame_order("drop", 8, f"0:q{i}")
        cut = sorted(set(range(8)) - set(kept))
        assert kept == sorted(kept) and len(cut) == 2 and cut[1] == cut[0] + 1
        assert 0 < cut[0] and cut[1] < 7  # a jump inside the clip, not a shorter clip
        starts.add(cut[0])
    assert starts == {1, 2, 3, 4, 5}
    assert len(frame_order("drop", 32, "0:q1")) == 24 and frame_order("drop", 1, "0:q1") == [0]


def test_a_seeded_share_of_the_questions_gets_temporal_negatives():
    chosen = [answer.takes_temporal(f"q{i}", 0.5, seed=0) for i in range(400)]
    assert 150 < sum(chosen) < 250
    assert chosen == [answer.takes_temporal(f"q{i}", 0.5, seed=0) for i in range(400)]
    assert chosen != [answer.takes_temporal(f"q{i}", 0.5, seed=1) for i in range(400)]
    assert not any(answer.takes_temporal(f"q{i}", 0.0, seed=0) for i in range(50))
    assert all(answer.takes_temporal(f"q{i}", 1.0, seed=0) for i in range(50))


@pytest.fixture
def questions(sampled_run):
    return ask_about_each_video(sampled_run, 1, 4, "temporal", "What happens first in the video?")


@pytest.mark.slow
def test_temporal_negatives_are_answered_from_the_perturbed_frames_the_model_receives(sampled_run, tiny_model,
                                                                                      questions, monkeypatch):
    received = []  # the frames of every video the processor was given, in the order given
    real_inputs = model_runtime.processor_inputs

    def spy(processor, videos, texts):
        received.extend(v.frames.copy() for v in videos)
        return real_inputs(processor, videos, texts)

    monkeypatch.setattr(model_runtime, "processor_inputs", spy)
    mcfg = ModelConfig(id=str(tiny_model()), batch_size=4, seed=3)
    cfg = answer.AnswerConfig(max_new_tokens=8, temperatures=(0.0,), temporal=KINDS)
    result = answer.run(sampled_run, 1, cfg, mcfg)

    answers = sampled_run.artifact("answers", 1).read()
    assert len(answers) == 4 * (1 + len(KINDS))
    assert result.counts["temporal"] == {"reverse": 4, "shuffle": 4, "drop": 4}
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    for a in answers:
        stored = load_video(sampled_run, samples[a.video_id]).frames
        if a.perturbation is None:
            assert a.frame_order == []
            continue
        assert a.frame_order == frame_order(a.perturbation, 4, f"3:{a.question_id}")  # recorded, seeded
        shown = stored[a.frame_order]
        assert not np.array_equal(shown, stored[: len(shown)])  # the order (or the cut) is really broken
        assert any(f.shape == shown.shape and np.array_equal(f, shown) for f in received)
    # A rerun is up to date: the same seed draws the same perturbations.
    assert answer.run(sampled_run, 1, cfg, mcfg).up_to_date


@pytest.mark.slow
def test_critique_pairs_the_true_answer_over_each_temporal_negative_without_critiquing_it(sampled_run, tiny_model,
                                                                                         questions):
    mcfg = ModelConfig(id=str(tiny_model()), batch_size=4)
    answer.run(sampled_run, 1, answer.AnswerConfig(max_new_tokens=8, temperatures=(0.0,), temporal=("reverse",)),
               mcfg)
    critique.run(sampled_run, 1, critique.CritiqueConfig(max_new_tokens=8), mcfg)

    answers = {a.answer_id: a for a in sampled_run.artifact("answers", 1).read()}
    critiqued = {c.answer_id for c in sampled_run.artifact("critiques", 1).read()}
    assert critiqued == {i for i, a in answers.items() if a.perturbation is None}
    temporal = [c for c in sampled_run.artifact("candidates", 1).read() if c.mode == "temporal:reverse"]
    assert len(temporal) == 4
    for pair in temporal:
        chosen, rejected = answers[pair.chosen_source], answers[pair.rejected_source]
        assert (chosen.perturbation, rejected.perturbation) == (None, "reverse")
        assert chosen.question_id == rejected.question_id == pair.question_id
        assert (pair.chosen, pair.rejected, pair.usable) == (chosen.text, rejected.text, True)


def test_an_unknown_perturbation_is_one_error_line(sampled_run, questions, tiny_model):
    result = CliRunner().invoke(app, ["answer", "--run", "t", "--round", "1", "--model", str(tiny_model()),
                                      "--temporal", "reverse,sideways"])
    assert result.exit_code != 0
    assert "sideways" in result.output and "reverse, shuffle, drop" in result.output
    assert not (sampled_run.round_dir(1) / "answers.parquet").exists()
