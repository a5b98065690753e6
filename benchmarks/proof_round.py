"""Proof that a round helps: one round of savi in a world whose truth is known, judged four ways.

Run from the repository root (CPU only, nothing downloaded; 9 to 15 minutes a seed on a quiet 2-core machine with
AVX-512, 25 to 29 on an AVX2-only one, the world model's steps deciding most of it; see docs/FIDELITY.md):

    make proof                                    # 3 seeds; writes the table to docs/FIDELITY.md
    .venv/bin/python benchmarks/proof_round.py --seeds 0          # one seed, table on stdout only

Options: ``--seeds 0 1 2``; ``--selectors oracle random`` (a subset); ``--root DIR`` (default a temporary folder,
removed at the end unless ``--keep``); ``--out docs/FIDELITY.md``; ``--json FILE``; ``--jobs N`` (savi commands at
once, one thread each: default 2); ``--dpo-steps``, ``--dpo-lr``, ``--beta``, ``--dpo-loss``, ``--dpo-tune`` (the
round's DPO); ``--model-eval-every`` (how often the world model is evaluated while it trains, so where it stops).

What it does, per seed
----------------------
1. **The world** (`savi world`): 3,850 seeded clips of moving shapes and 4-option questions about their colour and
   direction, in train, judge, pool, val and test splits (`stages/offline/world.py`).
2. **A model that knows it, imperfectly** (`savi tiny-model --world`): a tiny Qwen2.5-VL of the real configuration,
   fine-tuned on the train split until its validation accuracy reaches 0.55, with each kind of question at 0.4 or
   more (chance: 0.25), evaluated every 50 steps; a kind rests from training once it reaches 0.7.
3. **A CLIP that knows it** (`savi tiny-clip --world`): a tiny CLIP trained on the judge split, on single frames
   and on 2x2 time-ordered grids.
4. **The round's answers**: the pool clips are sampled (`savi sample`), their questions taken as the round's, with
   their known answers (`savi ask --from world`), both beside the world model's training, and the base model
   answers each twice at temperature 1
   (`savi answer --candidates 2`, under `accelerate launch` on `--jobs` processes: the same answers, sooner).
   Every question whose two answers differ is a candidate pair.
5. **Four selectors** turn the candidates into pairs, each in its own run (a copy of the pool run), all through
   `savi filter` (which also counts how often each choice is the truth):
   - *oracle*: the pairs with one right and one wrong answer, the right one chosen;
   - *clip-frames*: savi's CLIP filter as shipped (judge-mode pairs, swapped when CLIP grounds the rejected answer
     better; per-frame cosines, mean-pooled);
   - *clip-grid*: the same with `--clip-frames grid`, a grounding score that sees the frames' order;
   - *random*: every candidate, oriented by a coin (the control).
6. **DPO** on each selector's pairs (`savi dpo --tune full --loss rpo --lr 6e-4`, 600 steps of 8 pairs: trl with
   savi's video collator, training the language model's layers and the projector whole; a LoRA does not move a
   model this small, see docs/FIDELITY.md), then **evaluation** of the base and of each trained model on the 600
   test questions (`savi eval world --protocol likelihood`: each option's whole reply scored).

The table gives, per selector: its label accuracy on the kept pairs with one right and one wrong answer, the
number of pairs it kept, the test accuracy with its 95% Wilson CI, the change from the base with a paired
bootstrap 95% CI, and the exact McNemar p of that change (`stages/core/stats.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402

from stages.core.launch import accelerate_command  # noqa: E402
from stages.core.parsing import normalize_text  # noqa: E402
from stages.core.records import Candidate  # noqa: E402
from stages.core.stats import discordant, mcnemar_exact, paired_bootstrap_interval, wilson_interval  # noqa: E402
from stages.core.store import ArtifactWriter, open_run  # noqa: E402

SAVI = [sys.executable, "-c", "from savi_cli.main import app; app()"]
SELECTORS = ("oracle", "clip-frames", "clip-grid", "random")
FRAMES = 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--selectors", nargs="+", choices=SELECTORS, default=list(SELECTORS),
                        help="oracle and random alone need no trained CLIP (the test suite runs just those)")
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep --root's temporary folder")
    parser.add_argument("--out", type=Path, default=None, help="write the table, with its command, to this file")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--dpo-steps", type=int, default=600,
                        help="at 300 the truth's pairs moved seeds 0 and 2 by +4 points only (docs/FIDELITY.md)")
    parser.add_argument("--model-eval-every", type=int, default=None,
                        help="savi tiny-model --eval-every for the world model (default: its own)")
    parser.add_argument("--dpo-lr", type=float, default=6e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--dpo-loss", default="rpo", help="savi dpo --loss (rpo, sigmoid, clip-weighted)")
    parser.add_argument("--dpo-tune", default="full", choices=("full", "lora"),
                        help="savi dpo --tune: LoRA does not move a model this small (docs/FIDELITY.md)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="savi commands run at once (each in one thread): the world model beside the CLIP, "
                             "then the selectors")
    args = parser.parse_args()

    root = args.root or Path(tempfile.mkdtemp(prefix="savi-proof-"))
    results = []
    try:
        for seed in args.seeds:
            results.append(one_seed(root / f"seed-{seed}", seed, args))
            print(table(results[-1:]), flush=True)
    finally:
        if args.root is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    text = table(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.out:
        write_markdown(args.out, results, text, sys.argv[1:])
    return 0


# ---------------------------------------------------------------------------------------------------------------
# One seed


def one_seed(folder: Path, seed: int, args: argparse.Namespace) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SAVI_HOME=str(folder / "runs"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    world, model, clip = folder / "world", folder / "model", folder / "clip"
    seconds: dict[str, float] = {}  # per part; parts in lanes overlap, so they add up to more than the wall time
    start = time.perf_counter()

    with timed(seconds, "world"):
        savi(env, "world", world, "--seed", seed)
    # The world model and the CLIP learn from different splits, so they train side by side, one core each; the
    # pool's clips and questions, which need neither, follow the CLIP, which finishes long before the model.
    clip_world = ["--world", world] if any(name.startswith("clip") for name in args.selectors) else []

    def clip_then_pool() -> None:
        # oracle and random ignore CLIP's scores: `savi filter` only needs a CLIP to run, and an untrained one will do
        timed_savi(seconds, "clip", env, "tiny-clip", clip, *clip_world, "--seed", seed)
        with timed(seconds, "pool"):
            pool_questions(env, folder, world)

    in_lanes(args.jobs, [
        lambda: timed_savi(seconds, "model", env, "tiny-model", model, "--world", world, "--seed", seed,
                           *(["--eval-every", args.model_eval_every] if args.model_eval_every else [])),
        clip_then_pool,
    ])
    base_training = json.loads((model / "world_training.json").read_text())
    if not base_training["reached_target"]:
        sys.exit(f"the world model of seed {seed} stopped at {base_training['steps']} steps short of its target "
                 f"(val {base_training['val_accuracy']}, by kind {base_training['val_by_kind']}): no proof on it")

    with timed(seconds, "answers"):
        pool = pool_answers(env, model, args.jobs)
    runs = Path(env["SAVI_HOME"])
    for name in args.selectors:  # each selector trains and evaluates in a run of its own, a copy of the pool's
        shutil.copytree(runs / "pool", runs / name, ignore=shutil.ignore_patterns(".lock", "eval", ".logs"))

    def base_eval() -> None:
        timed_savi(seconds, "base eval", env, "eval", "world", "--data", world, "--run", "pool", "--round", "0",
                   "--frames", FRAMES, "--protocol", "likelihood")

    rows: dict[str, dict] = {}

    def selector(name: str) -> None:
        with timed(seconds, name):
            rows[name] = one_selector(env, folder, pool, name, clip, seed, args)

    # The base's eval and the selectors are independent: `--jobs` of them run at once.
    in_lanes(args.jobs, [base_eval, *[lambda name=name: selector(name) for name in args.selectors]])
    base = eval_results(env, "pool", 0)
    rows = {name: {**rows[name], **compare(base, eval_results(env, name, 1))} for name in args.selectors}
    return {"seed": seed, "base": summary(base), "base_training": base_training, "selectors": rows,
            "seconds": seconds, "wall_seconds": round(time.perf_counter() - start, 1)}


def pool_questions(env: dict, folder: Path, world: Path) -> None:
    """Sample the pool clips into run `pool` and take their questions (with the truth) as round 1's."""
    listing = folder / "pool.txt"
    listing.write_text("".join(f"{path}\n" for path in sorted((world / "videos").glob("pool-*.mp4"))))
    savi(env, "sample", listing, "--run", "pool", "--frames", FRAMES, "--max-side", 56)
    savi(env, "ask", "--run", "pool", "--round", 1, "--from", "world", "--data", world, "--split", "pool")


