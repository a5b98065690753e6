"""Stage `critique`: the policy judges its own answers and proposes preference pairs.

critique mode (the default, VideoSAVi v3): the policy critiques each answer against the frames, naming wrong
spatial relations, wrong order, hallucinated objects and missing details. It then writes a revised answer, and
(revised > initial) is a candidate pair. When the critique finds no error, or the revision barely differs from
the answer, the pair is still recorded, marked unusable with the reason.

judge mode (VideoSAVi v1): the policy scores every candidate answer 1-5 for relevance, accuracy, temporal
grounding and clarity, and each question's best answer is paired with its worst.

Temporal negatives (answers from perturbed frames, `savi answer --temporal`) are not critiqued: each becomes a
`temporal:<kind>` pair, its question's candidate 0 from the true frames chosen over it.

Critiques are the resumable unit of work (one per answer). Once every answer is done, the candidate pairs are
derived from them in one step, with no model call, into `candidates.parquet`, which `savi filter` reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

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
from stages.core.parsing import parse_critique, parse_judge, parse_revision, similarity
from stages.core.prompts import load_prompts
from stages.core.records import Answer, Candidate, Critique, Question
from stages.core.settings import CRITIQUE_MODES, CritiqueConfig, ModelConfig
from stages.core.store import (
    ArtifactWriter,
    Progress,
    Run,
    StageResult,
    file_sha256,
    fingerprint,
)


def critique_id(answer: Answer, mode: str) -> str:
    """From the answer's text too: if the answers are redone, their old critiques no longer count."""
    return fingerprint([answer.answer_id, mode, answer.text])


def run(run: Run, round: int, cfg: CritiqueConfig, model_cfg: ModelConfig, *, prompts_dir: Path | None = None,
        force: bool = False, progress: Progress | None = None) -> StageResult:
    """Critique (or judge) every answer of the round, then derive the round's candidate pairs from the verdicts."""
    if cfg.mode not in CRITIQUE_MODES:
        raise SaviError(f"unknown --mode {cfg.mode!r}: use critique or judge")
    answers_art = run.require("answers", round)
    adapter = adapter_for_round(run, round)
    prompt = load_prompts(prompts_dir)[cfg.mode]  # all of them: a misnamed override file is an error
    questions: dict[str, Question] = {q.question_id: q for q in run.artifact("questions", round).read()}
    every_answer: list[Answer] = answers_art.read()
    answers = [a for a in every_answer if a.perturbation is None]
    if cfg.mode == "judge" and max(Counter(a.question_id for a in answers).values(), default=0) < 2:
        raise SaviError("judge mode pairs the best and worst of several answers per question, but round "
                        f"{round} has one answer per question; run `savi answer --candidates 5 --force` first")

    params = {**asdict(cfg), "prompt_version": prompt.version, "model": model_cfg.id,
              "adapter": adapter_fingerprint(adapter), "seed": model_cfg.seed,
              "decoding": _decoding(cfg).record()}
    result = _critique_answers(run, round, cfg, model_cfg, adapter, prompt, answers, questions, params,
                               {"answers": file_sha256(answers_art.path)}, force, progress)
    if not launches.current().is_main:  # the main process of a launch derives the pairs
        return result
    _write_candidates(run, round, cfg, every_answer, questions, params, force)
    return result


def _critique_answers(run: Run, round: int, cfg: CritiqueConfig, model_cfg: ModelConfig, adapter: Path | None,
                      prompt, answers: list[Answer], questions: dict[str, Question], params: dict[str, Any],
                      inputs: dict[str, Any], force: bool, progress: Progress | None) -> StageResult:
    """The critiques table: one critique (or judgement) per answer, resumable answer by answer."""
    art = run.artifact("critiques", round)
    writer = ArtifactWriter(art, params=params, inputs=inputs, force=force, incremental=True,
                            launch=launches.current())
    if writer.up_to_date:
        return writer.cached_result()

    def done(a: Answer) -> bool:
        return critique_id(a, cfg.mode) in writer.done_items

    ordered = sorted(answers, key=lambda a: a.video_id)
    todo = [a for a in ordered if not done(a)]
    tick = writer.ticker(progress, len(todo))
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    policy = Policy.load(model_cfg, adapter, run=run) if todo else None
    try:
        for batch in pending_batches(ordered, model_cfg.batch_size, done, writer.launch):
            videos = [load_video(run, samples[a.video_id]) for a in batch]
            qs = [questions[a.question_id].text for a in batch]
            rows = (_critique_and_revise if cfg.mode == "critique" else _judge)(policy, prompt, cfg, batch, qs,
                                                                               videos)
            for row in rows:
                if writer.add(row):
                    tick()
    finally:
        writer.close()
    if not writer.gather():  # another process of the launch finishes the table
        return writer.share_result()

    current = {critique_id(a, cfg.mode) for a in answers}
    critiques = [c for c in writer.records() if c.critique_id in current]
    return writer.finish_result(len(todo), _critique_counts(critiques), keep=current)


