"""Stage `ask`: the policy writes questions about each sampled video.

For each video and each question kind (spatial and temporal by default, as in VideoSAVi v3; what/why/how for
v1), the policy is asked for a few questions, and its output is parsed as JSON or as numbered lines.
Empty, overlong and duplicate questions are removed. A (video, kind) whose output yields no question counts as a
parse failure in the manifest. All of a video's questions are one unit of work, so a resumed run never leaves a
video half asked.

`from_benchmark` takes a round's questions from a benchmark instead (`savi ask --from NAME --data PATH`): the
questions of every video the run sampled, each with its known answer as `truth`. A round on them is a probe:
`savi filter` then says how often its judge agrees with the truth, before any GPU hours go into DPO.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from stages.benchmarks import Benchmark
from stages.core import launch as launches
from stages.core.errors import SaviError
from stages.core.model import (
    Decoding,
    Policy,
    adapter_fingerprint,
    adapter_for_round,
    load_video,
    pending_batches,
)
from stages.core.parsing import normalize_text, parse_questions
from stages.core.prompts import load_prompts
from stages.core.records import Question
from stages.core.settings import KINDS, AskConfig, ModelConfig
from stages.core.store import (
    ArtifactWriter,
    Progress,
    Run,
    StageResult,
    file_sha256,
    fingerprint,
)


def questions_per_kind(per_video: int, kinds: tuple[str, ...]) -> dict[str, int]:
    base, extra = divmod(per_video, len(kinds))
    return {kind: base + (i < extra) for i, kind in enumerate(kinds)}


def question_id(video_id: str, kind: str, text: str) -> str:
    return fingerprint([video_id, kind, normalize_text(text)])


def run(run: Run, round: int, cfg: AskConfig, model_cfg: ModelConfig, *, prompts_dir: Path | None = None,
        force: bool = False, progress: Progress | None = None) -> StageResult:
    unknown = [k for k in cfg.kinds if k not in KINDS]
    if unknown or not cfg.kinds:
        raise SaviError(f"unknown question kind {', '.join(unknown) or '(none)'}; choose from {', '.join(KINDS)}")
    if cfg.per_video < len(cfg.kinds):
        raise SaviError(f"--per-video {cfg.per_video} is fewer than one question per kind ({len(cfg.kinds)} kinds)")
    samples_art = run.require("samples")
    adapter = adapter_for_round(run, round)
    prompt = load_prompts(prompts_dir)["ask"]  # all of them: a misnamed override file is an error

    videos = [s for s in samples_art.read() if s.status == "ok"]
    if not videos:
        raise SaviError(f"run '{run.name}' has no video that sampled without error; see `savi status`")
    decoding = Decoding(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    params = {**asdict(cfg), "kinds": list(cfg.kinds), "prompt_version": prompt.version, "model": model_cfg.id,
              "adapter": adapter_fingerprint(adapter), "seed": model_cfg.seed, "decoding": decoding.record()}
    inputs = {"samples": file_sha256(samples_art.path)}
    art = run.artifact("questions", round)
    writer = ArtifactWriter(art, params=params, inputs=inputs, force=force, incremental=True,
                            launch=launches.current())
    if writer.up_to_date:
        return writer.cached_result()

    todo = [v for v in videos if v.video_id not in writer.done_items]
    per_kind = questions_per_kind(cfg.per_video, cfg.kinds)
    tick = writer.ticker(progress, len(todo))
    policy = Policy.load(model_cfg, adapter, run=run) if todo else None
    try:
        # One batch of generations covers several videos, all their kinds at once.
        for chunk in pending_batches(videos, max(1, model_cfg.batch_size // len(cfg.kinds)),
                                     lambda v: v.video_id in writer.done_items, writer.launch):
            loaded = {v.video_id: load_video(run, v) for v in chunk}
            requests = [(v, kind) for v in chunk for kind in cfg.kinds]
            outputs = policy.generate(
                [loaded[v.video_id] for v, _ in requests],
                [prompt.render("questions", n=per_kind[kind], focus=prompt.tables["focus"][kind])
                 for _, kind in requests],
                keys=[f"{v.video_id}:{kind}" for v, kind in requests], decoding=decoding)
            for video in chunk:
                questions: dict[str, Question] = {}
                for (v, kind), out in zip(requests, outputs):
                    if v.video_id != video.video_id:
                        continue
                    texts, parsed_as = parse_questions(out.text, max_chars=cfg.max_chars)
                    for text in texts[: per_kind[kind]]:
                        qid = question_id(video.video_id, kind, text)
                        questions.setdefault(qid, Question(qid, video.video_id, kind, text, parsed_as,
                                                           prompt.version, policy.name))
                if writer.add_item(video.video_id, list(questions.values())):
                    tick()
    finally:
        writer.close()
    if not writer.gather():  # another process of the launch finishes the table
        return writer.share_result()

    current = {v.video_id for v in videos}
    rows = [q for q in writer.records() if q.video_id in current]
    done_videos = writer.done_items & current
    kinds_found = {(q.video_id, q.kind) for q in rows}
    counts = {"videos": len(done_videos), "questions": len(rows),
              "parse_failures": len(done_videos) * len(cfg.kinds) - len(kinds_found),
              **{f"kind_{k}": sum(q.kind == k for q in rows) for k in cfg.kinds}}
    return writer.finish_result(len(todo), counts, keep=current)


def from_benchmark(run: Run, round: int, bench: Benchmark, *, force: bool = False) -> StageResult:
    """Round `round`'s questions, taken from `bench`: each question whose video the run sampled, with its kind
    (the benchmark's category) and its right answer as `truth` (the whole reply where the benchmark gives
    replies, else the option's text)."""
    samples_art = run.require("samples")
    sampled = {Path(s.path).resolve(): s for s in samples_art.read() if s.status == "ok"}
    found = [(item, sampled.get(item.video.resolve()) if item.video else None) for item in bench.items]
    asked = [(item, sample) for item, sample in found if sample is not None]
    if not asked:
        raise SaviError(f"none of the {len(bench.items)} questions of {bench.name} ({bench.split}) is about a video "
                        f"run '{run.name}' sampled; sample the benchmark's videos first, e.g. "
                        f"`savi sample VIDEOS --run {run.name}`")
    params = {"benchmark": bench.name, "split": bench.split,
              "sources": {str(p): file_sha256(p) for p in bench.sources}}
    writer = ArtifactWriter(run.artifact("questions", round), params=params,
                            inputs={"samples": file_sha256(samples_art.path)}, force=force)
    if writer.up_to_date:
        return writer.cached_result()
    by_video: dict[str, list[Question]] = {}
    for item, sample in asked:
        truth = None if item.answer is None else (item.replies or item.options)[item.answer]
        by_video.setdefault(sample.video_id, []).append(Question(
            item.question_id, sample.video_id, item.category, item.question, "benchmark",
            f"{bench.name}/{bench.split}", bench.name, truth=truth))
    try:
        for video_id, questions in by_video.items():
            writer.add_item(video_id, questions)
    finally:
        writer.close()
    counts = {"videos": len(by_video), "questions": len(asked), "not_sampled": len(found) - len(asked),
              **{f"kind_{k}": sum(item.category == k for item, _ in asked)
                 for k in sorted({item.category for item, _ in asked})}}
    return writer.finish_result(len(by_video), counts)
