"""A tiny model that knows the world imperfectly: the base a round can be shown to improve.

A random model scores at chance on everything, so a round that starts from one can show nothing. This builder
makes a tiny model of a real family (`build_tiny_model`: the real configuration files, widths of 64 and 128) and
teaches it the world of `savi world` until it answers the validation questions better than chance but far from
perfectly: by default it stops at the first evaluation that reaches 55% (chance is 25%).

Example: savi world worlds/w0 && savi tiny-model models/w0 --world worlds/w0

- The tokenizer also learns the world's sentences (the answer turn of each question, and every reply), each word
  one token, so a training sequence is about 125 tokens instead of 220.
- The vision path starts from the `fan_in` init (see `tiny_model.VISION_INITS`): from transformers' std 0.02, a
  model trained on the default world was still at chance after 1,300 steps.
- Training is a full fine-tune (AdamW, lr 1e-3, 32 examples a step) on the train split. An example is a clip's
  frames, the question's answer turn (the prompt `savi eval world` scores) and the true reply; the loss is the
  cross-entropy of the reply's tokens alone, on the very tensors the DPO collator builds (`reply_batch`).
- Every `eval_every` steps it scores the val split exactly as `savi eval world --split val --frames F` does (the
  same decoded frames, prompts, whole-reply likelihoods, order and batches), and stops at the first evaluation that
  reaches the target with every kind of question at `kind_target` or more. Colour is learnt first: without the
  second condition, seeds 1 and 2 of the default world stopped with colour at 0.99 and 0.87 and direction at chance
  (0.28 and 0.27), a model whose frozen vision encoder a round cannot teach direction.
- A kind of question whose val accuracy reaches `kind_ceiling` (0.7) rests: its examples leave the batches until
  every kind reaches the ceiling (it comes back if it falls below). Trained on throughout, colour reached 0.97-0.98
  on seeds 1 and 2 before direction left chance, and a round then had only direction to teach, and colour to lose.
  The record's history says which kinds rested after each evaluation.
- Each evaluation runs in a forked copy of the process while training goes on, where a second core exists; when an
  evaluation changes the course (the target reached, a kind resting), training goes back to the state it evaluated.
  The weights and the record are those of evaluating in line (a test builds both), and the 20 evaluations of seed 0
  leave the training's core.
- At `max_steps` below the target it still saves the model, with a warning, and its record says
  `reached_target: false`: a model that learned less than asked can still serve (a test, a look at the curve), and
  whoever needs the target, as the proof does, reads the record and refuses it.

On the default world, seeds 0, 1 and 2 stop at steps 1,000, 600 and 1,150 on an Intel Xeon, at 1,450, 550 and 650
on an AMD EPYC with AVX-512, and at 1,050, 600 and 1,050 on one with AVX2 only (the same seed follows another course
on another CPU, whose kernels sum in another order), after 3-8 minutes on one core of a quiet AVX-512 machine and
8-13 on the AVX2 one.
It runs on the CPU in one thread, the caller's thread count restored afterwards: a model this small gains nothing
from more, and on a busy 2-core machine two threads ran 30 times slower than one.
The same world, seed and settings give the same weights and the same record (but its `seconds`) on one machine.
The folder is written beside itself and renamed into place:

    OUT/model.safetensors, config.json, ...   the model and processor, loadable as any checkpoint (`--model OUT`)
    OUT/world_training.json                   the world's fingerprint, the settings, the steps, the validation
                                              accuracy it stopped at, and the history of (step, accuracy, loss)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stages.core.errors import SaviError
from stages.core.settings import WorldModelConfig
from stages.core.store import Progress, atomic_dir, check_output_folder, ticker, write_json
from stages.offline.world import QUESTIONS_FILE, read_world

log = logging.getLogger("savi")

TRAINING_FILE = "world_training.json"
CHANCE = 0.25  # four options per question
VISION_INIT = "fan_in"


def build_world_model(out_dir: str | Path, world_dir: str | Path, cfg: WorldModelConfig | None = None, *,
                      progress: Progress | None = None, evaluate_aside: bool | None = None) -> Path:
    """Build a tiny model of `cfg.family` trained on the world in `world_dir`, save it to `out_dir`, and return it.

    `out_dir` may be new, empty, or an earlier model savi wrote (replaced whole); `progress(total)` may return a
    callback called once per training step; `evaluate_aside` (default: where a fork and a second core exist) runs
    each evaluation beside the training, for the same result. Example: build_world_model("models/w0", "worlds/w0")
    """
    import torch

    cfg = cfg or WorldModelConfig()
    out, world_dir = Path(out_dir), Path(world_dir)
    world = checked_world(world_dir)
    check_output_folder(out, (TRAINING_FILE, "model.safetensors"), "a world model")

    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # absolute(): "." has no name to put a temporary sibling beside.
        with atomic_dir(out.absolute()) as tmp:
            record = _build(tmp, world_dir, world, cfg, ticker(progress, cfg.max_steps), evaluate_aside)
            record["seconds"] = round(time.perf_counter() - started, 1)
            write_json(tmp / TRAINING_FILE, record)
    finally:
        torch.set_num_threads(threads)
    if not record["reached_target"]:
        log.warning(f"the world model stopped at --max-steps {cfg.max_steps} with validation accuracy "
                    f"{record['val_accuracy']:.3f} ({by_kind_text(record)}), short of the target {cfg.target} "
                    f"(every kind {cfg.kind_target}; chance is {CHANCE}); it is saved all the same: raise "
                    f"--max-steps, or lower --target or --kind-target")
    return out


def by_kind_text(record: dict[str, Any]) -> str:
    """The val accuracy of each kind of question in a training record, as "colour 0.693, direction 0.520"."""
    return ", ".join(f"{kind} {accuracy:.3f}" for kind, accuracy in record["val_by_kind"].items())


def checked_world(folder: Path) -> dict[str, Any]:
    """world.json of the intact world in `folder` (`world.read_world`), which must have train and val clips."""
    world = read_world(folder)
    sizes = world.get("sizes", {})
    empty = [split for split in ("train", "val") if not sizes.get(split)]
    if empty:
        raise SaviError(f"the world in {folder} has no {' and no '.join(empty)} clips, and a world model needs both; "
                        "build a world with both splits")
    return world


def world_corpus(world_dir: Path) -> list[str]:
    """The sentences the model will read and write: the answer turn of every question, and every reply."""
    from stages.core.prompts import load_prompts

    answer = load_prompts()["answer"]
    records = [json.loads(line) for line in (world_dir / QUESTIONS_FILE).read_text(encoding="utf-8").splitlines()
               if line.strip()]
    turns = {answer.render("answer", question=r["question"]) for r in records}
    replies = {reply for r in records for reply in r["replies"]}
    return sorted(turns) + sorted(replies)  # sorted: a set's order changes from one process to the next


def _build(folder: Path, world_dir: Path, world: dict[str, Any], cfg: WorldModelConfig, tick: Any,
           aside: bool | None) -> dict[str, Any]:
    """Build the model in `folder`, train it, save its weights there, and return the training record."""
    from stages.core.model import load_model
    from stages.core.settings import ModelConfig
    from stages.offline.tiny_model import build_tiny_model

    build_tiny_model(folder, cfg.family, cfg.seed, corpus=world_corpus(world_dir), vision_init=VISION_INIT)
    # The loader every stage uses, on the CPU in float32 as `savi eval` loads it there.
    model, processor = load_model(ModelConfig(id=str(folder), device="cpu", dtype="float32"))
    train = _Split(world_dir, "train", world["frames"])
    val = _Split(world_dir, "val", world["frames"])

    history, step, right = _train(model, processor, train, val, cfg, tick,
                                  evaluates_aside() if aside is None else aside)
    _save_weights(model, folder)
    return {
        "world": {key: world[key] for key in ("fingerprint", "seed", "sizes", "version")},
        **asdict(cfg), "vision_init": VISION_INIT, "frames": world["frames"], "eval_batch_size": _eval_batch_size(),
        "steps": step, "val_accuracy": history[-1]["val_accuracy"], "val_by_kind": history[-1]["val_by_kind"],
        "val_correct": sum(right), "val_questions": len(val.items), "reached_target": _reached(history[-1], cfg),
        "history": history,
    }


class _Split:
    """A split's questions in the order `savi eval` scores them, with each clip decoded once, as eval decodes it."""

    def __init__(self, world_dir: Path, split: str, frames: int):
        from stages.benchmarks import read_benchmark
        from stages.core.settings import EvalConfig
        from stages.eval import decode_item

        items = read_benchmark("world", world_dir, split).items
        self.items = sorted(items, key=lambda i: str(i.video))  # eval's order, so its batches are eval's too
        decoding = EvalConfig(frames=frames)
        self.videos = {}
        for item in self.items:
            if item.video_name not in self.videos:
                self.videos[item.video_name] = decode_item(item, decoding)

    def video(self, item: Any) -> Any:
        return self.videos[item.video_name]


