"""Stage `eval`: a model of a run answers a video QA benchmark, read in its real published layout.

Round r evaluates M(r), the base model plus the adapter trained in round r; round 0 is the base model. Every
question gets a row in `round=<r>/eval/<benchmark>.parquet` (a prediction, or the reason there is none), and
`<benchmark>.summary.json` beside it holds the accuracy, overall and per category. Hidden-answer splits (the
full EgoSchema, test sets) also get the submission file their leaderboard expects.

Two protocols:
- lmms-eval (the default): the model writes a reply to the benchmark's lmms-eval prompt, greedily, for the task's
  reply length (`protocol.reply_tokens`), and the task's lmms-eval 0.7.3 answer extractor reads it
  (`extract.read_answer`). Where lmms-eval would guess a random letter, savi does not guess: the reply counts as
  unmatched and earns the guess's expected value, 1/k, so the figure is deterministic and equal in expectation
  to lmms-eval's. Where lmms-eval would ask a GPT judge (TempCompass), the reply counts as unmatched. The strict
  accuracy of the same replies (savi's own parser; a reply naming no single option is wrong) is always beside
  it. `savi eval --rescore` reads the stored replies again, without the model.
- likelihood: one forward pass per question scores each option's label ("A", "B", ... or yes/no) as the first
  token of the reply, and the best-scoring option is the prediction. It cannot fail to parse, and no published
  figure is measured this way: a fast diagnostic. Benchmarks whose options are whole replies (the world's) score
  each reply whole instead: still one row per question, its prompt and video once and every option after it
  (`stages/core/packing.py`; a row per option under flash attention).

`--keyframes K` answers each question from the K frames a localizer (`--localizer policy|clip`, as `savi
keyframes` scores them) finds most relevant to it, in temporal order: SeViLA's localizer and answerer, without
training. It is a table of its own, `<benchmark>@keyframes<K>-<localizer>`.

`--perturb reverse|shuffle|drop` evaluates on each video's frames perturbed in time (`stages/core/temporal.py`,
seeded by the video), into a table of its own, `<benchmark>@<kind>`, beside the true order's: the change between
the two says whether the model reads time at all (`savi report`'s `vs true order`).

Both use the benchmark's own prompt (lmms-eval's). Under lmms-eval the frames are those lmms-eval's path for the
model's family decodes, at its pixel budget (`protocol.frame_indices`, `protocol.frame_size`); under likelihood
they are sampled as `savi sample` does (uniform segment midpoints). Both keep to the question's time span where
the benchmark gives one. docs/EVAL.md compares savi's protocol with lmms-eval's, benchmark by benchmark.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.benchmarks import BENCHMARKS, Benchmark, EvalItem, read_benchmark, submission
from stages.benchmarks.choice import LETTERS
from stages.benchmarks.extract import JUDGE, RANDOM, Reading, read_answer
from stages.benchmarks.protocol import (
    decoded_frame_count,
    family_of,
    frame_indices,
    frame_size,
    reply_tokens,
    system_message,
)
from stages.core import launch as launches
from stages.core.clip import ClipScorer
from stages.core.errors import SaviError
from stages.core.model import (
    Decoding,
    Policy,
    Video,
    adapter_fingerprint,
    checkpoint_facts,
    pending_batches,
    trained_adapter,
    trained_rounds,
)
from stages.core.prompts import Prompt, load_prompts
from stages.core.records import EvalResult
from stages.core.settings import EVAL_PROTOCOLS, LOCALIZERS, PERTURBATIONS, ClipConfig, EvalConfig, ModelConfig
from stages.core.store import (
    DEFAULT_RUN,
    ArtifactWriter,
    Progress,
    Run,
    StageResult,
    existing_run,
    file_sha256,
    open_run,
    slug,
    write_json,
)
from stages.core.temporal import frame_order
from stages.core.video import Sampling, VideoError, read_frame_folder, read_video
from stages.keyframes import clip_scores, policy_scores, top_k

MISSING_SHOWN = 5


@dataclass(frozen=True)
class BenchmarkSource:
    """Which benchmark, and where it was downloaded to."""

    name: str
    data: Path
    """The benchmark's folder (or annotation file)."""
    split: str | None = None
    """None: the benchmark's default split."""
    videos: Path | None = None
    """Where the videos are, if not where the benchmark's layout puts them under `data`."""


