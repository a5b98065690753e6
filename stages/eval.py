"""Stage `eval`: a model of a run answers a video QA benchmark, read in its real published layout.

Round r evaluates M(r), the base model plus the adapter trained in round r; round 0 is the base model. Every
question gets a row in `round=<r>/eval/<benchmark>.parquet` (a prediction, or the reason there is none), and
`<benchmark>.summary.json` beside it holds the accuracy, overall and per category. Hidden-answer splits (the
full EgoSchema, test sets) also get the submission file their leaderboard expects.

Two ways to answer:
- likelihood (the default): one forward pass per question scores each option's label ("A", "B", ... or yes/no)
  as the first token of the reply, and the best-scoring option is the prediction. It cannot fail to parse.
  Benchmarks whose options are whole replies (the world's) score each reply whole instead, one pass per option.
- generate: the model writes a reply to the benchmark's lmms-eval prompt, greedily, and `parse_choice` reads
  it. Unlike the reference scorers it never guesses a random letter: an unreadable reply counts as wrong and is
  reported separately as `unparsed`.

Both use the benchmark's own prompt, and the frames are sampled as `savi sample` does (uniform segment
midpoints, within the question's time span where the benchmark gives one).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.benchmarks import BENCHMARKS, Benchmark, EvalItem, read_benchmark, submission
from stages.benchmarks.choice import LETTERS, parse_choice
from stages.core.errors import SaviError
from stages.core.model import (
    Decoding,
    Policy,
    Video,
    adapter_fingerprint,
    pending_batches,
    trained_adapter,
    trained_rounds,
)
from stages.core.records import EvalResult
from stages.core.settings import EVAL_MODES, EvalConfig, ModelConfig
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
    ticker,
    write_json,
)
from stages.core.video import VideoError, read_frame_folder, read_video

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


def table_name(bench: Benchmark) -> str:
    """`egoschema` for the default split, `egoschema-full` for another, so splits never share a table."""
    default = BENCHMARKS[bench.name].default_split
    return bench.name if bench.split == default else f"{bench.name}-{bench.split}"


def run(run: Run, round: int, source: BenchmarkSource, cfg: EvalConfig, model_cfg: ModelConfig, *,
        force: bool = False, progress: Progress | None = None) -> EvalOutcome:
    if cfg.mode not in EVAL_MODES:
        raise SaviError(f"unknown --mode {cfg.mode!r}: use {' or '.join(EVAL_MODES)}")
    if round < 0:
        raise SaviError(f"--round must be 0 (the base model) or a trained round; got {round}")
    bench, items, present, missing = questions(source, cfg)
    adapter = trained_adapter(run, round)

    name = table_name(bench)
    params = {"benchmark": bench.name, "split": bench.split, "mode": cfg.mode, "frames": cfg.frames,
              "max_side": cfg.max_side, "model": model_cfg.id, "adapter": adapter_fingerprint(adapter)}
    if cfg.mode == "generate":
        params["max_new_tokens"] = cfg.max_new_tokens
        params["decoding"] = Decoding(max_new_tokens=cfg.max_new_tokens).record()
    inputs = {"annotations": {p.name: file_sha256(p) for p in bench.sources}, "questions": len(items),
              "videos_found": len(present)}
    art = run.eval_artifact(name, round)
    summary_path = art.path.with_name(f"{name}.summary.json")
    writer = ArtifactWriter(art, params=params, inputs=inputs, force=force, incremental=True)
    if writer.up_to_date:
        summary = json.loads(summary_path.read_text())
        return EvalOutcome(name, writer.cached_result(), summary, summary_path, _submission_path(art.path, bench))

    def done(item: EvalItem) -> bool:
        return item.question_id in writer.done_items

    ordered = sorted(present, key=lambda i: str(i.video))
    todo = [i for i in ordered if not done(i)]
    tick = ticker(progress, len(todo))
    policy = Policy.load(model_cfg, adapter, run=run) if todo else None
    try:
        # Batches are cut from all the questions, as a run that was never interrupted cuts them: a question is
        # scored beside the same others (padded alike), so a resumed table holds the very same numbers.
        for batch, videos in _decoded_batches(list(pending_batches(ordered, model_cfg.batch_size, done)), cfg):
            for row in _answer(policy, batch, videos, cfg, name):
                if writer.add(row):
                    tick()
    finally:
        writer.close()

    # The summary is written before the manifest, so a finished table always has one.
    current = {i.question_id for i in present}
    rows: list[EvalResult] = [r for r in writer.records() if r.question_id in current]
    summary = summarize(rows, bench, round, cfg.mode, model_cfg.id, missing=len(missing))
    write_json(summary_path, summary)
    submission_path = _write_submission(art.path, bench, rows)
    counts = {k: summary[k] for k in ("questions", "accuracy", "correct", "unparsed", "video_errors",
                                      "missing_videos")}
    result = writer.finish_result(len(todo), counts, keep=current)
    return EvalOutcome(name, result, summary, summary_path, submission_path)


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


def _decoded_batches(batches: list[Sequence[EvalItem]],
                     cfg: EvalConfig) -> Iterator[tuple[Sequence[EvalItem], dict[str, Video | str]]]:
    """The batches with their videos decoded, the next batch decoding in a thread while the model runs (decord
    releases the GIL). A video that cannot be decoded maps to its error message."""
    def decode(batch: Sequence[EvalItem]) -> dict[str, Video | str]:
        videos: dict[str, Video | str] = {}
        for item in batch:
            key = _video_key(item)
            if key not in videos:
                try:
                    videos[key] = decode_item(item, cfg)
                except VideoError as e:
                    videos[key] = str(e)
        return videos

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(decode, batches[0]) if batches else None
        for k, batch in enumerate(batches):
            videos = ahead.result()
            ahead = pool.submit(decode, batches[k + 1]) if k + 1 < len(batches) else None
            yield batch, videos


def _video_key(item: EvalItem) -> str:
    return f"{item.video}|{item.start_s}|{item.end_s}"


def decode_item(item: EvalItem, cfg: EvalConfig) -> Video:
    """The frames of a benchmark item as eval shows them to the model (also what a world model trains on)."""
    if item.frame_fps is not None:
        decoded = read_frame_folder(item.video, frames=cfg.frames, max_side=cfg.max_side, folder_fps=item.frame_fps,
                                    start_s=item.start_s, end_s=item.end_s)
    else:
        decoded = read_video(item.video, frames=cfg.frames, max_side=cfg.max_side, start_s=item.start_s,
                             end_s=item.end_s)
    return Video.of(np.stack(decoded.frames), decoded.num_frames, decoded.fps, decoded.indices)


def _answer(policy: Policy, batch: Sequence[EvalItem], videos: dict[str, Video | str], cfg: EvalConfig,
            table: str) -> list[EvalResult]:
    """One row per item: scored or generated together where the video decoded, an error row where it did not."""
    ok = [i for i in batch if isinstance(videos[_video_key(i)], Video)]
    answers: dict[str, tuple[int | None, str | None, str, list[float]]] = {}
    if ok and cfg.mode == "likelihood":
        # Benchmarks whose options are whole replies score them whole; the others score each option's label.
        whole = [i for i in ok if i.replies]
        by_label = [i for i in ok if not i.replies]
        scores = {}
        if whole:
            scored = policy.score_replies([videos[_video_key(i)] for i in whole], [i.prompt for i in whole],
                                          [i.replies for i in whole])
            scores.update(zip([i.question_id for i in whole], scored))
        if by_label:
            scored = policy.score_labels([videos[_video_key(i)] for i in by_label], [i.prompt for i in by_label],
                                         [labels(i) for i in by_label])
            scores.update(zip([i.question_id for i in by_label], scored))
        for item in ok:
            option_scores = scores[item.question_id]
            answers[item.question_id] = (int(np.argmax(option_scores)), "likelihood", "", option_scores)
    elif ok:
        decoding = Decoding(max_new_tokens=cfg.max_new_tokens)
        replies = policy.generate([videos[_video_key(i)] for i in ok], [i.prompt for i in ok],
                                  keys=[i.question_id for i in ok], decoding=decoding)
        for item, reply in zip(ok, replies):
            prediction, how = parse_choice(reply.text, item.options, item.yes_no)
            answers[item.question_id] = (prediction, how, reply.text, [])

    rows = []
    for item in batch:
        video = videos[_video_key(item)]
        prediction, how, response, option_scores = answers.get(item.question_id, (None, None, "", []))
        correct = None if item.answer is None or isinstance(video, str) else prediction == item.answer
        rows.append(EvalResult(
            question_id=item.question_id, benchmark=table, category=item.category,
            meta=dict(item.meta), video=item.video_name, question=item.question, options=list(item.options),
            answer=item.answer, mode=cfg.mode, prediction=prediction, correct=correct, parsed_as=how,
            response=response, option_scores=[round(s, 5) for s in option_scores],
            num_frames=0 if isinstance(video, str) else len(set(video.indices)),
            error=video if isinstance(video, str) else None, model=policy.name))
    return rows


def labels(item: EvalItem) -> list[tuple[str, ...]]:
    """How each option's answer can begin: its letter, or yes/no in either case."""
    if item.yes_no:
        return [(o, o.capitalize()) for o in item.options]
    return [(letter,) for letter in LETTERS[:len(item.options)]]