def _train(model: Any, processor: Any, train: _Split, val: _Split, cfg: WorldModelConfig, tick: Any,
           aside: bool) -> tuple[list[dict[str, Any]], int, list[bool]]:
    """Train until an evaluation reaches the target or the steps run out; the history, the last step, and the
    val questions answered right there.

    With `aside`, each evaluation runs in a forked copy of the process while training goes on for `EVALUATION_LAG`
    steps, on the guess that the evaluation changes nothing. Where it does change something (the target is reached,
    or a kind starts or stops resting), training goes back to the state the evaluation saw (weights, optimizer,
    seeded order) and on from there. The weights and the record are those of evaluating in line, step for step;
    they come sooner where a second core is free."""
    import torch

    from stages.core.model import chat, reply_batch

    generator = torch.Generator().manual_seed(cfg.seed)
    resting: set[str] = set()
    order = _example_order(_training_examples(train, resting), cfg.batch_size, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    lag = min(EVALUATION_LAG, cfg.eval_every) if aside else 0
    history: list[dict[str, Any]] = []
    losses: dict[int, float] = {}
    step = evaluated = trained = 0  # the step trained last, the last one evaluated (or being), the furthest trained
    pending: _Evaluation | None = None
    model.train()
    while True:
        if pending is not None and step >= min(pending.step + lag, cfg.max_steps):
            right, at = pending.result(), pending.step
            since = history[-1]["step"] if history else 0
            # Rounded as `savi eval` rounds its accuracy, so the two read alike.
            evaluation = {"step": at, "val_accuracy": _accuracy(right),
                          "val_by_kind": {kind: _accuracy([r for r, item in zip(right, val.items)
                                                           if item.category == kind])
                                          for kind in sorted({item.category for item in val.items})},
                          "train_loss": round(sum(losses[k] for k in range(since + 1, at + 1)) / (at - since), 4)}
            now_resting = _resting_kinds(evaluation, cfg)
            history.append({**evaluation, "resting": sorted(now_resting)})
            done = _reached(evaluation, cfg) or at == cfg.max_steps
            if done or now_resting != resting:  # the guess was wrong: back to the evaluated state
                pending.restore(model, optimizer, generator)
                step, losses = at, {k: v for k, v in losses.items() if k <= at}
            pending = None
            if done:
                break
            if now_resting != resting:
                resting = now_resting
                order = _example_order(_training_examples(train, resting), cfg.batch_size, generator)
            continue
        if step > evaluated and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            pending, evaluated = _Evaluation(model, processor, val, step, optimizer, generator, aside), step
            continue
        step += 1
        items = [train.items[i] for i in next(order)]
        batch = reply_batch(processor, [train.video(i) for i in items], [chat(i.prompt) for i in items],
                            [i.replies[i.answer] for i in items])
        loss = _reply_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = loss.item()
        if step > trained:  # a step trained again after going back ticks once
            trained = step
            tick()
    model.eval()
    return history, step, right


# Steps trained beside an evaluation before its result is read: about as long as the evaluation takes on the
# default world. Short, because every step past an evaluation that changes the course is trained again.
EVALUATION_LAG = 10


class _Evaluation:
    """The val split scored at `step`, in a forked copy of the process (`aside`) or here; with the training state
    it saw, to go back to."""

    def __init__(self, model: Any, processor: Any, val: _Split, step: int, optimizer: Any, generator: Any,
                 aside: bool):
        import copy

        import torch

        self.step = step
        self.weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.generator, self.rng = generator.get_state(), torch.get_rng_state()
        self.right: list[bool] | None = None
        if not aside:
            self.right = _val_right(model, processor, val)
            return
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.receive, send = context.Pipe(duplex=False)
        self.process = context.Process(target=_send_val_right, args=(send, model, processor, val), daemon=True)
        self.process.start()
        send.close()  # the child holds the only sending end: its death reads as the end of the pipe

    def result(self) -> list[bool]:
        if self.right is None:
            try:
                self.right = self.receive.recv()
            except EOFError:
                self.process.join()
                raise SaviError(f"the evaluation at step {self.step} stopped with exit code "
                                f"{self.process.exitcode}") from None
            self.process.join()
        return self.right

    def restore(self, model: Any, optimizer: Any, generator: Any) -> None:
        import copy

        import torch

        model.load_state_dict(self.weights)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        generator.set_state(self.generator)
        torch.set_rng_state(self.rng)


def _send_val_right(send: Any, model: Any, processor: Any, val: _Split) -> None:
    send.send(_val_right(model, processor, val))


def evaluates_aside() -> bool:
    """Whether evaluations can run beside the training: a fork, and a second core to run it on."""
    import multiprocessing
    import os

    return "fork" in multiprocessing.get_all_start_methods() and (os.cpu_count() or 1) > 1


def _accuracy(right: list[bool]) -> float:
    return round(sum(right) / len(right), 4)


def _reached(evaluation: dict[str, Any], cfg: WorldModelConfig) -> bool:
    return evaluation["val_accuracy"] >= cfg.target and min(evaluation["val_by_kind"].values()) >= cfg.kind_target


def _resting_kinds(evaluation: dict[str, Any], cfg: WorldModelConfig) -> set[str]:
    """The kinds of question at `kind_ceiling` or more, while some kind is still below it."""
    by_kind = evaluation["val_by_kind"]
    if min(by_kind.values()) >= cfg.kind_ceiling:
        return set()
    return {kind for kind, accuracy in by_kind.items() if accuracy >= cfg.kind_ceiling}


def _training_examples(train: _Split, resting: set[str]) -> list[int]:
    return [index for index, item in enumerate(train.items) if item.category not in resting]


def _example_order(examples: list[int], batch_size: int, generator: Any) -> Any:
    """Batches of example indexes, endlessly: each pass over the examples in a fresh seeded order."""
    import torch

    pending: list[int] = []
    while True:
        while len(pending) < batch_size:
            pending += [examples[i] for i in torch.randperm(len(examples), generator=generator).tolist()]
        yield pending[:batch_size]
        pending = pending[batch_size:]


def _reply_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy of the reply tokens: the prompt and the padding are given, never learned."""
    import torch

    mask = batch.pop("completion_mask")[:, 1:].float()
    logits = model(**batch).logits[:, :-1, :].float()
    targets = batch["input_ids"][:, 1:]
    per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return (per_token * mask.flatten()).sum() / mask.sum()


def _eval_batch_size() -> int:
    """The batch size `savi eval` uses unless told otherwise: its questions are padded in batches of this size."""
    from stages.core.settings import ModelConfig

    return ModelConfig().batch_size


def _val_right(model: Any, processor: Any, val: _Split) -> list[bool]:
    """Whether each `val` question is answered right, as `savi eval world --split val` decides it: the argmax of
    each question's whole-reply log-likelihoods, in eval's order and batches."""
    import numpy as np

    from stages.core.model import Policy
    from stages.core.settings import ModelConfig

    model.eval()
    policy = Policy(model, processor, ModelConfig(id="world model", batch_size=_eval_batch_size()), None)
    scores = policy.score_replies([val.video(i) for i in val.items], [i.prompt for i in val.items],
                                  [i.replies for i in val.items])
    model.train()
    return [int(np.argmax(s)) == item.answer for s, item in zip(scores, val.items)]


def _save_weights(model: Any, folder: Path) -> None:
    """The trained weights over the built ones. save_pretrained also rewrites config.json and generation_config.json
    in transformers' current layout; the published layout `build_tiny_model` wrote is put back."""
    kept = {name: (folder / name).read_bytes() for name in ("config.json", "generation_config.json")}
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    for name, content in kept.items():
        (folder / name).write_bytes(content)