@dataclass(frozen=True)
class EvalOutcome:
    table: str  # the benchmark, plus its split when that is not the default
    result: StageResult
    summary: dict[str, Any]
    summary_path: Path
    submission_path: Path | None


def table_name(bench: Benchmark, cfg: EvalConfig | None = None) -> str:
    """`egoschema` for the default split, `egoschema-full` for another, so splits never share a table; keyframes
    and a perturbation add theirs: `egoschema@keyframes4-clip`, `egoschema@reverse`."""
    default = BENCHMARKS[bench.name].default_split
    name = bench.name if bench.split == default else f"{bench.name}-{bench.split}"
    if cfg is not None and cfg.keyframes:
        name += f"@keyframes{cfg.keyframes}-{cfg.localizer}"
    if cfg is not None and cfg.perturb:
        name += f"@{cfg.perturb}"
    return name


def true_order_table(table: str) -> str | None:
    """The table a perturbed evaluation is compared with (`egoschema@reverse` -> `egoschema`); None if unperturbed."""
    name, _, last = table.rpartition("@")
    return name if name and last in PERTURBATIONS else None


def evaluate(target: Run, round: int, source: BenchmarkSource, cfg: EvalConfig, model_cfg: ModelConfig,
             clip_cfg: ClipConfig | None = None, *, force: bool = False,
             progress: Progress | None = None) -> list[EvalOutcome]:
    """`run` in the true order, then, with `cfg.perturb`, on the perturbed frames too: the perturbed figure means
    something only beside the true one."""
    orders = [dataclasses.replace(cfg, perturb=None)] + ([cfg] if cfg.perturb else [])
    return [run(target, round, source, c, model_cfg, clip_cfg, force=force, progress=progress) for c in orders]