def pool_answers(env: dict, model: Path, jobs: int) -> list[dict]:
    """Let the base model answer each pool question twice at temperature 1, in `jobs` processes under accelerate
    launch (the answers of one process, row for row: docs/SCALING.md). Returns the candidate pairs: the questions
    whose two answers differ, each with which answers are right."""
    launched(env, jobs, "answer", "--run", "pool", "--round", "1", "--model", model, "--candidates", 2,
         "--temperatures", "1.0,1.0", "--max-new-tokens", 24)
    run = open_run("pool", env["SAVI_HOME"])
    questions = {q.question_id: q for q in run.artifact("questions", 1).read()}
    answers: dict[str, list] = {}
    for a in sorted(run.artifact("answers", 1).read(), key=lambda a: a.sample_index):
        answers.setdefault(a.question_id, []).append(a)
    candidates = []
    for question_id, (first, second) in sorted(answers.items()):
        if normalize_text(first.text) == normalize_text(second.text):
            continue
        candidates.append({"question": questions[question_id], "answers": (first, second),
                           "right": tuple(normalize_text(a.text) == normalize_text(questions[question_id].truth)
                                          for a in (first, second))})
    return candidates


def one_selector(env: dict, folder: Path, pool: list[dict], name: str, clip: Path, seed: int,
                 args: argparse.Namespace) -> dict:
    """In run `name` (a copy of the pool run), write the candidates as the selector picks them, filter, train,
    evaluate."""
    run = open_run(name, env["SAVI_HOME"])
    coin = random.Random(f"{seed}:{name}")
    writer = ArtifactWriter(run.artifact("candidates", 1), params={"selector": name, "seed": seed}, inputs={})
    for c in pool:
        first, second = c["answers"]
        if name == "oracle":
            if sum(c["right"]) != 1:
                continue  # the oracle knows that neither (or both) is right: no pair
            chosen, rejected = (first, second) if c["right"][0] else (second, first)
        elif name == "random":
            chosen, rejected = (first, second) if coin.random() < 0.5 else (second, first)
        else:
            chosen, rejected = first, second  # judge mode: CLIP decides the orientation in `savi filter`
        q = c["question"]
        writer.add(Candidate(
            pair_id=f"{q.question_id}:{name}", video_id=q.video_id, question_id=q.question_id, question=q.text,
            chosen=chosen.text, rejected=rejected.text, chosen_source=chosen.answer_id,
            rejected_source=rejected.answer_id, critique_id=None,
            mode="judge" if name.startswith("clip") else "critique", chosen_score=None, rejected_score=None,
            usable=True, note=None, prompt=chosen.prompt, chosen_finished=chosen.finished,
            rejected_finished=rejected.finished))
    writer.finish(counts={"candidates": len(pool)})

    frames = ["--clip-frames", "grid"] if name == "clip-grid" else []
    # Two answers to one question differ in a word ("moves left." / "moves right."): no pair is a near-duplicate
    # here unless its texts are identical.
    savi(env, "filter", "--run", name, "--round", 1, "--clip-model", f"local-dir:{clip}", "--device", "cpu",
         "--near-duplicate", "1.0", *frames)
    manifest = json.loads(run.artifact("pairs", 1).manifest_path.read_text())
    agreement = manifest["counts"].get("judge_agreement", {})
    agreed = sum(k["agree"] for k in agreement.values())
    judged = sum(k["pairs"] for k in agreement.values())

    savi(env, "dpo", "--run", name, "--round", 1, "--no-4bit", "--max-steps", args.dpo_steps, "--batch-size", 8,
         "--grad-accum", 1, "--lr", args.dpo_lr, "--beta", args.beta, "--loss", args.dpo_loss,
         "--tune", args.dpo_tune, "--save-steps", 10 ** 6, "--no-gradient-checkpointing")
    savi(env, "eval", "world", "--data", folder / "world", "--run", name, "--round", 1, "--frames", FRAMES,
         "--protocol", "likelihood")
    return {"pairs": manifest["counts"]["kept"], "label_accuracy": agreed / judged if judged else None,
            "label_pairs": judged}


