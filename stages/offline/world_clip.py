"""A tiny CLIP that knows the world: trained on the world's judge split, so `savi filter` can judge a round there.

There is no pretrained CLIP offline, and a random one scores at chance, so a round filtered by it shows nothing.
This one is trained on the clips of the world's `judge` split (never on the pool, val or test clips that a round
and its evaluation use) and saved in open_clip's `local-dir:` layout, like `tiny_clip`'s, so it is one more
`--clip-model local-dir:DIR`.

It is trained on what the filter shows it:

* images of both kinds `--clip-frames` gives: single frames (`each`) and the clip's 2 x 2 time-ordered grid
  (`grid`), tiled by `stages.core.clip.tile_grid` and preprocessed by the scorer's own transform, from frames
  decoded and stored as JPEGs by the functions `savi sample` uses;
* texts in the form a round's answers take: the world's whole replies ("The red square moves left.", "The square
  that moves up is blue."). Every reply of the judge split is a caption of every clip: the ones true of the clip
  are its positives, all others its negatives, among them the hard ones a round's pairs differ by (the same
  sentence with the direction reversed or the colour swapped).

The loss is InfoNCE from each image over those captions, one term per true caption, with the clip's other true
captions left out of its denominator. A single frame cannot tell left from right, so on frames the model learns to
split its belief between the two; only the grid can learn direction, which is what `--clip-frames grid` is for.

Then the model is loaded back through `ClipScorer` and measured on the val split: for each question, its true reply
against each wrong one, scored with frames `each` and with `grid`, per question kind. Those figures, the world's
fingerprint, the seed, the steps and the seconds are recorded in `world_training.json`. Layout of the folder:

    DIR/open_clip_config.json           {"model_cfg": ..., "preprocess_cfg": {}}: open_clip's local-dir layout
    DIR/open_clip_model.safetensors     the trained weights
    DIR/world_training.json             how it was trained, and how well it judges the val split

`seconds` is the time to decode the clips and train, measured as it ran; `loss` is the mean training loss over each
tenth of the steps. Training runs on the CPU whatever accelerator there is, in one thread (two threads on a busy
2-core machine ran 30 times slower than one), so the same world, seed and settings give the same weights. The
folder is written beside itself and renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.clip_weights import CONFIG_NAME, LOCAL_DIR
from stages.core.errors import SaviError
from stages.core.settings import ClipConfig
from stages.core.store import Progress, atomic_dir, file_sha256, ticker, write_json
from stages.offline import world as world_files

WEIGHTS_NAME = "open_clip_model.safetensors"
RECORD_NAME = "world_training.json"
RECORD_VERSION = 1

# The study's judges: open_clip's CLIP at embed 64, a 2-layer 64-wide ViT and text tower, 16 tokens of context
# (the longest reply takes 11). Images are 64 px in 16-px patches: a 112-px grid shrunk to 64 keeps each of its
# tiles over 2 x 2 patches, and 17 tokens an image make a step half as long as 8-px patches (65 tokens) did, so
# more steps fit the same time.
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# Direction in the grid is learned late. On the default world the true reply beat the reversed one on 0.84 of the
# val direction questions after 1,500 steps and on 0.95 after 2,000 (seeds 0 and 1), 2.4 CPU-minutes in all; at
# 2e-3 it was 0.86 after 2,000 steps, and at 3e-3 still chance after 1,500.
STEPS = 2000
BATCH_CLIPS = 32  # clips per step; each shows one of its frames and its grid
LEARNING_RATE = 5e-4
WARMUP = 0.05  # of the steps, before the cosine decay
LOSS_POINTS = 10  # the record keeps the mean loss of this many equal stretches of training
MAX_LOGIT_SCALE = 100.0  # CLIP's cap on the learned temperature


Claim = tuple[str, str, str]  # (shape, colour, direction): what a reply says some shape of the clip is


@dataclass(frozen=True)
class _Question:
    kind: str                   # direction or colour
    replies: tuple[str, ...]
    claims: tuple[Claim, ...]   # what each reply says
    answer: int
    reversed: int | None        # the reply with the true direction reversed (direction questions only)


@dataclass(frozen=True)
class _Clip:
    clip_id: str
    facts: frozenset[Claim]     # one per shape: a reply is true exactly when its claim is one of these
    questions: tuple[_Question, ...]


def build_world_clip(out_dir: Path, world_dir: Path, *, seed: int = 0, steps: int = STEPS,
                     batch_clips: int = BATCH_CLIPS, learning_rate: float = LEARNING_RATE,
                     progress: Progress | None = None) -> Path:
    """Train a tiny CLIP on the judge split of the world in `world_dir`, write it into `out_dir`, return the folder.

    Load it as `ClipConfig(model=f"local-dir:{folder}")`. The same world, seed and settings give the same weights:
    an earlier build of them that is intact is left as it is, and any other earlier build is replaced whole. A
    folder holding anything savi did not write is refused. `progress(total)` may return a callback called once
    per training step.

    Example: `build_world_clip("models/world-clip", "worlds/w0")`, then
    `savi filter --clip-model local-dir:models/world-clip --clip-frames grid` in a run on the world's clips.
    """
    import torch

    out_dir, world_dir = Path(out_dir), Path(world_dir)
    _check_settings(seed, steps, batch_clips, learning_rate)
    earlier = _earlier_build(out_dir)
    meta, records = _read_world(world_dir)
    params = {"seed": seed, "steps": steps, "batch_clips": batch_clips, "learning_rate": learning_rate,
              "model_cfg": MODEL_CFG}
    world = {"path": str(world_dir.resolve()), "seed": meta["seed"], "fingerprint": meta["fingerprint"]}
    if earlier is not None and earlier.get("version") == RECORD_VERSION and earlier.get("params") == params \
            and earlier.get("world", {}).get("fingerprint") == world["fingerprint"] \
            and earlier.get("weights_sha256") == file_sha256(out_dir / WEIGHTS_NAME):
        return out_dir

    judge, val = _clips(records, "judge"), _clips(records, "val")
    if not judge or not val:
        raise SaviError(f"the world in {world_dir} has {len(judge)} judge and {len(val)} val clips; a world CLIP "
                        "is trained on the judge split and measured on the val split: build a world with both")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # absolute(): "." has no name to put a temporary sibling beside.
        with atomic_dir(out_dir.absolute()) as tmp:
            started = time.perf_counter()
            frames = _stored_frames(world_dir, [clip.clip_id for clip in judge + val], meta["frames"])
            scorer = _untrained_scorer(tmp, seed)
            losses = _train(scorer, judge, frames, seed=seed, steps=steps, batch_clips=batch_clips,
                            learning_rate=learning_rate, tick=ticker(progress, steps))
            _save_weights(scorer.model, tmp / WEIGHTS_NAME)
            seconds = time.perf_counter() - started
            accuracy = _pairwise_accuracy(tmp, val, frames)
            write_json(tmp / RECORD_NAME, {
                "version": RECORD_VERSION, "world": world, "params": params, "judge_clips": len(judge),
                "seconds": round(seconds, 1), "loss": losses, "val_clips": len(val), "val_accuracy": accuracy,
                "weights_sha256": file_sha256(tmp / WEIGHTS_NAME)})
    finally:
        torch.set_num_threads(threads)
    return out_dir


def _check_settings(seed: int, steps: int, batch_clips: int, learning_rate: float) -> None:
    for what, value, least in (("seed", seed, 0), ("number of steps", steps, 1),
                               ("number of clips per step", batch_clips, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SaviError(f"a world CLIP's {what} is a whole number from {least} up, got {value!r}")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not 0 < learning_rate < 1:
        raise SaviError(f"a world CLIP's learning rate is a number between 0 and 1, got {learning_rate!r}")


def _earlier_build(out_dir: Path) -> dict[str, Any] | None:
    """The record of the build already in `out_dir`; None when there is none (or it is unreadable: it will be
    replaced). Anything savi did not write is refused, because replacing the folder deletes what is in it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SaviError(f"{out_dir} is a file; a world CLIP goes into a folder: give a folder path")
    if not out_dir.is_dir():
        return None
    ours = (CONFIG_NAME, WEIGHTS_NAME, RECORD_NAME)
    if any(p.name not in ours or not p.is_file() for p in out_dir.iterdir()):
        raise SaviError(f"{out_dir} holds files savi did not write, and savi never deletes them; give a new or "
                        "empty folder for the world CLIP")
    try:
        record = json.loads((out_dir / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and (out_dir / WEIGHTS_NAME).is_file() else None


# ---------------------------------------------------------------------------------------------------------------
# The world's clips and what their replies claim


def _read_world(world_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """world.json and the question records of an intact world (`world.read_world`)."""
    meta = world_files.read_world(world_dir)
    lines = (world_dir / world_files.QUESTIONS_FILE).read_text(encoding="utf-8").splitlines()
    return meta, [json.loads(line) for line in lines if line]


def _clips(records: list[dict[str, Any]], split: str) -> list[_Clip]:
    """The split's clips, in clip order, with their facts and questions."""
    by_clip: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if rec["split"] == split:
            by_clip.setdefault(rec["clip_id"], []).append(rec)
    return [_Clip(clip_id, frozenset((s["shape"], s["colour"], s["direction"]) for s in recs[0]["shapes"]),
                  tuple(_question(rec) for rec in recs))
            for clip_id, recs in sorted(by_clip.items())]


def _question(rec: dict[str, Any]) -> _Question:
    """A question, with what each of its replies claims. "The red square moves left." (a direction reply) and "The
    square that moves left is red." (a colour reply) make the same claim: some shape is a red square moving left."""
    target = rec["shapes"][rec["target"]]
    options = rec["options"]
    if rec["kind"] == "direction":
        claims = tuple((target["shape"], target["colour"], option) for option in options)
        true = options[rec["answer"]]
        opposite = next(d for axis in world_files.AXES.values() if true in axis for d in axis if d != true)
        reversed_reply = options.index(opposite)
    else:
        claims = tuple((target["shape"], option, target["direction"]) for option in options)
        reversed_reply = None
    return _Question(rec["kind"], tuple(rec["replies"]), claims, int(rec["answer"]), reversed_reply)


def _stored_frames(world_dir: Path, clip_ids: list[str], count: int) -> dict[str, np.ndarray]:
    """Each clip's frames as the filter reads them: decoded by `savi sample`'s reader (all `count` frames of the
    clip, as a run sampling at least that many gets), stored as its JPEGs and read back."""
    from stages.core.video import VideoError, load_frames, read_video, save_frames

    frames = {}
    with tempfile.TemporaryDirectory(prefix="savi-world-clip-") as tmp:
        for clip_id in clip_ids:
            path = world_dir / world_files.VIDEOS_DIR / f"{clip_id}.mp4"
            try:
                video = read_video(path, frames=count)
            except VideoError as e:
                raise SaviError(f"clip {path} of the world cannot be read ({e}); build the world again with "
                                f"`savi world {world_dir}`") from None
            save_frames(video.frames, Path(tmp) / clip_id)
            frames[clip_id] = load_frames(Path(tmp) / clip_id)
    return frames


# ---------------------------------------------------------------------------------------------------------------
# Training


def _untrained_scorer(folder: Path, seed: int) -> Any:
    """The seeded untrained model, saved into `folder` and loaded back as the filter loads it: training then uses
    the scorer's own image transform and tokenizer, so it sees exactly what scoring will."""
    import open_clip
    import torch

    from stages.core.clip import ClipScorer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CLIP(**MODEL_CFG)
    write_json(folder / CONFIG_NAME, {"model_cfg": MODEL_CFG, "preprocess_cfg": {}})
    _save_weights(model, folder / WEIGHTS_NAME)
    return ClipScorer.load(ClipConfig(model=f"{LOCAL_DIR}{folder}", device="cpu"))


def _save_weights(model: Any, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def _train(scorer: Any, clips: list[_Clip], frames: dict[str, np.ndarray], *, seed: int, steps: int,
           batch_clips: int, learning_rate: float, tick: Callable[[], None]) -> list[float]:
    """Train the scorer's model in place; returns the mean loss of each of `LOSS_POINTS` stretches of steps."""
    import torch
    from PIL import Image

    from stages.core.clip import tile_grid

    model = scorer.model.train()

    def pixels(image: np.ndarray) -> Any:
        return scorer.preprocess(Image.fromarray(image))

    # Every image a clip can show, preprocessed once (preprocessing each step's images would add a third to its
    # time): its T frames, then its grid. Filled in place: (N, T + 1, 3, 64, 64) float32 is 440 MB for 1,000 clips.
    grid = len(frames[clips[0].clip_id])  # the grid's index, after the frames
    images = torch.empty((len(clips), grid + 1, *pixels(frames[clips[0].clip_id][0]).shape))
    for n, clip in enumerate(clips):
        for k, frame in enumerate(frames[clip.clip_id]):
            images[n, k] = pixels(frame)
        images[n, grid] = pixels(tile_grid(frames[clip.clip_id]))
    claims = {reply: claim for clip in clips for q in clip.questions
              for reply, claim in zip(q.replies, q.claims, strict=True)}
    captions = sorted(claims)
    tokens = scorer.tokenizer(captions, context_length=scorer.context_length)
    truth = torch.tensor([[claims[caption] in clip.facts for caption in captions] for clip in clips])

    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0, fused=True)
    warmup = max(1, round(WARMUP * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))))
    losses = []
    for _ in range(steps):
        picked = rng.choice(len(clips), size=min(batch_clips, len(clips)), replace=False)
        shown = rng.integers(grid, size=len(picked))  # one frame of each clip, beside its grid
        batch = torch.cat([images[picked, shown], images[picked, grid]])
        image_features = torch.nn.functional.normalize(model.encode_image(batch), dim=-1)
        text_features = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        loss = _contrastive_loss(logits, truth[picked].repeat(2, 1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
        losses.append(float(loss.detach()))
        tick()
    model.eval()
    stretches = np.array_split(np.array(losses), min(LOSS_POINTS, steps))
    return [round(float(stretch.mean()), 4) for stretch in stretches]


def _contrastive_loss(logits: Any, positives: Any) -> Any:
    """InfoNCE over captions with several true ones per image: for each (image, true caption), minus the log of
    that caption's probability against the image's false captions only, averaged. Leaving the other true captions
    out of the denominator keeps two true sentences about one clip from competing."""
    import torch

    negatives = logits.masked_fill(positives, float("-inf")).logsumexp(dim=1, keepdim=True)
    # -log(e^l / (e^l + e^negatives)) = softplus(negatives - l)
    return torch.nn.functional.softplus(negatives - logits)[positives].mean()


# ---------------------------------------------------------------------------------------------------------------
# How well it judges


def _pairwise_accuracy(folder: Path, clips: list[_Clip], frames: dict[str, np.ndarray]) -> dict[str, Any]:
    """How often the CLIP in `folder`, loaded and scoring as `savi filter` does, scores a question's true reply
    above a wrong one, per way of showing the frames (`each`, `grid`) and per question kind. `direction_reversed`
    counts only the wrong reply that reverses the true direction: the pairs a judge blind to order cannot tell
    apart. A tie counts half."""
    from stages.core.clip import ClipScorer, tile_grid

    accuracy: dict[str, Any] = {}
    for view in ("each", "grid"):
        scorer = ClipScorer.load(ClipConfig(model=f"{LOCAL_DIR}{folder}", frames=view, device="cpu"))
        won: dict[str, list[float]] = {"direction": [], "direction_reversed": [], "colour": []}
        for clip in clips:
            shown = frames[clip.clip_id]
            # What ClipScorer.video_embeddings gives for these frames, without a run's cache around it.
            video = scorer.encode_frames(tile_grid(shown)[None] if view == "grid" else shown)
            for q in clip.questions:
                scores = [scorer.score(video, text) for text in scorer.text_embeddings(list(q.replies))]
                for wrong, score in enumerate(scores):
                    if wrong == q.answer:
                        continue
                    outcome = 1.0 if scores[q.answer] > score else 0.5 if scores[q.answer] == score else 0.0
                    won[q.kind].append(outcome)
                    if wrong == q.reversed:
                        won["direction_reversed"].append(outcome)
        accuracy[view] = {kind: round(float(np.mean(outcomes)), 4) if outcomes else None
                          for kind, outcomes in won.items()}
        accuracy[view]["pairs"] = {kind: len(outcomes) for kind, outcomes in won.items()}
    return accuracy