def run(run: Run, round: int, source: BenchmarkSource, cfg: EvalConfig, model_cfg: ModelConfig,
        clip_cfg: ClipConfig | None = None, *, force: bool = False, progress: Progress | None = None) -> EvalOutcome:
    """Evaluate round `round`'s model on the benchmark into its table (`clip_cfg`: the CLIP of `--localizer
    clip`)."""
    if cfg.protocol not in EVAL_PROTOCOLS:
        raise SaviError(f"unknown --protocol {cfg.protocol!r}: use {' or '.join(EVAL_PROTOCOLS)}")
    if round < 0:
        raise SaviError(f"--round must be 0 (the base model) or a trained round; got {round}")
    if cfg.perturb is not None and cfg.perturb not in PERTURBATIONS:
        raise SaviError(f"unknown --perturb {cfg.perturb!r}: use {', '.join(PERTURBATIONS)}")
    bench, items, present, missing = questions(source, cfg)
    adapter = trained_adapter(run, round)

    name = table_name(bench, cfg)
    localizer = Localizer.load(cfg, clip_cfg)
    family, penalty = None, 1.0
    if cfg.protocol == "lmms-eval":
        # lmms-eval's model paths never set a repetition penalty, so generate() applies the one the checkpoint
        # ships (1.05 for Qwen2.5-VL-7B-Instruct); savi, which otherwise drops the shipped defaults, does too.
        model_type, penalty = checkpoint_facts(model_cfg.id)
        family = family_of(model_type)
    params = {"benchmark": bench.name, "split": bench.split, "protocol": cfg.protocol, "frames": cfg.frames,
              "model": model_cfg.id, "adapter": adapter_fingerprint(adapter)}
    if family is None:
        params["max_side"] = cfg.max_side
    else:
        params["family"] = family
        params["decoding"] = _decoding(bench, cfg, family, penalty).record()
    if cfg.perturb:
        params.update(perturb=cfg.perturb, seed=model_cfg.seed)
    if localizer:
        params["keyframes"] = localizer.record()
    inputs = {"annotations": {p.name: file_sha256(p) for p in bench.sources}, "questions": len(items),
              "videos_found": len(present)}
    art = run.eval_artifact(name, round)
    summary_path = _summary_path(art)
    writer = ArtifactWriter(art, params=params, inputs=inputs, force=force, incremental=True,
                            launch=launches.current())
    if writer.up_to_date:
        summary = json.loads(summary_path.read_text())
        return EvalOutcome(name, writer.cached_result(), summary, summary_path, _submission_path(art.path, bench))

    def done(item: EvalItem) -> bool:
        return item.question_id in writer.done_items

    ordered = sorted(present, key=lambda i: str(i.video))
    todo = [i for i in ordered if not done(i)]
    tick = writer.ticker(progress, len(todo))
    policy = Policy.load(model_cfg, adapter, run=run) if todo else None
    try:
        # Batches are cut from all the questions, as a run that was never interrupted cuts them: a question is
        # scored beside the same others (padded alike), so a resumed table holds the very same numbers.
        batches = list(pending_batches(ordered, model_cfg.batch_size, done, writer.launch))
        sampling = lmms_eval_sampling(family, cfg.frames) if family else None
        for batch, videos in _decoded_batches(batches, cfg, sampling, model_cfg.seed):
            shown = {item.question_id: videos[_video_key(item)] for item in batch}
            if localizer:
                shown = localizer.keyframes(policy, batch, shown)
            for row in _answer(policy, batch, shown, cfg, bench, name, family, penalty):
                if writer.add(row):
                    tick()
    finally:
        writer.close()
    if not writer.gather():  # another process of the launch finishes the table
        return EvalOutcome(name, writer.share_result(), {}, summary_path, None)

    # The summary is written before the manifest, so a finished table always has one.
    current = {i.question_id for i in present}
    rows: list[EvalResult] = [r for r in writer.records() if r.question_id in current]
    summary = summarize(rows, bench, round, cfg.protocol, model_cfg.id, missing=len(missing))
    summary["frames"] = frames_used(cfg, family)
    summary["perturb"] = cfg.perturb
    write_json(summary_path, summary)
    submission_path = _write_submission(art.path, bench, rows)
    counts = {k: summary[k] for k in COUNTED}
    result = writer.finish_result(len(todo), counts, keep=current)
    return EvalOutcome(name, result, summary, summary_path, submission_path)


def rescore(run: Run, round: int, source: BenchmarkSource, cfg: EvalConfig | None = None) -> EvalOutcome:
    """Read the stored replies of a finished eval (the table `cfg`'s keyframes and perturbation name) again with the
    current extractors and parser, and replace the table and its summary once the new ones are whole. The model is
    not loaded, and no video is decoded."""
    bench = read_benchmark(source.name, source.data, source.split, source.videos)
    name = table_name(bench, cfg)
    art = run.eval_artifact(name, round)
    if not art.complete:
        raise SaviError(f"run {run.name} has no finished {name} eval of round {round} to rescore; run `savi eval "
                        f"{bench.name} --data {source.data} --run {run.name} --round {round}` first")
    manifest = art.manifest()
    protocol = manifest["params"].get("protocol", manifest["params"].get("mode"))
    if protocol == "likelihood":
        raise SaviError(f"the {name} eval of round {round} scored options by likelihood: it holds no replies to "
                        "read again; evaluate with --protocol lmms-eval")
    items = {item.question_id: item for item in bench.items}
    writer = ArtifactWriter(art, params=manifest["params"], inputs=manifest["inputs"], force=True)
    rows = []
    for row in art.read():
        item = items.get(row.question_id)
        if item is not None and row.error is None:
            reading, strict = readings(bench.name, item, row.response)
            row = dataclasses.replace(row, **_scored(item, reading, strict, decoded=True))
        rows.append(row)
        writer.add(row)
    summary_path = _summary_path(art)
    before = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary = summarize(rows, bench, round, protocol, manifest["params"]["model"],
                        missing=before.get("missing_videos", 0))
    summary["frames"], summary["perturb"] = before.get("frames"), before.get("perturb")
    write_json(summary_path, summary)
    submission_path = _write_submission(art.path, bench, rows)
    result = writer.finish_result(len(rows), {k: summary[k] for k in COUNTED}, notes={"rescored": True})
    return EvalOutcome(name, result, summary, summary_path, submission_path)