# ---------------------------------------------------------------------------------------------------------------
# Figures


def eval_results(env: dict, run_name: str, round: int) -> dict[str, bool]:
    rows = open_run(run_name, env["SAVI_HOME"]).eval_artifact("world", round).read()
    return {r.question_id: bool(r.correct) for r in rows if r.correct is not None}


def summary(results: dict[str, bool]) -> dict:
    n, k = len(results), sum(results.values())
    low, high = wilson_interval(k, n)
    return {"questions": n, "accuracy": k / n, "ci": [low, high]}


def compare(base: dict[str, bool], after: dict[str, bool]) -> dict:
    shared = sorted(base.keys() & after.keys())
    before_, after_ = [base[q] for q in shared], [after[q] for q in shared]
    b, c = discordant(before_, after_)
    low, high = paired_bootstrap_interval(before_, after_)
    return {**summary(after), "change": (c - b) / len(shared), "change_ci": [low, high],
            "p": mcnemar_exact(b, c), "lost": b, "gained": c}


def table(results: list[dict]) -> str:
    lines = ["| seed | selector | label acc (pairs) | pairs kept | test accuracy [95% CI] | change [95% CI] | "
             "McNemar p |", "|---|---|---|---|---|---|---|"]
    for r in results:
        base = r["base"]
        lines.append(f"| {r['seed']} | base (val {r['base_training']['val_accuracy']:.3f} after "
                     f"{r['base_training']['steps']} SFT steps) | - | - | {_acc(base)} | - | - |")
        for name, s in r["selectors"].items():
            label = "-" if s["label_accuracy"] is None else f"{s['label_accuracy']:.2f} ({s['label_pairs']})"
            lines.append(f"| {r['seed']} | {name} | {label} | {s['pairs']} | {_acc(s)} | "
                         f"{100 * s['change']:+.1f} [{100 * s['change_ci'][0]:+.1f}, {100 * s['change_ci'][1]:+.1f}]"
                         f" | {_p(s['p'])} |")
    return "\n".join(lines)


