"""VistaDPO's levels in `savi dpo` (`--levels instance,temporal,perceptive`), on tiny real models: the terms, their
gradients, their hand computation from plain forward passes, and the one encoding of each video they share."""

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from builders import count_video_encodings, write_pairs
from trl.trainer.utils import use_adapter
from typer.testing import CliRunner

from savi_cli.main import app
from stages import dpo
from stages.core.clip import ClipConfig
from stages.core.model import ModelConfig
from stages.core.records import Keyframes
from stages.core.store import ArtifactWriter
from stages.core.temporal import frame_order
from stages.offline.tiny_clip import build_tiny_clip

pytestmark = pytest.mark.slow

KEYFRAMES = [0, 1]  # of each question's 4 sampled frames: Qwen's first temporal patch (frames 0 and 1)


def train_cfg(**kw):
    return dpo.TrainConfig(**{"learning_rate": 2e-3, "batch_size": 2, "grad_accum": 1, "lora_r": 8,
                              "lora_dropout": 0.0, "gradient_checkpointing": False, "four_bit": False, **kw})


def hierarchical_trainer(run, tiny_model, levels, family="qwen2_5_vl"):
    write_pairs(run, 1)  # 4 pairs over the 3 videos
    pairs = run.artifact("pairs", 1).read()
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    trainer = dpo.build_trainer(run, samples, pairs, train_cfg(max_steps=1, levels=levels),
                                ModelConfig(id=str(tiny_model(family))), None, run.path / "ckpt", None,
                                keyframes={p.question_id: KEYFRAMES for p in pairs})
    batch = trainer._prepare_inputs(trainer.data_collator([dict(r) for r in trainer.train_dataset]))
    return trainer, batch


def lora_step(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, dict(batch), return_outputs=False)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_the_levels_add_a_group_of_chosen_rows_each_with_its_view_of_the_video(sampled_run, tiny_model):
    trainer, batch = hierarchical_trainer(sampled_run, tiny_model, (1.0, 0.5, 0.5))
    assert batch["input_ids"].shape[0] == 4 * 4  # chosen, rejected, temporal, perceptive: 4 rows each
    views = batch["row_views"]
    assert views[:8] == [None] * 8
    pair_ids = [r["pair_id"] for r in trainer.train_dataset]
    assert views[8:12] == [("perturb", "reverse", f"0:{p}") for p in pair_ids]
    assert views[12:] == [("mask", (0, 1), 4)] * 4
    # The level rows repeat the chosen reply, whose tokens are the first group's.
    assert torch.equal(batch["input_ids"][8:12], batch["input_ids"][:4])
    assert torch.equal(batch["input_ids"][12:], batch["input_ids"][:4])


def test_with_the_other_levels_at_zero_the_loss_is_todays_dpo_loss(sampled_run, tiny_model):
    trainer, batch = hierarchical_trainer(sampled_run, tiny_model, (1.0, 1.0, 1.0))
    trainer.levels = {"instance": 1.0, "temporal": 0.0, "perceptive": 0.0}
    instance_only = trainer._compute_loss(trainer.model, dict(batch), return_outputs=False)
    # Today's step: trl's own loss, on the chosen and rejected rows alone.
    plain = {k: (v[:8] if k in ("input_ids", "attention_mask", "completion_mask", "video_rows") else v)
             for k, v in batch.items() if k != "row_views"}
    patches = batch["video_grid_thw"][:8].prod(-1).sum()
    plain["pixel_values_videos"] = batch["pixel_values_videos"][:patches]
    plain["video_grid_thw"] = batch["video_grid_thw"][:8]
    plain["second_per_grid_ts"] = batch["second_per_grid_ts"][:8]
    trainer.levels = {"instance": 1.0}
    todays = trainer._compute_loss(trainer.model, plain, return_outputs=False)
    torch.testing.assert_close(instance_only, todays, rtol=1e-5, atol=1e-6)