def _write_candidates(run: Run, round: int, cfg: CritiqueConfig, answers: list[Answer],
                      questions: dict[str, Question], params: dict[str, Any], force: bool) -> None:
    """The candidate pairs, a pure function of the critiques: rebuilt, with no model, whenever they change."""
    critiques_art, candidates_art = run.artifact("critiques", round), run.artifact("candidates", round)
    inputs = {"critiques": file_sha256(critiques_art.path)}
    negatives = [a for a in answers if a.perturbation is not None]
    if negatives:  # the temporal pairs come from the answers themselves
        inputs["answers"] = file_sha256(run.artifact("answers", round).path)
    previous = candidates_art.manifest() if candidates_art.complete else None
    if previous is not None and previous["inputs"] == inputs and previous["params"] == params and not force:
        return
    pairs = derive_candidates(critiques_art.read(), {a.answer_id: a for a in answers}, questions, cfg)
    pairs += temporal_candidates(answers, questions)
    writer = ArtifactWriter(candidates_art, params=params, inputs=inputs, force=True)
    for pair in pairs:
        writer.add(pair)
    notes = Counter(p.note or "usable" for p in pairs)
    writer.finish(counts={"pairs": len(pairs), **dict(sorted(notes.items()))})


def _critique_and_revise(policy: Policy, prompt, cfg: CritiqueConfig, batch: list[Answer], qs: list[str],
                         videos) -> list[Critique]:
    keys = [critique_id(a, cfg.mode) for a in batch]
    critiques = policy.generate(videos, [prompt.render("critique", question=q, answer=a.text)
                                         for q, a in zip(qs, batch)],
                                keys=keys, decoding=_decoding(cfg))
    # Revise every answer, even when the critique found nothing: the pair is recorded (and marked unusable), so
    # the data shows how often the policy's self-assessment and its rewrites disagree.
    revisions = policy.generate(videos, [prompt.render("revise", question=q, answer=a.text, critique=c.text)
                                         for q, a, c in zip(qs, batch, critiques)],
                                keys=[f"{k}:revise" for k in keys], decoding=_decoding(cfg))
    rows = []
    for key, a, c, r in zip(keys, batch, critiques, revisions):
        verdict = parse_critique(c.text)
        revised = parse_revision(r.text)
        rows.append(Critique(key, a.answer_id, a.question_id, a.video_id, cfg.mode, c.text,
                             found_errors=verdict.found_errors, error_types=list(verdict.error_types),
                             revision=revised, revision_similarity=round(similarity(a.text, revised), 4),
                             prompt_version=prompt.version, model=policy.name, revision_finished=r.finished))
    return rows


def _judge(policy: Policy, prompt, cfg: CritiqueConfig, batch: list[Answer], qs: list[str], videos) -> list[Critique]:
    keys = [critique_id(a, cfg.mode) for a in batch]
    outputs = policy.generate(videos, [prompt.render("judge", question=q, answer=a.text) for q, a in zip(qs, batch)],
                              keys=keys, decoding=_decoding(cfg))
    rows = []
    for key, a, out in zip(keys, batch, outputs):
        score = parse_judge(out.text)
        rows.append(Critique(key, a.answer_id, a.question_id, a.video_id, cfg.mode, out.text,
                             relevance=score.relevance, accuracy=score.accuracy,
                             temporal_grounding=score.temporal_grounding, clarity=score.clarity,
                             score=score.overall, prompt_version=prompt.version, model=policy.name))
    return rows


