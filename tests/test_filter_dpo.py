"""`savi filter`, `savi export pairs` and `savi dpo` on tiny real models (VLM and CLIP), on CPU."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from builders import count_video_encodings, write_pairs
from safetensors.torch import load_file
from typer.testing import CliRunner

from savi_cli.main import app
from stages import dpo
from stages import filter as filter_stage
from stages.core.clip import ClipConfig
from stages.core.config import resolve
from stages.core.errors import SaviError
from stages.core.model import ModelConfig
from stages.core.records import Candidate, Pair
from stages.core.settings import TrainConfig
from stages.core.store import ArtifactWriter
from stages.export import export_pairs
from stages.offline.tiny_clip import build_tiny_clip

pytestmark = pytest.mark.slow

FILTER = filter_stage.FilterConfig()


def candidate(pair_id="p", chosen="The red square moves to the right.", rejected="A blue ball rolls upward.",
              usable=True, note=None, video_id="v", mode="critique", **finished):
    return Candidate(pair_id, video_id, f"q-{pair_id}", "Where does the square go?", chosen, rejected, "revision",
                     "a", "c", mode, None, None, usable, note, **finished)


# ---------------------------------------------------------------------------------------------------------------
# Filter rules on hand-made pairs


def test_text_rules_give_each_drop_its_reason():
    assert filter_stage.text_rule(candidate(usable=False, note="no_errors"), FILTER) == "no_errors"
    assert filter_stage.text_rule(candidate(usable=False, note="revision_unchanged"), FILTER) == "revision_unchanged"
    assert filter_stage.text_rule(candidate(chosen="  "), FILTER) == "empty_text"
    assert filter_stage.text_rule(candidate(chosen="The square moves right.", rejected="The square moves right!"),
                                  FILTER) == "near_duplicate"
    assert filter_stage.text_rule(candidate(chosen="Right. " * 20, rejected="It moves up."), FILTER) == \
        "length_ratio"
    assert filter_stage.text_rule(candidate(), FILTER) is None


def test_a_pair_with_a_text_cut_off_at_the_token_limit_is_dropped():
    # DPO would end the cut text with an end-of-turn token and teach the policy to stop mid-sentence.
    assert filter_stage.text_rule(candidate(chosen_finished=False, rejected_finished=True), FILTER) == "cut_off"
    assert filter_stage.text_rule(candidate(chosen_finished=True, rejected_finished=False), FILTER) == "cut_off"
    assert filter_stage.text_rule(candidate(chosen_finished=True, rejected_finished=True), FILTER) is None
    keep = filter_stage.FilterConfig(drop_cut_off=False)
    assert filter_stage.text_rule(candidate(chosen_finished=False), keep) is None


def test_clip_swaps_judge_pairs_but_never_overturns_a_critiques_revision():
    # Judge mode (VideoSAVi v1): the rejected answer is swapped in when CLIP finds it better grounded.
    kept = filter_stage.grounding_rule(candidate(mode="judge"), 0.30, 0.25, FILTER)
    assert (kept.kept, kept.swapped, kept.chosen_clip, kept.rejected_clip) == (True, False, 0.30, 0.25)
    swapped = filter_stage.grounding_rule(candidate(mode="judge"), 0.20, 0.31, FILTER)
    assert swapped.swapped and swapped.chosen == "A blue ball rolls upward."
    assert (swapped.chosen_clip, swapped.rejected_clip) == (0.31, 0.20)
    within_margin = filter_stage.grounding_rule(candidate(mode="judge"), 0.20, 0.21,
                                                filter_stage.FilterConfig(swap_margin=0.05))
    assert not within_margin.swapped
    # Critique mode: the revision stays chosen, whatever CLIP's small preference, and the pair is kept.
    revision = filter_stage.grounding_rule(candidate(), 0.20, 0.31, FILTER)
    assert (revision.swapped, revision.kept, revision.chosen) == (False, True, "The red square moves to the right.")
    assert filter_stage.grounding_rule(candidate(), 0.20, 0.31, filter_stage.FilterConfig(swap="on")).swapped
    assert not filter_stage.grounding_rule(candidate(mode="judge"), 0.2, 0.3,
                                           filter_stage.FilterConfig(swap="off")).swapped


def test_a_clip_margin_drops_only_when_it_is_set():
    assert filter_stage.grounding_rule(candidate(), 0.20, 0.31, FILTER).drop_reason is None
    strict = filter_stage.FilterConfig(min_clip_margin=0.02)
    assert filter_stage.grounding_rule(candidate(), 0.30, 0.29, strict).drop_reason == "low_clip_margin"
    assert filter_stage.grounding_rule(candidate(), 0.30, 0.25, strict).drop_reason is None
    judged = filter_stage.FilterConfig(swap_margin=0.05, min_clip_margin=0.0)
    assert filter_stage.grounding_rule(candidate(mode="judge"), 0.20, 0.21, judged).drop_reason == "low_clip_margin"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return ClipConfig(model=f"local-dir:{build_tiny_clip(tmp_path_factory.mktemp('clip'))}")


def write_candidates(run, round, candidates):
    writer = ArtifactWriter(run.artifact("candidates", round), params={}, inputs={})
    for c in candidates:
        writer.add(c)
    writer.finish()


def test_filter_stage_scores_with_clip_and_keeps_every_drop_with_its_reason(sampled_run, tiny_clip):
    videos = [s.video_id for s in sampled_run.artifact("samples").read()]
    cands = [candidate(f"p{i}", chosen=f"The red square moves right, step {i}.", video_id=videos[i % 3])
             for i in range(6)]
    cands += [candidate("dup", chosen="It moves up.", rejected="It moves up!", video_id=videos[0]),
              candidate("clean", usable=False, note="no_errors", video_id=videos[1])]
    write_candidates(sampled_run, 1, cands)
    result = filter_stage.run(sampled_run, 1, FILTER, tiny_clip)
    rows = {p.pair_id: p for p in sampled_run.artifact("pairs", 1).read()}
    assert len(rows) == 8
    assert (rows["dup"].kept, rows["dup"].drop_reason, rows["dup"].chosen_clip) == (False, "near_duplicate", None)
    assert rows["clean"].drop_reason == "no_errors"
    scored = [rows[f"p{i}"] for i in range(6)]
    # Critique-mode pairs: scored, and the revision stays chosen whatever the scores.
    assert all(p.kept and -1 <= p.chosen_clip <= 1 and -1 <= p.rejected_clip <= 1 and not p.swapped
               for p in scored)
    assert [p.chosen for p in scored] == [f"The red square moves right, step {i}." for i in range(6)]
    assert result.counts["kept"] == 6 and result.counts["dropped_near_duplicate"] == 1
    assert result.counts["dropped_no_errors"] == 1
    assert result.counts["swapped"] == sum(p.swapped for p in scored)
    # Frame embeddings were cached in the run, once per video.
    assert len(list((sampled_run.path / "clip").glob("*/*.npy"))) == 3
    assert filter_stage.run(sampled_run, 1, FILTER, tiny_clip).up_to_date


def test_temporal_pairs_skip_clip_and_drop_when_the_perturbed_answer_is_the_same(sampled_run, tiny_clip,
                                                                                 tiny_model):
    videos = [s.video_id for s in sampled_run.artifact("samples").read()]
    write_candidates(sampled_run, 1, [
        candidate("moved", chosen="The square moves to the right.", rejected="The square moves to the left.",
                  mode="temporal:reverse", video_id=videos[0]),
        candidate("same", chosen="The square moves to the right.", rejected="The square moves to the right!",
                  mode="temporal:shuffle", video_id=videos[1]),
        candidate("cut", chosen="It moves right.", rejected="It moves right, then it stops in the middle.",
                  mode="temporal:drop", video_id=videos[2], chosen_finished=True, rejected_finished=False),
        candidate("critiqued", video_id=videos[2])])
    # Even with swapping on for every pair, CLIP never scores or swaps a temporal pair: it cannot see order.
    result = filter_stage.run(sampled_run, 1, filter_stage.FilterConfig(swap="on", swap_margin=-1.0), tiny_clip)
    rows = {p.pair_id: p for p in sampled_run.artifact("pairs", 1).read()}
    moved = rows["moved"]
    assert (moved.kept, moved.swapped, moved.chosen_clip, moved.chosen) == \
        (True, False, None, "The square moves to the right.")
    assert (rows["same"].kept, rows["same"].drop_reason) == (False, "temporal_same")
    assert rows["cut"].drop_reason == "cut_off"  # the text rules hold for temporal pairs too
    assert rows["critiqued"].chosen_clip is not None and rows["critiqued"].swapped  # a margin of -1 always swaps
    assert result.counts["kept_by_source"] == {"critique": 1, "temporal:reverse": 1}
    assert result.counts["temporal_unscored"] == 3 and result.counts["dropped_temporal_same"] == 1
    notes = sampled_run.artifact("pairs", 1).manifest()["notes"]
    assert "order of the frames" in notes["temporal"]

    trained = dpo.run(sampled_run, 1, train_cfg(max_steps=1), ModelConfig(id=str(tiny_model())))
    assert trained.counts["pairs"] == 2 and trained.counts["steps"] == 1


def test_export_writes_trl_and_jsonl(sampled_run, tiny_clip, tmp_path):
    from datasets import load_from_disk

    videos = [s.video_id for s in sampled_run.artifact("samples").read()]
    write_candidates(sampled_run, 1, [candidate(f"p{i}", video_id=videos[i]) for i in range(3)])
    filter_stage.run(sampled_run, 1, FILTER, tiny_clip)
    dataset = load_from_disk(str(export_pairs(sampled_run, 1, "trl")))
    assert len(dataset) == 3 and {"prompt", "chosen", "rejected", "video"} <= set(dataset.column_names)
    assert dataset[0]["prompt"][0]["content"][0]["type"] == "video"
    assert len(dataset[0]["video"]) == 4 and all(os.path.isfile(f) for f in dataset[0]["video"])
    lines = export_pairs(sampled_run, 1, "jsonl", tmp_path / "p.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["chosen"][0]["content"][0]["text"]


# ---------------------------------------------------------------------------------------------------------------
# DPO


def train_cfg(**kw):
    return dpo.TrainConfig(**{"learning_rate": 2e-3, "batch_size": 2, "grad_accum": 1, "lora_r": 8,
                              "lora_dropout": 0.0, "gradient_checkpointing": False, "four_bit": False, **kw})


def lora_and_base(model):
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n and ".default." in n}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    return lora, base


def test_a_few_steps_change_the_lora_weights_and_leave_the_base_alone(sampled_run, tiny_model):
    write_pairs(sampled_run, 1)
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    trainer = dpo.build_trainer(sampled_run, samples, sampled_run.artifact("pairs", 1).read(),
                                train_cfg(max_steps=3), ModelConfig(id=str(tiny_model())), None,
                                sampled_run.path / "ckpt", None)
    lora_before, base_before = lora_and_base(trainer.model)
    assert lora_before and not any("visual" in n for n in lora_before)  # LoRA on the language model only
    trainer.train()
    lora_after, base_after = lora_and_base(trainer.model)
    assert any(not torch.equal(lora_before[n], lora_after[n]) for n in lora_before)
    assert all(torch.equal(base_before[n], base_after[n]) for n in base_before)


def test_reward_accuracy_rises_above_chance_and_the_log_is_queryable(sampled_run, tiny_model):
    write_pairs(sampled_run, 1)
    result = dpo.run(sampled_run, 1, train_cfg(max_steps=12), ModelConfig(id=str(tiny_model())))
    assert result.counts["final_reward_accuracy"] > 0.5 and result.counts["final_reward_margin"] > 0
    assert (sampled_run.round_dir(1) / "adapter" / "adapter_config.json").is_file()
    assert not (sampled_run.round_dir(1) / "adapter" / "ref").exists()  # only the trained adapter is saved
    out = CliRunner().invoke(app, ["query", "select step, loss from train_log order by step", "-f", "jsonl"])
    steps = [json.loads(line) for line in out.stdout.splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 13))
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # a new adapter starts as the reference
    assert steps[-1]["loss"] < steps[0]["loss"]
    again = dpo.run(sampled_run, 1, train_cfg(max_steps=12), ModelConfig(id=str(tiny_model())))
    assert again.up_to_date


def test_the_video_really_conditions_the_loss(sampled_run, tiny_model, monkeypatch):
    write_pairs(sampled_run, 1, n=2)
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    trainer = dpo.build_trainer(sampled_run, samples, sampled_run.artifact("pairs", 1).read(),
                                train_cfg(max_steps=4), ModelConfig(id=str(tiny_model())), None,
                                sampled_run.path / "ckpt", None)
    trainer.train()  # a trained adapter: with the initial one, policy = reference and the loss is log 2 anyway
    trainer.model.eval()
    rows = list(trainer.train_dataset)
    collator = trainer.data_collator

    def loss():
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, collator([dict(r) for r in rows])).item()

    with_video = loss()
    real_load = dpo.load_video

    def blank(run, sample):
        video = real_load(run, sample)
        video.frames = video.frames * 0
        return video

    monkeypatch.setattr(dpo, "load_video", blank)
    assert loss() != pytest.approx(with_video, abs=1e-5)


def test_rpo_loss_is_dpo_plus_alpha_times_the_chosen_replies_nll(sampled_run, tiny_model):
    from stages.core.model import reply_batch

    write_pairs(sampled_run, 1, n=2)
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    pairs = sampled_run.artifact("pairs", 1).read()

    def trainer_for(**kw):
        return dpo.build_trainer(sampled_run, samples, pairs, train_cfg(max_steps=1, **kw),
                                 ModelConfig(id=str(tiny_model()), device="cpu"), None, sampled_run.path / "ckpt",
                                 None)

    plain, rpo = trainer_for(), trainer_for(loss="rpo", rpo_alpha=0.5)
    batch = plain.data_collator([dict(r) for r in plain.train_dataset])
    with torch.no_grad():
        dpo_loss = plain.compute_loss(plain.model, dict(batch)).item()
        rpo_loss = rpo.compute_loss(rpo.model, dict(batch)).item()
        # The chosen replies' mean token NLL, computed here from the same tensors the collator built.
        chosen = reply_batch(rpo.processing_class, [dpo.load_video(sampled_run, samples[p.video_id]) for p in pairs],
                             [dpo.preference_row(p)["prompt"] for p in pairs], [p.chosen for p in pairs])
        mask = chosen.pop("completion_mask")[:, 1:].bool()
        logits = rpo.model(**chosen).logits[:, :-1].float()
        taken = torch.log_softmax(logits, dim=-1).gather(-1, chosen["input_ids"][:, 1:, None])[..., 0]
        nll = -taken[mask].mean().item()
    assert dpo_loss == pytest.approx(math.log(2), abs=1e-4)  # an untrained adapter: policy = reference
    assert rpo_loss == pytest.approx(dpo_loss + 0.5 * nll, abs=2e-3)


def test_clip_weighted_loss_adds_the_grounding_margin(sampled_run, tiny_model):
    write_pairs(sampled_run, 1)
    result = dpo.run(sampled_run, 1, train_cfg(max_steps=2, loss="clip-weighted", clip_gamma=10.0),
                     ModelConfig(id=str(tiny_model())))
    first = sampled_run.artifact("train_log", 1).read()[0]
    # Step 1: policy = reference, so Δ = 0 and L = -log σ(-γ·gap), with gap = 0.31 - 0.22.
    assert first.loss == pytest.approx(-math.log(1 / (1 + math.exp(10.0 * 0.09))), abs=1e-3)
    assert result.counts["steps"] == 2


def test_rounds_chain_each_from_the_previous_policy(sampled_run, tiny_model):
    mcfg = ModelConfig(id=str(tiny_model()))
    write_pairs(sampled_run, 1)
    with pytest.raises(SaviError, match="round 2 starts from the policy trained in round 1"):
        write_pairs(sampled_run, 2)
        dpo.run(sampled_run, 2, train_cfg(max_steps=2), mcfg)
    dpo.run(sampled_run, 1, train_cfg(max_steps=3), mcfg)
    round1 = load_file(sampled_run.round_dir(1) / "adapter" / "adapter_model.safetensors")

    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    trainer = dpo.build_trainer(sampled_run, samples, sampled_run.artifact("pairs", 2).read(), train_cfg(max_steps=2),
                                mcfg, sampled_run.round_dir(1) / "adapter", sampled_run.path / "ckpt", None)
    # The trainable adapter and the frozen reference both start as round 1's adapter.
    assert set(trainer.model.peft_config) == {"default", "ref"}
    ref = {n: p for n, p in trainer.model.named_parameters() if ".ref." in n}
    assert ref and all(not p.requires_grad for p in ref.values())
    some = next(k for k in round1 if "lora_B" in k)
    default = dict(trainer.model.named_parameters())
    live = next(v for n, v in default.items() if n.endswith(some.replace(".weight", ".default.weight")))
    assert torch.allclose(live.detach().float(), round1[some].float(), atol=1e-6)

    result = dpo.run(sampled_run, 2, train_cfg(max_steps=2), mcfg)
    round2 = load_file(sampled_run.round_dir(2) / "adapter" / "adapter_model.safetensors")
    assert result.counts["steps"] == 2 and set(round2) == set(round1)
    assert any(not torch.equal(round1[k], round2[k]) for k in round1)


def test_dpo_refuses_clearly(sampled_run, tiny_model):
    mcfg = ModelConfig(id=str(tiny_model()))
    with pytest.raises(SaviError, match=r"no pairs yet; run `savi filter --run t --round 1` first"):
        dpo.run(sampled_run, 1, train_cfg(), mcfg)
    writer = ArtifactWriter(sampled_run.artifact("pairs", 1), params={}, inputs={})
    writer.add(Pair("p", "v", "q", "?", "a", "b", None, None, False, "critique", False, "no_errors"))
    writer.finish()
    with pytest.raises(SaviError, match="kept no pairs to train on"):
        dpo.run(sampled_run, 1, train_cfg(), mcfg)
    (sampled_run.path / "savi.toml").write_text('[model]\nid = "x"\n[dpo]\nlearning_rat = 1\n')
    with pytest.raises(SaviError, match="unknown setting learning_rat in \\[dpo\\]"):
        resolve(sampled_run, TrainConfig, {})


def test_savi_toml_sets_training_defaults_and_flags_override(sampled_run):
    (sampled_run.path / "savi.toml").write_text("[dpo]\nlearning_rate = 1e-5\nlora_r = 32\n")
    cfg = resolve(sampled_run, TrainConfig, {"lora_r": 8, "beta": None})
    assert (cfg.learning_rate, cfg.lora_r, cfg.beta) == (1e-5, 8, 0.1)


def test_4bit_qlora_trains_on_cpu(sampled_run, tiny_model, caplog):
    import bitsandbytes as bnb

    write_pairs(sampled_run, 1, n=2)
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    trainer = dpo.build_trainer(sampled_run, samples, sampled_run.artifact("pairs", 1).read(),
                                train_cfg(max_steps=2),
                                ModelConfig(id=str(tiny_model()), load_in_4bit=True, device="cpu"),
                                None, sampled_run.path / "ckpt", None)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    assert all(p.device.type == "cpu" for p in trainer.model.parameters())
    assert "4-bit training without CUDA runs on bitsandbytes' CPU kernels" in caplog.text
    lora_before, _ = lora_and_base(trainer.model)
    trainer.train()
    lora_after, _ = lora_and_base(trainer.model)
    assert any(not torch.equal(lora_before[n], lora_after[n]) for n in lora_before)


@pytest.mark.parametrize("killed_at, levels", [(4, []), (8, []), (4, ["--levels", "1,0.5,0"])],
                         ids=["midway", "at-the-last-checkpoint", "midway-with-the-temporal-level"])
def test_a_training_killed_as_it_saves_a_checkpoint_resumes_there_and_logs_every_step_once(
        sampled_run, tiny_model, workspace, killed_at, levels):
    write_pairs(sampled_run, 1, n=6)  # 3 steps an epoch, so the 8 steps end inside the third epoch
    # The first training kills itself at the worst moment, whatever the speed of this machine: a checkpoint (of 8
    # steps) is on disk, and the steps it covers are not yet flushed to the train log. At checkpoint 8 the training
    # is over, and the resumed one must train and log nothing more.
    die_at_checkpoint = ("import os, signal\n"
                         "from stages import dpo\n"
                         "save = dpo.TrainLogCallback.on_save\n"
                         "def on_save(self, args, state, control, **kwargs):\n"
                         f"    if state.global_step == {killed_at}:\n"
                         "        os.kill(os.getpid(), signal.SIGKILL)\n"
                         "    return save(self, args, state, control, **kwargs)\n"
                         "dpo.TrainLogCallback.on_save = on_save\n"
                         "from savi_cli.main import app\n"
                         "app()\n")
    dpo_args = ["dpo", "--run", "t", "--round", "1", "--model", str(tiny_model()), "--no-4bit", "--max-steps", "8",
                "--save-steps", "2", "--grad-accum", "1", "--batch-size", "2", "--lr", "2e-3", *levels]
    env = dict(os.environ, SAVI_HOME=str(workspace))
    killed = subprocess.run([sys.executable, "-c", die_at_checkpoint, *dpo_args], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoints = sampled_run.round_dir(1) / ".checkpoints"
    assert (checkpoints / f"checkpoint-{killed_at}" / "trainer_state.json").is_file()
    assert not sampled_run.artifact("train_log", 1).complete

    done = subprocess.run([sys.executable, "-c", "from savi_cli.main import app; app()", *dpo_args], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = sampled_run.artifact("train_log", 1).manifest()
    assert manifest["notes"]["resumed_from_checkpoint"].endswith(f"checkpoint-{killed_at}")  # not from scratch
    logged = sampled_run.artifact("train_log", 1).read()
    assert [s.step for s in logged] == list(range(1, 9))
    assert all((s.temporal_margin is not None) == bool(levels) for s in logged)
    adapter = sampled_run.round_dir(1) / "adapter"
    assert not checkpoints.exists() and (adapter / "adapter_config.json").is_file()
    trained = load_file(adapter / "adapter_model.safetensors")  # LoRA's B starts at zero: the steps are in it
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in trained.items())


def test_filter_knows_its_clip_by_weights_not_by_path(sampled_run, tmp_path):
    import shutil

    videos = [s.video_id for s in sampled_run.artifact("samples").read()]
    write_candidates(sampled_run, 1, [candidate(f"p{i}", video_id=videos[i]) for i in range(3)])
    folder = build_tiny_clip(tmp_path / "clip-a")
    filter_stage.run(sampled_run, 1, FILTER, ClipConfig(model=f"local-dir:{folder}"))
    moved = shutil.copytree(folder, tmp_path / "elsewhere")
    assert filter_stage.run(sampled_run, 1, FILTER, ClipConfig(model=f"local-dir:{moved}")).up_to_date
    other = build_tiny_clip(tmp_path / "clip-b", seed=1)
    with pytest.raises(SaviError, match="different parameters"):
        filter_stage.run(sampled_run, 1, FILTER, ClipConfig(model=f"local-dir:{other}"))


def vision_tower(model):
    return next(m for name, m in model.named_modules() if name.endswith(("model.visual", "model.vision_tower")))


def one_training_step_in_the_vision_tower(trainer):
    """Train one step; return whether the vision tower's outputs were part of the autograd graph (policy and
    reference passes alike), and the bytes autograd saved for backward while inside it."""
    tower = vision_tower(trainer.model)
    inside, outputs_need_grad, saved = [False], [], [0]

    def enter(module, args):
        inside[0] = True

    def leave(module, args, output):
        inside[0] = False
        tensor = output if isinstance(output, torch.Tensor) else output[0]
        outputs_need_grad.append(tensor.requires_grad)

    def pack(tensor):
        if inside[0]:
            saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    hooks = [tower.register_forward_pre_hook(enter), tower.register_forward_hook(leave)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        trainer.train()
    for hook in hooks:
        hook.remove()
    return outputs_need_grad, saved[0]


def test_the_default_dpo_step_keeps_the_frozen_vision_tower_out_of_autograd(sampled_run, tiny_model):
    # The default path: 4-bit base, gradient checkpointing, LoRA. trl's enable_input_require_grads(), called again
    # by Trainer.train() and by every reference pass, hooks the vision tower's patch embedding too, which used to
    # put the frozen tower's activations into every step's autograd graph.
    write_pairs(sampled_run, 1, n=2)
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    defaults = dpo.TrainConfig()
    assert defaults.four_bit and defaults.gradient_checkpointing
    trainer = dpo.build_trainer(sampled_run, samples, sampled_run.artifact("pairs", 1).read(),
                                dpo.TrainConfig(max_steps=1, batch_size=2, grad_accum=1),
                                ModelConfig(id=str(tiny_model()), load_in_4bit=True, device="cpu"), None,
                                sampled_run.path / "ckpt", None)
    lora_before, _ = lora_and_base(trainer.model)
    needs_grad, saved = one_training_step_in_the_vision_tower(trainer)
    assert needs_grad == [False]  # one pass for the step's videos, shared by the policy and the reference
    assert saved == 0
    lora_after, _ = lora_and_base(trainer.model)
    assert any(not torch.equal(lora_before[n], lora_after[n]) for n in lora_before)


def test_lora_weights_train_in_float32_on_a_4bit_base(sampled_run, tiny_model):
    # trl casts them to bf16, where most of an update at lr 5e-6 rounds away.
    write_pairs(sampled_run, 1, n=2)
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    trainer = dpo.build_trainer(sampled_run, samples, sampled_run.artifact("pairs", 1).read(),
                                train_cfg(max_steps=1, four_bit=True),
                                ModelConfig(id=str(tiny_model()), load_in_4bit=True, device="cpu"), None,
                                sampled_run.path / "ckpt", None)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)


def test_lora_dropout_applies_to_the_trained_adapter_only(sampled_run, tiny_model):
    write_pairs(sampled_run, 1, n=2)
    write_pairs(sampled_run, 2, n=2)
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    mcfg = ModelConfig(id=str(tiny_model()))
    dpo.run(sampled_run, 1, train_cfg(max_steps=1, lora_dropout=0.3), mcfg)
    # Round 2: a trained adapter and trl's frozen "ref" copy of it, which must score the same on every pass.
    trainer = dpo.build_trainer(sampled_run, samples, sampled_run.artifact("pairs", 2).read(),
                                train_cfg(max_steps=1, lora_dropout=0.3), mcfg, sampled_run.round_dir(1) / "adapter",
                                sampled_run.path / "ckpt", None)
    dropouts = {name: m.p for name, m in trainer.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    trained = {n: p for n, p in dropouts.items() if n.endswith("lora_dropout.default")}
    assert trained and set(trained.values()) == {0.3}
    assert all(p == 0.0 for n, p in dropouts.items() if n not in trained)
    assert any(n.endswith("lora_dropout.ref") for n in dropouts)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "llava_onevision"])
def test_dpo_scores_each_reply_as_the_model_writes_it_after_the_prompt_it_was_sampled_from(
        family, sampled_run, tiny_model):
    from stages.core.prompts import load_prompts

    user_turn = load_prompts()["answer"].render("answer", question="Which way does the shape move?")
    write_pairs(sampled_run, 1, n=2, prompt=user_turn)
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    trainer = dpo.build_trainer(sampled_run, samples, sampled_run.artifact("pairs", 1).read(),
                                train_cfg(max_steps=1), ModelConfig(id=str(tiny_model(family))), None,
                                sampled_run.path / "ckpt", None)
    batch = trainer.data_collator([dict(r) for r in trainer.train_dataset])
    tokenizer = trainer.processing_class.tokenizer
    row = batch["input_ids"][0][batch["attention_mask"][0] == 1]
    in_prompt = row[batch["completion_mask"][0][batch["attention_mask"][0] == 1] == 0]
    completion = row[batch["completion_mask"][0][batch["attention_mask"][0] == 1] == 1]
    # The prompt is the answer template the reply was sampled with, not the bare question.
    assert user_turn.strip() in tokenizer.decode(in_prompt)
    # The completion is what follows the generation prompt: the reply and the end of the turn, exactly as a
    # generation would be (LLaVA-OneVision's template writes its assistant turns differently from that prompt).
    generation_prompt = trainer.processing_class.apply_chat_template(
        trainer.train_dataset[0]["prompt"], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(in_prompt).endswith(generation_prompt[-20:])
    assert tokenizer.decode(completion).startswith("It moves from left to right.<|im_end|>")
    trainer.train()


@pytest.mark.parametrize("family,attention", [("qwen2_5_vl", "sdpa"), ("qwen2_vl", "sdpa"), ("qwen3_vl", "sdpa"),
                                              ("llava_onevision", "sdpa"), ("qwen2_5_vl", "eager")])
def test_encoding_each_video_once_and_sharing_each_prompt_give_the_stock_steps_loss_and_gradients(
        family, attention, sampled_run, tiny_model):
    write_pairs(sampled_run, 1)  # 4 pairs over the 3 videos: pairs 0 and 3 share one
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    trainer = dpo.build_trainer(sampled_run, samples, sampled_run.artifact("pairs", 1).read(),
                                train_cfg(max_steps=1), ModelConfig(id=str(tiny_model(family))), None,
                                sampled_run.path / "ckpt", None)
    # The attention's kind decides the mask's form: sdpa takes booleans, eager adds a float mask.
    trainer.model.get_base_model().set_attn_implementation(attention)
    batch = trainer._prepare_inputs(trainer.data_collator([dict(r) for r in trainer.train_dataset]))
    encoded = count_video_encodings(trainer)  # how many videos each pass of the vision tower encoded
    widths = []  # the rows and tokens of each pass of the language model
    core = trainer.model.get_base_model().model
    real_language_model = core.language_model.forward

    def measured(*args, **kwargs):
        widths.append(tuple(kwargs["inputs_embeds"].shape[:2]))
        return real_language_model(*args, **kwargs)

    core.language_model.forward = measured

    def step(encode_once, shared_prompts=False):
        trainer.encode_once, trainer.shared_prompts = encode_once, shared_prompts
        trainer.model.zero_grad()
        encoded.clear(), widths.clear()
        loss = trainer._compute_loss(trainer.model, dict(batch), return_outputs=False)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, list(encoded), list(widths)

    stock_loss, stock_grads, stock_passes, stock_widths = step(False)
    once_loss, once_grads, once_passes, _ = step(True)
    shared_loss, shared_grads, shared_passes, shared_widths = step(True, shared_prompts=True)
    assert stock_passes == [8, 8]  # the policy pass and the reference pass, each over all 8 rows
    assert once_passes == shared_passes == [3]  # one pass over the 3 distinct videos
    # Shared: one row per pair, which holds the prompt once and both replies (and one repeated token).
    prompt = int((batch["completion_mask"][0] == 0).logical_and(batch["attention_mask"][0] == 1).sum())
    stock_rows, stock_width = stock_widths[0]
    assert shared_widths[0][0] == stock_rows // 2
    assert shared_widths[0][1] < stock_width + prompt
    assert stock_grads and once_grads.keys() == stock_grads.keys() == shared_grads.keys()
    assert all("lora_" in name for name in stock_grads)
    assert any(g.abs().sum() > 0 for g in stock_grads.values())
    for loss, grads in ((once_loss, once_grads), (shared_loss, shared_grads)):
        torch.testing.assert_close(loss, stock_loss, rtol=1e-5, atol=1e-6)
        assert_same_gradients(grads, stock_grads)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_a_full_tune_keeps_the_stock_step_whose_projector_differs_from_the_references_and_shares_its_prompts(
        family, sampled_run, tiny_model):
    write_pairs(sampled_run, 1)  # 4 pairs over the 3 videos
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    full = dpo.build_trainer(sampled_run, samples, sampled_run.artifact("pairs", 1).read(),
                             train_cfg(max_steps=1, tune="full"), ModelConfig(id=str(tiny_model(family))), None,
                             sampled_run.path / "ckpt", None)
    assert not full.encode_once and full.shared_prompts
    batch = full._prepare_inputs(full.data_collator([dict(r) for r in full.train_dataset]))
    encoded = count_video_encodings(full)

    def step(shared_prompts):
        full.shared_prompts = shared_prompts
        full.model.zero_grad()
        encoded.clear()
        loss = full._compute_loss(full.model, dict(batch), return_outputs=False)
        loss.backward()
        # The host LoRA of the embeddings is frozen (`freeze_the_host_lora`) and never in the optimizer; trl's
        # reference pass marks it trainable again, so its gradient exists from the second step on, unused.
        grads = {n: p.grad.clone() for n, p in full.model.named_parameters()
                 if p.grad is not None and "lora_embedding_" not in n}
        return loss.detach(), grads, list(encoded)

    rows_loss, rows_grads, rows_passes = step(False)
    shared_loss, shared_grads, shared_passes = step(True)
    assert rows_passes == [8, 8] and shared_passes == [4, 4]  # each pass encodes a pair's video once, not twice
    torch.testing.assert_close(shared_loss, rows_loss, rtol=1e-5, atol=1e-6)
    assert rows_grads.keys() == shared_grads.keys() and any(g.abs().sum() > 0 for g in rows_grads.values())
    assert_same_gradients(shared_grads, rows_grads)


def assert_same_gradients(got, expected):
    """Each gradient equal to float32 rounding: within 1e-5 of its tensor's largest entry (the same sums in
    another order and shape differ by a few 1e-7 of it, and by more on some CPUs' kernels than on others), and
    1e-4 of itself."""
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()) + 1e-12,
                                   msg=lambda detail, name=name: f"{name}: {detail}")


# ---------------------------------------------------------------------------------------------------------------
# --tune full


def effective_weights(mcfg, adapter=None):
    """The weights the model answers with: the base, or the base with an adapter merged in (a full tune's
    copies replacing the modules they were made from)."""
    from stages.core.model import Policy

    model = Policy.load(mcfg, adapter).model
    if adapter is not None:
        model = model.merge_and_unload()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "llava_onevision"])
def test_a_full_tune_trains_the_language_models_layers_and_projector_whole_and_never_the_vision_encoder(
        sampled_run, tiny_model, family):
    mcfg = ModelConfig(id=str(tiny_model(family)), device="cpu")
    write_pairs(sampled_run, 1)
    dpo.run(sampled_run, 1, train_cfg(max_steps=3, tune="full", gradient_checkpointing=True), mcfg)
    before, after = effective_weights(mcfg), effective_weights(mcfg, sampled_run.round_dir(1) / "adapter")
    assert before.keys() == after.keys()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    # Qwen3-VL's deepstack mergers project intermediate encoder layers into the language model: projectors too.
    projector = ("multi_modal_projector", "visual.merger", "visual.deepstack_merger_list")
    encoder = [n for n in before if "visual" in n or "vision_tower" in n]
    layers = [n for n in before if ".layers." in n and "language_model" in n]
    assert layers and all(n in changed for n in layers if n.endswith("q_proj.weight"))  # every layer, not a LoRA
    assert any(part in n for n in changed for part in projector)
    assert not any(n in changed for n in encoder if not any(part in n for part in projector))


def test_a_full_tune_keeps_the_vision_encoder_out_of_autograd_and_chains_rounds(sampled_run, tiny_model):
    mcfg = ModelConfig(id=str(tiny_model()), device="cpu")
    write_pairs(sampled_run, 1, n=2)
    samples = {s.video_id: s for s in sampled_run.artifact("samples").read()}
    trainer = dpo.build_trainer(sampled_run, samples, sampled_run.artifact("pairs", 1).read(),
                                train_cfg(max_steps=1, tune="full", gradient_checkpointing=True), mcfg, None,
                                sampled_run.path / "ckpt", None)
    blocks = [m for n, m in trainer.model.named_modules() if n.endswith("visual.blocks.0")]
    seen = []
    blocks[0].register_forward_hook(lambda module, args, output: seen.append(output.requires_grad))
    trainer.train()
    assert seen and not any(seen)  # the encoder's blocks never enter the graph; the projector after them trains

    dpo.run(sampled_run, 1, train_cfg(max_steps=2, tune="full"), mcfg)
    write_pairs(sampled_run, 2)
    dpo.run(sampled_run, 2, train_cfg(max_steps=2, tune="full"), mcfg)
    log = sampled_run.artifact("train_log", 2).read()
    # Round 2's reference is round 1's policy, full copies and all: the first step starts level with it.
    assert log[0].loss == pytest.approx(math.log(2), abs=1e-3)


def test_a_full_tune_in_4bit_is_refused_with_the_fix(sampled_run, tiny_model):
    write_pairs(sampled_run, 1)
    with pytest.raises(SaviError, match="add --no-4bit"):
        dpo.run(sampled_run, 1, train_cfg(tune="full", four_bit=True), ModelConfig(id=str(tiny_model())))