def test_each_level_equals_its_hand_computation_from_plain_forward_passes(sampled_run, tiny_model):
    trainer, batch = hierarchical_trainer(sampled_run, tiny_model, (1.0, 0.7, 0.3))
    with torch.no_grad():  # a policy that differs from its reference: LoRA's B away from zero
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name and ".default." in name:
                param.normal_(0, 0.05)
    loss = trainer._compute_loss(trainer.model, dict(batch), return_outputs=False)

    # By hand: the chosen rows under the true video, under its temporal patches reversed, and with the patch of
    # frames 0-1 zeroed; the features are the vision tower's of the true pixels, reordered or zeroed here.
    model = trainer.model
    core = model.get_base_model().model
    rows_of = ("input_ids", "attention_mask", "completion_mask", "mm_token_type_ids")
    chosen = {k: batch[k][:4] for k in rows_of}
    grid = batch["video_grid_thw"][:4]
    pixels = batch["pixel_values_videos"][: grid.prod(-1).sum()]
    with torch.no_grad():
        true = core.get_video_features(pixels, grid, return_dict=True).pooler_output

    def by_groups(features, change):
        groups = features.view(2, -1, features.shape[-1])  # 4 frames: 2 temporal patches
        return change(groups).reshape(features.shape)

    pair_ids = [r["pair_id"] for r in trainer.train_dataset]
    reversed_ = tuple(by_groups(f, lambda g, p=p: g[frame_order("reverse", 2, f"0:{p}")])
                      for f, p in zip(true, pair_ids))
    masked = tuple(by_groups(f, lambda g: torch.cat([torch.zeros_like(g[:1]), g[1:]])) for f in true)

    def reply_logps(features, reference, rows=chosen):
        outputs = core.get_video_features(pixels, grid, return_dict=True)
        outputs.pooler_output = features
        labels = rows["input_ids"].masked_fill(rows["completion_mask"] == 0, -100)
        with use_adapter(model, None) if reference else nullcontext(), torch.no_grad():
            logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"],
                           mm_token_type_ids=rows["mm_token_type_ids"], video_grid_thw=grid,
                           second_per_grid_ts=batch["second_per_grid_ts"][:4],
                           mm_encoder_outputs={"video": outputs}).logits
        logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
        return (logps * (labels[:, 1:] != -100)).sum(-1)

    rejected = {k: batch[k][4:8] for k in rows_of}
    beta = trainer.beta
    reward = {"chosen": beta * (reply_logps(true, False) - reply_logps(true, True)),
              "rejected": beta * (reply_logps(true, False, rejected) - reply_logps(true, True, rejected)),
              "temporal": beta * (reply_logps(reversed_, False) - reply_logps(reversed_, True)),
              "perceptive": beta * (reply_logps(masked, False) - reply_logps(masked, True))}
    terms = {level: -F.logsigmoid(reward["chosen"] - reward[against]).mean()
             for level, against in (("instance", "rejected"), ("temporal", "temporal"),
                                    ("perceptive", "perceptive"))}
    by_hand = terms["instance"] + 0.7 * terms["temporal"] + 0.3 * terms["perceptive"]
    torch.testing.assert_close(loss.detach(), by_hand, rtol=1e-4, atol=1e-5)
    assert all(t > 0 for t in terms.values()) and len({round(float(t), 6) for t in terms.values()}) == 3
    logged = trainer._metrics["train"]
    torch.testing.assert_close(torch.tensor(logged["temporal/margins"][-1]),
                               (reward["chosen"] - reward["temporal"]).mean(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("levels", [(0.0, 1.0, 0.0), (0.0, 0.0, 1.0)], ids=["temporal", "perceptive"])
def test_every_level_alone_gives_the_lora_weights_a_gradient(levels, sampled_run, tiny_model):
    # VistaDPO's released loss detaches the policy's log-probabilities in these terms: they trained nothing.
    trainer, batch = hierarchical_trainer(sampled_run, tiny_model, levels)
    _, grads = lora_step(trainer, batch)
    assert grads and all("lora_" in name for name in grads)
    assert max(g.abs().max().item() for g in grads.values()) > 0


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "llava_onevision"])
def test_all_three_levels_encode_each_video_once_per_step(family, sampled_run, tiny_model):
    trainer, batch = hierarchical_trainer(sampled_run, tiny_model, (1.0, 0.5, 0.5), family)
    encoded = count_video_encodings(trainer)
    loss, grads = lora_step(trainer, batch)
    assert encoded == [3]  # 16 rows, 3 distinct videos, one pass for the policy and the reference alike
    assert torch.isfinite(loss) and grads
    assert set(trainer._metrics["train"]) >= {"rewards/margins", "temporal/margins", "perceptive/margins",
                                              "temporal/accuracies", "perceptive/accuracies"}


def test_a_round_without_keyframes_masks_the_frames_clip_finds(sampled_run, tmp_path):
    write_pairs(sampled_run, 1)
    pairs = sampled_run.artifact("pairs", 1).read()
    clip = ClipConfig(model=f"local-dir:{build_tiny_clip(tmp_path / 'clip')}", device="cpu")
    by_clip = dpo.masked_keyframes(sampled_run, 1, pairs, clip)
    assert by_clip.keys() == {p.question_id for p in pairs}
    assert all(frames == sorted(frames) and len(frames) == 4 for frames in by_clip.values())  # k 4 of 4 frames
    writer = ArtifactWriter(sampled_run.artifact("keyframes", 1), params={}, inputs={})
    for p in pairs:
        writer.add(Keyframes(p.question_id, p.video_id, "policy", [0.9, 0.1, 0.2, 0.8], [0, 3], "keyframes/1", "m"))
    writer.finish()
    assert dpo.masked_keyframes(sampled_run, 1, pairs, None) == {p.question_id: [0, 3] for p in pairs}


def test_the_levels_train_logged_per_step_and_shown_in_the_counts(sampled_run, tiny_model):
    write_pairs(sampled_run, 1)
    writer = ArtifactWriter(sampled_run.artifact("keyframes", 1), params={}, inputs={})
    for p in sampled_run.artifact("pairs", 1).read():
        writer.add(Keyframes(p.question_id, p.video_id, "policy", [0.9, 0.1, 0.2, 0.8], [0, 3], "keyframes/1", "m"))
    writer.finish()
    result = dpo.run(sampled_run, 1, train_cfg(max_steps=2, levels=(1.0, 0.5, 0.5)), ModelConfig(id=str(tiny_model())))
    steps = sampled_run.artifact("train_log", 1).read()
    assert [s.step for s in steps] == [1, 2]
    assert all(s.temporal_margin is not None and s.perceptive_accuracy is not None for s in steps)
    assert {"final_temporal_margin", "final_perceptive_accuracy"} <= set(result.counts)
    assert sampled_run.artifact("train_log", 1).manifest()["params"]["levels"] == [1.0, 0.5, 0.5]


@pytest.mark.parametrize("args, message", [
    (["--levels", "1,0.5"], "--levels takes 3 weights (instance, temporal, perceptive)"),
    (["--levels", "1,0.5,0.5", "--loss", "rpo"], "the temporal and perceptive levels train the sigmoid loss"),
])
def test_levels_it_cannot_train_are_one_error_line(args, message, sampled_run, tiny_model):
    write_pairs(sampled_run, 1)
    result = CliRunner().invoke(app, ["dpo", "--run", "t", "--round", "1", "--model", str(tiny_model()), *args])
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: {message}")
    assert result.stderr.count("\n") == 1