def _acc(s: dict) -> str:
    return f"{100 * s['accuracy']:.1f} [{100 * s['ci'][0]:.1f}, {100 * s['ci'][1]:.1f}]"


def _p(p: float) -> str:
    return "<0.0001" if p < 0.0001 else f"{p:.2g}"


def write_markdown(path: Path, results: list[dict], text: str, argv: list[str]) -> None:
    minutes = [r["wall_seconds"] / 60 for r in results]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    block = (f"\n## One round in the world: {len(results)} seed{'s' if len(results) > 1 else ''} "
             f"({stamp}, {cpu_model() or platform.machine()})\n\n"
             f"```\n.venv/bin/python benchmarks/proof_round.py {' '.join(argv)}\n```\n\n{text}\n\n"
             f"Minutes per seed: {', '.join(f'{m:.1f}' for m in minutes)}. Accuracy and CIs in percent; the change "
             "is against the base on the same 600 test questions.\n")
    existing = path.read_text() if path.exists() else ""
    path.write_text(existing + block)


# ---------------------------------------------------------------------------------------------------------------
# Running savi


def savi(env: dict, *args, command: list[str] = SAVI) -> str:
    """Run one savi command as a user would; stop the proof with its output if it fails."""
    done = subprocess.run([*command, *map(str, args)], env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"`savi {' '.join(map(str, args))}` failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def launched(env: dict, processes: int, *args) -> str:
    """`savi` with `args`, in `processes` processes under accelerate launch (one thread each; torchrun starts them
    on the CPU), or alone for one."""
    return savi(env, *args, command=accelerate_command(processes)) if processes > 1 else savi(env, *args)


def in_lanes(jobs: int, tasks: list) -> None:
    """Run `tasks` (functions that mostly wait on savi subprocesses), at most `jobs` at a time. The first failure
    stops the proof once the commands already running beside it end; the tasks still queued are cancelled."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(task) for task in tasks]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def timed_savi(seconds: dict[str, float], name: str, env: dict, *args) -> None:
    with timed(seconds, name):
        savi(env, *args)


class timed:
    def __init__(self, into: dict[str, float], name: str):
        self.into, self.name = into, name

    def __enter__(self):
        self.start = time.monotonic()

    def __exit__(self, *exc):
        self.into[self.name] = round(time.monotonic() - self.start, 1)
        print(f"  {self.name}: {self.into[self.name]:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
