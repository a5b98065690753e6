"""Stage `answer`: the policy answers each question, once or several times.

Candidate k of a question is sampled at temperature `temperatures[k % len(temperatures)]`, so the default of one
candidate gives the single initial answer of VideoSAVi v3, and five candidates give v1's spread over
0.3 ... 1.0 for judge mode. Each answer records its temperature, sample index, token count and model.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from stages.core.errors import SaviError
from stages.core.model import (
    Decoding,
    Policy,
    adapter_fingerprint,
    adapter_for_round,
    load_video,
    pending_batches,
)
from stages.core.prompts import load_prompts
from stages.core.records import Answer, Question
from stages.core.settings import AnswerConfig, ModelConfig
from stages.core.store import (
    ArtifactWriter,
    Progress,
    Run,
    StageResult,
    file_sha256,
    fingerprint,
    ticker,
)


def answer_id(question_id: str, temperature: float, sample_index: int) -> str:
    return fingerprint([question_id, temperature, sample_index])


def run(run: Run, round: int, cfg: AnswerConfig, model_cfg: ModelConfig, *, prompts_dir: Path | None = None,
        force: bool = False, progress: Progress | None = None) -> StageResult:
    if cfg.candidates < 1:
        raise SaviError("--candidates must be at least 1")
    if not cfg.temperatures or any(t < 0 for t in cfg.temperatures):
        raise SaviError("--temperatures must be a comma-separated list of numbers >= 0, e.g. 0.3,0.7")
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
    art = run.artifact("answers", round)
    writer = ArtifactWriter(art, params=params, inputs={"questions": file_sha256(questions_art.path)}, force=force,
                            incremental=True)
    if writer.up_to_date:
        return writer.cached_result()

    slots = [(q, k, cfg.temperatures[k % len(cfg.temperatures)]) for q in questions for k in range(cfg.candidates)]
    todo = [(q, k, t) for q, k, t in slots if answer_id(q.question_id, t, k) not in writer.done_items]
    tick = ticker(progress, len(todo))
    policy = Policy.load(model_cfg, adapter, run=run) if todo else None
    try:
        # A batch is sampled at one temperature, so batches are formed per temperature, videos kept together.
        for temperature in sorted({t for _, _, t in todo}):
            group = sorted((s for s in slots if s[2] == temperature), key=lambda s: s[0].video_id)
            for batch in pending_batches(group, model_cfg.batch_size,
                                         lambda s: answer_id(s[0].question_id, s[2], s[1]) in writer.done_items):
                videos = {vid: load_video(run, samples[vid]) for vid in {q.video_id for q, _, _ in batch}}
                user_turns = [prompt.render("answer", question=q.text) for q, _, _ in batch]
                outputs = policy.generate([videos[q.video_id] for q, _, _ in batch], user_turns,
                                          keys=[answer_id(q.question_id, t, k) for q, k, t in batch],
                                          decoding=decodings[temperature])
                for (q, k, t), user_turn, out in zip(batch, user_turns, outputs):
                    if writer.add(Answer(answer_id(q.question_id, t, k), q.question_id, q.video_id, out.text, t, k,
                                         out.num_tokens, out.finished, prompt.version, policy.name,
                                         prompt=user_turn)):
                        tick()
    finally:
        writer.close()

    current = {answer_id(q.question_id, t, k) for q, k, t in slots}
    rows = [a for a in writer.records() if a.answer_id in current]
    counts = {"questions": len(questions), "answers": len(rows), "empty": sum(not a.text for a in rows),
              "cut_off": sum(not a.finished for a in rows)}
    return writer.finish_result(len(todo), counts, keep=current)