def _summary_path(art: Any) -> Path:
    return art.path.with_name(f"{art.name}.summary.json")


def questions(source: BenchmarkSource, cfg: EvalConfig) -> tuple[Benchmark, list[EvalItem], list[EvalItem], list[str]]:
    """The benchmark, its questions (up to the limit), those whose video is there, and the videos missing; a
    benchmark that cannot be read, or whose videos are missing, is a one-line error. `savi round` calls it before
    its first stage, so a typo in a path stops the round at once, not after hours of generation."""
    bench = read_benchmark(source.name, source.data, source.split, source.videos)
    items = bench.items[:cfg.limit] if cfg.limit else bench.items
    if not items:
        raise SaviError(f"{bench.name} ({bench.split}) has no questions in {source.data}")
    present, missing = _check_videos(bench, items, source, cfg.allow_missing)
    return bench, items, present, missing


def run_to_evaluate(run: str | None, model: str | None, workspace: Path | str | None) -> Run:
    """The run whose model `savi eval` evaluates: `run` if named; for a `model` given without a run, a run of its
    own, `eval-<model>` (so evaluating any checkpoint needs no set-up); else the default run, which must exist."""
    if run is None and model is not None:
        return open_run("eval-" + slug(model.strip("/").split("/")[-1]), workspace)
    if model is None:
        return existing_run(run or DEFAULT_RUN, workspace)
    return open_run(run, workspace)


def latest_trained_round(run: Run) -> int:
    """The last round with a trained adapter, or 0 (the base model) when there is none."""
    return max(trained_rounds(run), default=0)


def _check_videos(bench: Benchmark, items: list[EvalItem], source: BenchmarkSource,
                  allow_missing: bool) -> tuple[list[EvalItem], list[str]]:
    present = [i for i in items if i.video is not None]
    missing = sorted({i.video_name for i in items if i.video is None})
    if missing and (not allow_missing or not present):
        where = source.videos or source.data
        first = ", ".join(missing[:MISSING_SHOWN]) + (", ..." if len(missing) > MISSING_SHOWN else "")
        advice = ("pass --videos DIR if they are elsewhere" if not present else
                  f"pass --videos DIR if they are elsewhere, or --allow-missing to evaluate the "
                  f"{len(present)} questions whose video exists")
        count = "1 video" if len(missing) == 1 else f"{len(missing)} videos"
        raise SaviError(f"{count} of {bench.name} missing under {where} ({first}); {advice}")
    return present, missing


