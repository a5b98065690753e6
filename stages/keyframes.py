"""Stage `keyframes`: SeViLA's localizer, without training. Each sampled frame of a question's video is scored for
how much it holds what the question needs, and the top k (default 4), kept in temporal order, are the frames
`savi answer --keyframes` answers from.

Two localizers:
- policy (SeViLA's): the policy is shown one frame at a time with the prompt of `prompts/keyframes.toml` ("Does
  the information within the frame provide the necessary details to accurately answer the given question?"), and
  the frame's score is P(yes), read from the first token of the reply as the share of "yes" in "yes" + "no". The
  frames of several questions go through the model together, `batch_size` at a time.
- clip: the cosine between the question's CLIP text embedding and each frame's CLIP embedding, read from the
  run's frame cache (`stages/core/clip.py`), which `savi filter` fills and reuses: the frames are not embedded
  again. A cheap stand-in, as blind to order as CLIP always is, which does not matter for picking frames.

`round=<r>/keyframes.parquet` holds, per question, every frame's score, the chosen positions and the localizer.
Questions are the unit of work: a killed run resumes with the questions not yet written.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from stages.core import launch as launches
from stages.core.clip import ClipConfig, ClipScorer
from stages.core.errors import SaviError
from stages.core.model import Policy, Video, adapter_fingerprint, adapter_for_round, load_video, pending_batches
from stages.core.prompts import Prompt, load_prompts
from stages.core.records import Keyframes, Question
from stages.core.settings import LOCALIZERS, KeyframesConfig, ModelConfig
from stages.core.store import ArtifactWriter, Progress, Run, StageResult, file_sha256

# How a frame's "yes" and "no" may begin the reply (`Policy.score_labels` sums the spellings).
YES_NO = (("yes", "Yes"), ("no", "No"))


def top_k(scores: list[float], k: int) -> list[int]:
    """The positions of the k best scores, in temporal order (ties go to the earlier frame)."""
    best = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return sorted(best)


def policy_scores(policy: Policy, prompt: Prompt, videos: list[Video], questions: list[str]) -> list[list[float]]:
    """P(yes) of each frame of each video for its question: every frame of every question in one list, which the
    policy scores `batch_size` at a time, whatever question each belongs to."""
    frames = [Video.of(v.frames[i:i + 1], v.total_frames, v.fps, v.indices[i:i + 1]) for v in videos
              for i in range(len(v.frames))]
    asked = [prompt.render("frame", question=q) for v, q in zip(videos, questions) for _ in range(len(v.frames))]
    yes_no = np.array(policy.score_labels(frames, asked, [YES_NO] * len(frames)))
    p_yes = np.exp(yes_no[:, 0] - np.logaddexp(yes_no[:, 0], yes_no[:, 1]))
    scores, start = [], 0
    for v in videos:
        scores.append([round(float(p), 6) for p in p_yes[start:start + len(v.frames)]])
        start += len(v.frames)
    return scores


def clip_scores(scorer: ClipScorer, frame_embeddings: np.ndarray, question: str) -> list[float]:
    """The cosine of each frame's embedding with the question's (its segments' mean, for a long question)."""
    (text,) = scorer.text_embeddings([question])
    return [round(float(s), 6) for s in (frame_embeddings @ text.T).mean(axis=1)]


def run(run: Run, round: int, cfg: KeyframesConfig, model_cfg: ModelConfig, clip_cfg: ClipConfig, *,
        prompts_dir: Path | None = None, force: bool = False, progress: Progress | None = None) -> StageResult:
    if cfg.localizer not in LOCALIZERS:
        raise SaviError(f"unknown --localizer {cfg.localizer!r}: use {' or '.join(LOCALIZERS)}")
    questions_art = run.require("questions", round)
    questions: list[Question] = questions_art.read()
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    params = asdict(cfg)
    adapter = prompt = scorer = None
    if cfg.localizer == "policy":
        adapter = adapter_for_round(run, round)
        prompt = load_prompts(prompts_dir)["keyframes"]
        params.update(model=model_cfg.id, adapter=adapter_fingerprint(adapter), prompt_version=prompt.version)
    else:
        scorer = ClipScorer.load(clip_cfg)
        params["clip"] = scorer.fingerprint
    writer = ArtifactWriter(run.artifact("keyframes", round), params=params,
                            inputs={"questions": file_sha256(questions_art.path)}, force=force, incremental=True,
                            launch=launches.current())
    if writer.up_to_date:
        return writer.cached_result()

    def done(q: Question) -> bool:
        return q.question_id in writer.done_items

    ordered = sorted(questions, key=lambda q: q.video_id)
    todo = [q for q in ordered if not done(q)]
    tick = writer.ticker(progress, len(todo))
    try:
        if cfg.localizer == "policy" and todo:
            policy = Policy.load(model_cfg, adapter, run=run)
            # A few questions at a time: their frames fill the policy's batches, and each is written when scored.
            for batch in pending_batches(ordered, model_cfg.batch_size, done, writer.launch):
                videos = [load_video(run, samples[q.video_id]) for q in batch]
                for q, scores in zip(batch, policy_scores(policy, prompt, videos, [q.text for q in batch])):
                    if writer.add(_row(q, "policy", scores, cfg.top_k, prompt.version, policy.name)):
                        tick()
        elif cfg.localizer == "clip":
            for (q,) in pending_batches(ordered, 1, done, writer.launch):
                embeddings = scorer.frame_embeddings(run, samples[q.video_id])
                writer.add(_row(q, "clip", clip_scores(scorer, embeddings, q.text), cfg.top_k, "",
                                scorer.fingerprint))
                tick()
    finally:
        writer.close()
    if not writer.gather():  # another process of the launch finishes the table
        return writer.share_result()

    current = {q.question_id for q in questions}
    rows = [k for k in writer.records() if k.question_id in current]
    counts = {"questions": len(rows), "frames_scored": sum(len(k.scores) for k in rows),
              "keyframes": sum(len(k.chosen) for k in rows), "localizer": cfg.localizer}
    return writer.finish_result(len(todo), counts, keep=current)


def _row(question: Question, localizer: str, scores: list[float], k: int, prompt_version: str,
         model: str) -> Keyframes:
    return Keyframes(question.question_id, question.video_id, localizer, scores, top_k(scores, k), prompt_version,
                     model)


def keyframes_of(run: Run, round: int) -> dict[str, Keyframes]:
    """The round's keyframes by question, for the stages that answer from them."""
    return {k.question_id: k for k in run.require("keyframes", round).read()}