def summarize(rows: list[EvalResult], bench: Benchmark, model_round: int, mode: str, model: str,
              missing: int = 0) -> dict[str, Any]:
    """Accuracy over the questions with a public answer and a decodable video: unparsed replies count as wrong
    (as lmms-eval counts them), and `accuracy_answered` gives the official scripts' answered-only figure."""
    scored = [r for r in rows if r.answer is not None and r.error is None]

    def accuracy(group: list[EvalResult]) -> dict[str, Any]:
        correct = sum(bool(r.correct) for r in group)
        answered = sum(r.prediction is not None for r in group)
        return {"questions": len(group), "correct": correct,
                "accuracy": round(correct / len(group), 4) if group else None,
                "accuracy_answered": round(correct / answered, 4) if answered else None}

    by_category: dict[str, list[EvalResult]] = defaultdict(list)
    by_meta: dict[str, dict[str, list[EvalResult]]] = defaultdict(lambda: defaultdict(list))
    for r in scored:
        by_category[r.category].append(r)
        for key, value in r.meta.items():
            by_meta[key][value].append(r)
    return {
        "benchmark": bench.name, "split": bench.split, "round": model_round, "mode": mode, "model": model,
        **accuracy(scored),
        "evaluated": len(rows),
        "unparsed": sum(r.prediction is None for r in scored),
        "video_errors": sum(r.error is not None for r in rows),
        "missing_videos": missing,
        "hidden_answers": sum(r.answer is None for r in rows),
        "by_category": {c: accuracy(g) for c, g in sorted(by_category.items())},
        "by": {k: {v: accuracy(g) for v, g in sorted(groups.items())} for k, groups in sorted(by_meta.items())},
    }


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
        summary_path = art.path.with_name(f"{art.name}.summary.json")
        if art.complete and summary_path.is_file():
            found.append({"table": art.name, **json.loads(summary_path.read_text())})
    return sorted(found, key=lambda s: (s["table"], s["round"]))