def lmms_eval_sampling(family: str, frames: int) -> Sampling:
    """lmms-eval's frames for the family (`protocol.frame_indices`, up to `frames`) at its pixel budget
    (`protocol.frame_size`), over the whole clip or the question's span.

    Two departures, both where lmms-eval's own path would stop: Qwen3-VL's path always asks for 32 frames and
    fails on a shorter clip, so such a clip gives all its frames, an even number, as Qwen2.5-VL's path does; and
    a clip too short for any Qwen path (one frame) is an error row, not a crashed run."""
    def most(count: int) -> int:
        return min(frames, max(2, count // 2 * 2)) if family == "qwen3_vl" else frames

    def pick(count: int, fps: float) -> list[int]:
        try:
            return frame_indices(family, count, most(count), fps=fps)
        except SaviError as e:
            raise VideoError(str(e)) from None

    def size(height: int, width: int, count: int, fps: float) -> tuple[int, int]:
        try:
            return frame_size(family, height, width, decoded_frame_count(family, count, most(count), fps=fps))
        except SaviError as e:
            raise VideoError(str(e)) from None

    return Sampling(pick, size)


def frames_used(cfg: EvalConfig, family: str | None) -> str:
    """Which frames the model saw, for the summary."""
    if family is None:
        frames = f"{cfg.frames} at uniform segment midpoints, longest side {cfg.max_side} px"
    else:
        frames = f"lmms-eval's {family} path: up to {cfg.frames} frames at its pixel budget"
    if cfg.keyframes:
        frames += f", then the {cfg.keyframes} keyframes the {cfg.localizer} localizer finds for each question"
    return f"{frames}, perturbed: {cfg.perturb}" if cfg.perturb else frames


def _decoded_batches(batches: list[Sequence[EvalItem]], cfg: EvalConfig, sampling: Sampling | None,
                     seed: int) -> Iterator[tuple[Sequence[EvalItem], dict[str, Video | str]]]:
    """The batches with their videos decoded (and perturbed, with `cfg.perturb`, seeded by the clip), the next
    batch decoding in a thread while the model runs (decord releases the GIL). A video that cannot be decoded
    maps to its error message."""
    def decode(batch: Sequence[EvalItem]) -> dict[str, Video | str]:
        videos: dict[str, Video | str] = {}
        for item in batch:
            key = _video_key(item)
            if key not in videos:
                try:
                    videos[key] = decode_item(item, cfg, sampling)
                except VideoError as e:
                    videos[key] = str(e)
                    continue
                if cfg.perturb:
                    clip = f"{seed}:{item.video_name}|{item.start_s}|{item.end_s}"  # not the path: any machine
                    videos[key] = videos[key].reordered(frame_order(cfg.perturb, len(videos[key].frames), clip))
        return videos

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(decode, batches[0]) if batches else None
        for k, batch in enumerate(batches):
            videos = ahead.result()
            ahead = pool.submit(decode, batches[k + 1]) if k + 1 < len(batches) else None
            yield batch, videos


@dataclass(frozen=True)
class Localizer:
    """`--keyframes K`: each question's K most relevant frames, in temporal order, scored as `savi keyframes`
    scores a run's frames (`stages/keyframes.py`): by the policy, or by CLIP on the frames just decoded."""

    top_k: int
    kind: str  # "policy" or "clip"
    prompt: Prompt | None = None  # the policy's
    scorer: ClipScorer | None = None  # CLIP's

    @classmethod
    def load(cls, cfg: EvalConfig, clip_cfg: ClipConfig | None) -> Localizer | None:
        """The localizer `cfg` asks for (None without --keyframes); CLIP is loaded now, so a bad one fails first."""
        if not cfg.keyframes:
            return None
        if cfg.localizer not in LOCALIZERS:
            raise SaviError(f"unknown --localizer {cfg.localizer!r}: use {' or '.join(LOCALIZERS)}")
        if cfg.localizer == "clip":
            return cls(cfg.keyframes, "clip", scorer=ClipScorer.load(clip_cfg or ClipConfig()))
        return cls(cfg.keyframes, "policy", prompt=load_prompts()["keyframes"])

    def record(self) -> dict[str, Any]:
        """What chose the frames, as the table's parameters record it."""
        made_by = {"clip": self.scorer.fingerprint} if self.scorer else {"prompt_version": self.prompt.version}
        return {"top_k": self.top_k, "localizer": self.kind, **made_by}

    def keyframes(self, policy: Policy, batch: Sequence[EvalItem],
                  shown: dict[str, Video | str]) -> dict[str, Video | str]:
        """`shown` with each decoded video cut to its question's keyframes."""
        ready = [item for item in batch if isinstance(shown[item.question_id], Video)]
        if self.kind == "policy":
            scores = policy_scores(policy, self.prompt, [shown[i.question_id] for i in ready],
                                   [i.question for i in ready])
        else:
            embedded: dict[str, np.ndarray] = {}  # a clip's frames are embedded once for all its questions
            scores = []
            for item in ready:
                key = _video_key(item)
                if key not in embedded:
                    embedded[key] = self.scorer.encode_frames(shown[item.question_id].frames)
                scores.append(clip_scores(self.scorer, embedded[key], item.question))
        cut = dict(shown)
        for item, frame_scores in zip(ready, scores):
            cut[item.question_id] = shown[item.question_id].reordered(top_k(frame_scores, self.top_k))
        return cut


def _video_key(item: EvalItem) -> str:
    return f"{item.video}|{item.start_s}|{item.end_s}"


def decode_item(item: EvalItem, cfg: EvalConfig, sampling: Sampling | None = None) -> Video:
    """The frames of a benchmark item as eval shows them to the model (also what a world model trains on):
    uniform segment midpoints at `cfg.max_side`, or as `sampling` picks and sizes them. A folder of frames
    (MVBench's episodic reasoning) is always sampled uniformly: lmms-eval has no frame-folder path."""
    if item.frame_fps is not None:
        decoded = read_frame_folder(item.video, frames=cfg.frames, max_side=cfg.max_side, folder_fps=item.frame_fps,
                                    start_s=item.start_s, end_s=item.end_s)
    else:
        decoded = read_video(item.video, frames=cfg.frames, max_side=cfg.max_side, start_s=item.start_s,
                             end_s=item.end_s, sampling=sampling)
    return Video.of(np.stack(decoded.frames), decoded.num_frames, decoded.fps, decoded.indices)


def _decoding(bench: Benchmark, cfg: EvalConfig, family: str, repetition_penalty: float) -> Decoding:
    """Greedy, as lmms-eval decodes, for the benchmark's reply length on the family's path unless
    --max-new-tokens says otherwise, with the checkpoint's own repetition penalty."""
    return Decoding(max_new_tokens=cfg.max_new_tokens or reply_tokens(bench.name, family),
                    repetition_penalty=repetition_penalty)


def _answer(policy: Policy, batch: Sequence[EvalItem], shown: dict[str, Video | str], cfg: EvalConfig,
            bench: Benchmark, table: str, family: str | None, penalty: float) -> list[EvalResult]:
    """One row per item: scored or generated together where the video decoded, an error row where it did not.
    `shown` holds what each question is asked about, by question id: its frames, or why there are none."""
    ok = [i for i in batch if isinstance(shown[i.question_id], Video)]
    answers: dict[str, tuple[Reading, Reading, str, list[float]]] = {}
    if ok and cfg.protocol == "likelihood":
        # Benchmarks whose options are whole replies score them whole; the others score each option's label.
        whole = [i for i in ok if i.replies]
        by_label = [i for i in ok if not i.replies]
        scores = {}
        if whole:
            scored = policy.score_replies([shown[i.question_id] for i in whole], [i.prompt for i in whole],
                                          [i.replies for i in whole])
            scores.update(zip([i.question_id for i in whole], scored))
        if by_label:
            scored = policy.score_labels([shown[i.question_id] for i in by_label], [i.prompt for i in by_label],
                                         [labels(i) for i in by_label])
            scores.update(zip([i.question_id for i in by_label], scored))
        for item in ok:
            option_scores = scores[item.question_id]
            best = Reading(int(np.argmax(option_scores)), "likelihood", None)
            answers[item.question_id] = (best, best, "", option_scores)
    elif ok:
        replies = policy.generate([shown[i.question_id] for i in ok],
                                  [i.family_prompts.get(family, i.prompt) for i in ok],
                                  keys=[i.question_id for i in ok], decoding=_decoding(bench, cfg, family, penalty),
                                  system=system_message(family))
        for item, reply in zip(ok, replies):
            answers[item.question_id] = (*readings(bench.name, item, reply.text), reply.text, [])

    rows = []
    for item in batch:
        video = shown[item.question_id]
        unread = Reading(None, None, None)
        reading, strict, response, option_scores = answers.get(item.question_id, (unread, unread, "", []))
        rows.append(EvalResult(
            question_id=item.question_id, benchmark=table, category=item.category,
            meta=dict(item.meta), video=item.video_name, question=item.question, options=list(item.options),
            answer=item.answer, mode=cfg.protocol, response=response,
            option_scores=[round(s, 5) for s in option_scores],
            num_frames=0 if isinstance(video, str) else len(set(video.indices)),
            error=video if isinstance(video, str) else None, model=policy.name,
            frame_order=[] if isinstance(video, str) else video.order,
            localizer=cfg.localizer if cfg.keyframes and not isinstance(video, str) else None,
            **_scored(item, reading, strict, decoded=not isinstance(video, str))))
    return rows


def readings(benchmark: str, item: EvalItem, reply: str) -> tuple[Reading, Reading]:
    """A reply read by the benchmark's lmms-eval extractor, and by savi's strict parser."""
    task = item.meta.get("task") if benchmark == "tempcompass" else None
    return (read_answer(benchmark, reply, item.options, yes_no=item.yes_no, task=task, labels=item.labels),
            read_answer(benchmark, reply, item.options, protocol="strict", yes_no=item.yes_no, labels=item.labels))


def _scored(item: EvalItem, reading: Reading, strict: Reading, *, decoded: bool) -> dict[str, Any]:
    """A row's prediction and correctness under both readings; `score` is its part of the lmms-eval figure,
    where a reply lmms-eval would answer with a random letter earns that guess's expected value, 1/k."""
    known = item.answer is not None and decoded
    correct = reading.index == item.answer if known else None
    score = None
    if known:
        score = 1.0 if correct else (1 / len(item.options) if reading.fallback == RANDOM else 0.0)
    return {"prediction": reading.index, "parsed_as": reading.rule, "correct": correct,
            "fallback": reading.fallback if decoded else None, "score": score,
            "strict_prediction": strict.index, "strict_correct": strict.index == item.answer if known else None}


def labels(item: EvalItem) -> list[tuple[str, ...]]:
    """How each option's answer can begin: its label as the prompt renders it ("A", MVBench's "(A)", "Option 1"),
    or yes/no in either case."""
    if item.yes_no:
        return [(o, o.capitalize()) for o in item.options]
    return [(label,) for label in item.labels or LETTERS[:len(item.options)]]


# The summary figures a finished table's manifest also records.
COUNTED = ("questions", "accuracy", "correct", "strict_accuracy", "unmatched", "strict_unparsed", "video_errors",
           "missing_videos")


def summarize(rows: list[EvalResult], bench: Benchmark, model_round: int, protocol: str, model: str,
              missing: int = 0) -> dict[str, Any]:
    """Accuracy over the questions with a public answer and a decodable video, two ways:

    - `accuracy`: the protocol's figure. Under lmms-eval, a reply the task's extractor cannot read counts as
      wrong, except where lmms-eval would answer it with a random letter: that earns the guess's expected value
      (1/k), so the figure equals lmms-eval's in expectation without depending on a seed.
    - `strict_accuracy`: savi's own parser on the same replies; a reply naming no single option is wrong.

    `unmatched` counts the replies the extractor could not read (`guessed` of them credited 1/k, `judge` of them
    left to TempCompass's GPT judge by lmms-eval); `accuracy_answered` is the official scripts' answered-only
    figure."""
    scored = [r for r in rows if r.answer is not None and r.error is None]

    def accuracy(group: list[EvalResult]) -> dict[str, Any]:
        correct = sum(bool(r.correct) for r in group)
        answered = sum(r.prediction is not None for r in group)
        strict = sum(bool(r.strict_correct) for r in group)
        total = sum(_score(r) for r in group)
        return {"questions": len(group), "correct": correct,
                "accuracy": round(total / len(group), 4) if group else None,
                # None for tables written before the strict reading was recorded (`savi eval --rescore` adds it).
                "strict_accuracy": round(strict / len(group), 4) if group and all(
                    r.strict_correct is not None for r in group) else None,
                "accuracy_answered": round(correct / answered, 4) if answered else None}

    by_category: dict[str, list[EvalResult]] = defaultdict(list)
    by_meta: dict[str, dict[str, list[EvalResult]]] = defaultdict(lambda: defaultdict(list))
    for r in scored:
        by_category[r.category].append(r)
        for key, value in r.meta.items():
            by_meta[key][value].append(r)
    return {
        "benchmark": bench.name, "split": bench.split, "round": model_round, "protocol": protocol, "model": model,
        **accuracy(scored),
        "evaluated": len(rows),
        "unmatched": sum(r.prediction is None for r in scored),
        "guessed": sum(r.prediction is None and r.fallback == RANDOM for r in scored),
        "judge": sum(r.prediction is None and r.fallback == JUDGE for r in scored),
        "strict_unparsed": sum(r.strict_prediction is None for r in scored),
        "video_errors": sum(r.error is not None for r in rows),
        "missing_videos": missing,
        "hidden_answers": sum(r.answer is None for r in rows),
        "by_category": {c: accuracy(g) for c, g in sorted(by_category.items())},
        "by": {k: {v: accuracy(g) for v, g in sorted(groups.items())} for k, groups in sorted(by_meta.items())},
    }


def summary_line(summary: dict[str, Any]) -> str:
    """The figures of a summary on one line: "lmms-eval accuracy 41.7% (25/60), strict 40.0%; 3 unmatched (2
    credited 1/k)"."""
    if summary["accuracy"] is None:
        return f"({summary['protocol']}) accuracy n/a (answers hidden)"
    line = (f"{summary['protocol']} accuracy {100 * summary['accuracy']:.1f}% ({summary['correct']}/"
            f"{summary['questions']})")
    if summary["protocol"] != "likelihood" and summary["strict_accuracy"] is not None:
        line += f", strict {100 * summary['strict_accuracy']:.1f}%"
    extras = []
    if summary["unmatched"]:
        credits = [f"{summary['guessed']} credited 1/k"] if summary["guessed"] else []
        credits += [f"{summary['judge']} left to a GPT judge by lmms-eval"] if summary["judge"] else []
        extras.append(f"{summary['unmatched']} unmatched" + (f" ({', '.join(credits)})" if credits else ""))
    extras += [f"{summary[k]} {k.replace('_', ' ')}" for k in ("video_errors", "missing_videos") if summary[k]]
    return line + (f"; {', '.join(extras)}" if extras else "")


def _score(row: EvalResult) -> float:
    # Tables written before `score` existed hold only `correct`.
    return row.score if row.score is not None else float(bool(row.correct))


def _write_submission(table: Path, bench: Benchmark, rows: list[EvalResult]) -> Path | None:
    """Hidden answers: the file to upload to the benchmark's leaderboard, beside the table."""
    if bench.answers_public:
        return None
    file_name, content = submission(bench, {r.question_id: r.prediction for r in rows})
    path = table.with_name(file_name)
    write_json(path, content)
    return path


def _submission_path(table: Path, bench: Benchmark) -> Path | None:
    """Where `_write_submission` put the submission file of a finished table."""
    if bench.answers_public:
        return None
    file_name, _ = submission(bench, {})
    return table.with_name(file_name)


def summaries(run: Run) -> list[dict[str, Any]]:
    """Every finished evaluation of a run, one summary per benchmark table and round."""
    found = []
    for art in run.artifacts("evals"):
        summary_path = _summary_path(art)
        if art.complete and summary_path.is_file():
            found.append({"table": art.name, **json.loads(summary_path.read_text())})
    return sorted(found, key=lambda s: (s["table"], s["round"]))
