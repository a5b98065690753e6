"""Stage `answer`: the policy answers each question, once or several times.

Candidate k of a question is sampled at temperature `temperatures[k % len(temperatures)]`, so the default of one
candidate gives the single initial answer of VideoSAVi v3, and five candidates give v1's spread over
0.3 ... 1.0 for judge mode. Each answer records its temperature, sample index, token count and model.

Temporal negatives (`--temporal reverse,shuffle,drop`, after TimeWarp, TPO and TEMPLE): a seeded share of the
questions (`--temporal-share`) is also answered once per kind named from its video's frames perturbed that way
(`stages/core/temporal.py`), at the first temperature, as candidate 0 is. Each such answer records the
perturbation and the frame order it was shown; `savi critique` pairs candidate 0 (chosen) with it (rejected) as a
`temporal:<kind>` pair and never critiques it.

Keyframes (`--keyframes`, SeViLA's answerer): every answer is written from its question's keyframes
(`savi keyframes`) in temporal order instead of all the sampled frames; a temporal negative perturbs those. Each
answer records the frames it was shown (`frame_order`) and the localizer that chose them.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from stages.core import launch as launches
from stages.core.errors import SaviError
from stages.core.model import (
    Decoding,
    Policy,
    Video,
    adapter_fingerprint,
    adapter_for_round,
    load_video,
    pending_batches,
)
from stages.core.prompts import load_prompts
from stages.core.records import Answer, Keyframes, Question
from stages.core.settings import PERTURBATIONS, AnswerConfig, ModelConfig
from stages.core.store import (
    ArtifactWriter,
    Progress,
    Run,
    StageResult,
    file_sha256,
    fingerprint,
)
from stages.core.temporal import frame_order
from stages.keyframes import keyframes_of


def answer_id(question_id: str, temperature: float, sample_index: int, perturbation: str | None = None) -> str:
    parts = [question_id, temperature, sample_index]
    return fingerprint(parts if perturbation is None else [*parts, perturbation])


def takes_temporal(question_id: str, share: float, seed: int) -> bool:
    """Whether a question is among the `share` given temporal negatives: a seeded draw of its own, so the choice
    does not depend on which other questions the round has."""
    return share >= 1.0 or random.Random(f"{seed}:{question_id}:temporal").random() < share


def run(run: Run, round: int, cfg: AnswerConfig, model_cfg: ModelConfig, *, prompts_dir: Path | None = None,
        force: bool = False, progress: Progress | None = None) -> StageResult:
    if cfg.candidates < 1:
        raise SaviError("--candidates must be at least 1")
    if not cfg.temperatures or any(t < 0 for t in cfg.temperatures):
        raise SaviError("--temperatures must be a comma-separated list of numbers >= 0, e.g. 0.3,0.7")
    unknown = [kind for kind in cfg.temporal if kind not in PERTURBATIONS]
    if unknown:
        raise SaviError(f"unknown --temporal {unknown[0]!r}: use any of {', '.join(PERTURBATIONS)}")
    questions_art = run.require("questions", round)
    adapter = adapter_for_round(run, round)
    prompt = load_prompts(prompts_dir)["answer"]  # all of them: a misnamed override file is an error
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    questions: list[Question] = questions_art.read()

    # One decoding per temperature: candidate k is sampled at temperatures[k % len(temperatures)].
    decodings = {t: Decoding(max_new_tokens=cfg.max_new_tokens, temperature=t) for t in cfg.temperatures}
    params = {**asdict(cfg), "temperatures": list(cfg.temperatures), "prompt_version": prompt.version,
              "model": model_cfg.id, "adapter": adapter_fingerprint(adapter), "seed": model_cfg.seed,
              "decoding": [d.record() for _, d in sorted(decodings.items())]}
    inputs = {"questions": file_sha256(questions_art.path)}
    if cfg.temporal:
        params["temporal"] = list(cfg.temporal)
    else:  # tables made before temporal negatives existed stay up to date
        del params["temporal"], params["temporal_share"]
    keyframes = keyframes_of(run, round) if cfg.keyframes else {}
    if cfg.keyframes:
        unlocated = sum(q.question_id not in keyframes for q in questions)
        if unlocated:
            raise SaviError(f"{unlocated} of round {round}'s questions have no keyframes (the questions changed since "
                            f"`savi keyframes`); run `savi keyframes --run {run.name} --round {round}` again")
        inputs["keyframes"] = file_sha256(run.artifact("keyframes", round).path)
    else:  # likewise for keyframes
        del params["keyframes"]
    art = run.artifact("answers", round)
    writer = ArtifactWriter(art, params=params, inputs=inputs, force=force, incremental=True,
                            launch=launches.current())
    if writer.up_to_date:
        return writer.cached_result()

    slots = [Slot(q, k, cfg.temperatures[k % len(cfg.temperatures)]) for q in questions for k in range(cfg.candidates)]
    slots += [Slot(q, 0, cfg.temperatures[0], kind) for q in questions
              if takes_temporal(q.question_id, cfg.temporal_share, model_cfg.seed) for kind in cfg.temporal]
    todo = [s for s in slots if s.answer_id not in writer.done_items]
    tick = writer.ticker(progress, len(todo))
    policy = Policy.load(model_cfg, adapter, run=run) if todo else None
    try:
        # A batch is sampled at one temperature, so batches are formed per temperature, videos kept together.
        for temperature in sorted({s.temperature for s in todo}):
            group = sorted((s for s in slots if s.temperature == temperature), key=lambda s: s.question.video_id)
            for batch in pending_batches(group, model_cfg.batch_size, lambda s: s.answer_id in writer.done_items,
                                         writer.launch):
                videos = {vid: load_video(run, samples[vid]) for vid in {s.question.video_id for s in batch}}
                shown = [s.frames(videos[s.question.video_id], keyframes.get(s.question.question_id),
                                  model_cfg.seed) for s in batch]
                user_turns = [prompt.render("answer", question=s.question.text) for s in batch]
                outputs = policy.generate(shown, user_turns, keys=[s.answer_id for s in batch],
                                          decoding=decodings[temperature])
                for s, video, user_turn, out in zip(batch, shown, user_turns, outputs):
                    q = s.question
                    localizer = keyframes[q.question_id].localizer if keyframes else None
                    if writer.add(Answer(s.answer_id, q.question_id, q.video_id, out.text, s.temperature,
                                         s.sample_index, out.num_tokens, out.finished, prompt.version, policy.name,
                                         prompt=user_turn, perturbation=s.perturbation, frame_order=video.order,
                                         localizer=localizer)):
                        tick()
    finally:
        writer.close()
    if not writer.gather():  # another process of the launch finishes the table
        return writer.share_result()

    current = {s.answer_id for s in slots}
    rows = [a for a in writer.records() if a.answer_id in current]
    counts = {"questions": len(questions), "answers": len(rows), "empty": sum(not a.text for a in rows),
              "cut_off": sum(not a.finished for a in rows)}
    if cfg.temporal:
        counts["temporal"] = {kind: sum(a.perturbation == kind for a in rows) for kind in cfg.temporal}
    return writer.finish_result(len(todo), counts, keep=current)


@dataclass(frozen=True)
class Slot:
    """One answer to write: candidate `sample_index` of a question, from the true frames or perturbed ones."""

    question: Question
    sample_index: int
    temperature: float
    perturbation: str | None = None

    @property
    def answer_id(self) -> str:
        return answer_id(self.question.question_id, self.temperature, self.sample_index, self.perturbation)

    def frames(self, video: Video, keyframes: Keyframes | None, seed: int) -> Video:
        """What this answer is written from: the video's sampled frames, or its question's keyframes, perturbed
        (seeded by the question) for a temporal negative."""
        if keyframes is not None:
            video = video.reordered(keyframes.chosen)
        if self.perturbation is None:
            return video
        return video.reordered(frame_order(self.perturbation, len(video.frames), f"{seed}:{self.question.question_id}"))