def derive_candidates(critiques: list[Critique], answers: dict[str, Answer], questions: dict[str, Question],
                      cfg: CritiqueConfig) -> list[Candidate]:
    if cfg.mode == "critique":
        return [_revision_pair(c, answers[c.answer_id], questions[c.question_id], cfg) for c in critiques]
    pairs = []
    by_question: dict[str, list[Critique]] = {}
    for c in critiques:
        if c.score is not None:  # an unparsed verdict is no evidence either way: never guess a score
            by_question.setdefault(c.question_id, []).append(c)
    for question_id, judged in sorted(by_question.items()):
        if len(judged) < 2:
            continue
        ranked = sorted(judged, key=lambda c: (-c.score, c.answer_id))
        best, worst = ranked[0], ranked[-1]
        chosen, rejected = answers[best.answer_id], answers[worst.answer_id]
        tie = best.score == worst.score
        pairs.append(Candidate(
            pair_id=fingerprint([question_id, best.answer_id, worst.answer_id, best.text, worst.text]),
            video_id=best.video_id,
            question_id=question_id, question=questions[question_id].text, chosen=chosen.text,
            rejected=rejected.text, chosen_source=best.answer_id, rejected_source=worst.answer_id,
            critique_id=None, mode="judge", chosen_score=best.score, rejected_score=worst.score, usable=not tie,
            note="tie" if tie else None, prompt=rejected.prompt, chosen_finished=chosen.finished,
            rejected_finished=rejected.finished))
    return pairs


def temporal_candidates(answers: list[Answer], questions: dict[str, Question]) -> list[Candidate]:
    """One `temporal:<kind>` pair per temporal negative: the question's candidate from the true frames at the same
    temperature and sample index is chosen, the answer from the perturbed frames rejected."""
    true = {(a.question_id, a.temperature, a.sample_index): a for a in answers if a.perturbation is None}
    pairs = []
    for negative in answers:
        chosen = true.get((negative.question_id, negative.temperature, negative.sample_index))
        if negative.perturbation is None or chosen is None:
            continue
        pairs.append(Candidate(
            pair_id=fingerprint([chosen.answer_id, negative.answer_id, chosen.text, negative.text]),
            video_id=chosen.video_id, question_id=chosen.question_id, question=questions[chosen.question_id].text,
            chosen=chosen.text, rejected=negative.text, chosen_source=chosen.answer_id,
            rejected_source=negative.answer_id, critique_id=None, mode=f"temporal:{negative.perturbation}",
            chosen_score=None, rejected_score=None, usable=True, note=None, prompt=chosen.prompt,
            chosen_finished=chosen.finished, rejected_finished=negative.finished))
    return pairs


def _revision_pair(c: Critique, answer: Answer, question: Question, cfg: CritiqueConfig) -> Candidate:
    revision = c.revision or ""
    if not c.text.strip():
        note = "empty_critique"
    elif not c.found_errors:
        note = "no_errors"
    elif not revision:
        note = "empty_revision"
    elif (c.revision_similarity or 0.0) >= cfg.unchanged_similarity:
        note = "revision_unchanged"
    else:
        note = None
    return Candidate(pair_id=fingerprint([c.critique_id, revision, answer.text]), video_id=c.video_id,
                     question_id=c.question_id, question=question.text, chosen=revision, rejected=answer.text,
                     chosen_source="revision", rejected_source=answer.answer_id, critique_id=c.critique_id,
                     mode="critique", chosen_score=None, rejected_score=None, usable=note is None, note=note,
                     prompt=answer.prompt, chosen_finished=c.revision_finished, rejected_finished=answer.finished)


def _decoding(cfg: CritiqueConfig) -> Decoding:
    return Decoding(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)


def _critique_counts(critiques: list[Critique]) -> dict[str, int]:
    if not critiques or critiques[0].mode == "critique":
        return {"critiques": len(critiques), "found_errors": sum(bool(c.found_errors) for c in critiques),
                "no_errors": sum(c.found_errors is False for c in critiques)}
    return {"judged": len(critiques), "scored": sum(c.score is not None for c in critiques),
            "unparsed": sum(c.score is None for c in critiques)}
