"""Stage `filter`: keep the candidate pairs worth training on, grounded in the frames by CLIP.

Rules, in order; the first that applies names the pair's drop reason:
1. The critique's own verdict: a pair the critique stage marked unusable keeps its reason (`no_errors`,
   `revision_unchanged`, `empty_critique`, `empty_revision`, `tie`).
2. `cut_off`: the chosen or the rejected text was cut off at the token limit. DPO would append an end-of-turn
   token to it and teach the policy to stop mid-sentence.
3. `empty_text`: the chosen or the rejected text is empty.
4. `near_duplicate`: the two texts are at least `near_duplicate` similar (0-1), so there is nothing to prefer.
5. `length_ratio`: one text is more than `max_length_ratio` times longer than the other. DPO readily learns
   "longer is better" from such pairs, whatever their content.
6. CLIP swap: if the rejected text is more grounded in the video than the chosen one by more than
   `swap_margin`, the two exchange roles, marked `swapped`. This is VideoSAVi v1's rule for its judge pipeline,
   and by default (`swap = "auto"`) savi applies it there only. A critique's revision fixes what CLIP cannot see
   (order, spatial relations, causality: CLIP scores a text much like a bag of words), so a small CLIP difference
   between an answer and its revision is mostly noise, and letting it overturn the critique would train many
   pairs backwards. In critique mode the scores are recorded (for `--loss clip-weighted` and for inspection).
7. `low_clip_margin`: after any swap, chosen-minus-rejected CLIP score below `min_clip_margin` (unset: no drop).

Temporal pairs (`temporal:<kind>`, `savi answer --temporal`) pass rules 1-5, except that two texts at least
`near_duplicate` similar are dropped as `temporal_same`: the perturbed frames did not change the answer, so the
model did not use the order there. They skip rules 6-7 and are not CLIP-scored: a mean over frame embeddings is the
same for every order of the frames, so CLIP cannot say which text the true order grounds (the manifest's notes say
so, and count them as `temporal_unscored`); `--loss clip-weighted` trains them as plain DPO (a gap of 0).

CLIP scores only the pairs that survive rules 1-5. Frame embeddings come from the run's cache (`stages/core/clip.py`),
so every round after the first, and eval, pays only for the text. `--clip-frames grid` scores each text against the
video's frames tiled in time order, which sees the direction of motion that a pooled per-frame score cannot; it is
recorded in the manifest (as `clip_frames`), so scores made one way are never taken for the other.
Every pair lands in `pairs.parquet`: kept ones with their CLIP scores, dropped ones with their reason.

Judge agreement
---------------
When some of the round's questions carry their known answer (`Question.truth`: a world built for the purpose, or
a benchmark with answers used as a probe), the manifest's counts say how often the judge's choice agrees with it,
per question kind: `judge_agreement = {kind: {"pairs": n, "agree": k}}`. That is the figure that tells whether a
judge will help before any GPU time goes into DPO. It counts the kept pairs (the ones DPO trains on, after any
swap) where exactly one of the two texts is the truth, and the pair agrees when that text is the chosen one. A
text is the truth when, compared after `normalize_text` (case, whitespace and punctuation aside), it is the truth
itself, or, for a truth written with its option letter ("B. right", "(B) right"), the letter alone ("B") or the
option's text alone ("right"). Nothing looser: if "it moves right" counted as "right", "not right" would too.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict
from typing import Any

from stages.core.clip import ClipConfig, ClipScorer
from stages.core.errors import SaviError
from stages.core.parsing import normalize_text, similarity
from stages.core.records import Candidate, Pair, Question
from stages.core.settings import SWAPS, FilterConfig
from stages.core.store import ArtifactWriter, Progress, Run, StageResult, file_sha256, ticker


def text_rule(pair: Candidate, cfg: FilterConfig) -> str | None:
    """Rules 1-5, which need no model: the drop reason, or None to go on to CLIP."""
    if not pair.usable:
        return pair.note or "unusable"
    if cfg.drop_cut_off and (pair.chosen_finished is False or pair.rejected_finished is False):
        return "cut_off"
    if not pair.chosen.strip() or not pair.rejected.strip():
        return "empty_text"
    if similarity(pair.chosen, pair.rejected) >= cfg.near_duplicate:
        return "temporal_same" if is_temporal(pair.mode) else "near_duplicate"
    shorter, longer = sorted((len(pair.chosen), len(pair.rejected)))
    if longer > cfg.max_length_ratio * shorter:
        return "length_ratio"
    return None


def is_temporal(mode: str) -> bool:
    return mode.startswith("temporal:")


def may_swap(mode: str, cfg: FilterConfig) -> bool:
    return cfg.swap == "on" or (cfg.swap == "auto" and mode == "judge")


def grounding_rule(pair: Candidate, chosen_clip: float, rejected_clip: float, cfg: FilterConfig) -> Pair:
    """Rules 6-7: swap if the rejected text is clearly better grounded (where swapping applies), then check the
    margin."""
    swapped = may_swap(pair.mode, cfg) and rejected_clip > chosen_clip + cfg.swap_margin
    chosen, rejected = (pair.rejected, pair.chosen) if swapped else (pair.chosen, pair.rejected)
    if swapped:
        chosen_clip, rejected_clip = rejected_clip, chosen_clip
    too_close = cfg.min_clip_margin is not None and chosen_clip - rejected_clip < cfg.min_clip_margin
    reason = "low_clip_margin" if too_close else None
    return Pair(pair.pair_id, pair.video_id, pair.question_id, pair.question, chosen, rejected, chosen_clip,
                rejected_clip, swapped, pair.mode, kept=reason is None, drop_reason=reason, prompt=pair.prompt)


def run(run: Run, round: int, cfg: FilterConfig, clip_cfg: ClipConfig, *, force: bool = False,
        progress: Progress | None = None) -> StageResult:
    if cfg.swap not in SWAPS:
        raise SaviError(f"unknown swap {cfg.swap!r} in [filter]: use {', '.join(SWAPS)}")
    candidates_art = run.require("candidates", round)
    candidates: list[Candidate] = candidates_art.read()
    # CLIP is named by the fingerprint of its actual architecture and weights, not by the paths given: a model
    # folder moved elsewhere is the same CLIP, and new weights at the same path are not.
    scorer = ClipScorer.load(clip_cfg)
    params = {**asdict(cfg), "clip": scorer.fingerprint, "clip_pooling": clip_cfg.pooling, "clip_topk": clip_cfg.topk,
              "clip_text_pooling": clip_cfg.text_pooling}
    if clip_cfg.frames != "each":
        # Tables made before the setting existed scored each frame, so "each" is left out: they stay up to date.
        params["clip_frames"] = clip_cfg.frames
    art = run.artifact("pairs", round)
    writer = ArtifactWriter(art, params=params, inputs={"candidates": file_sha256(candidates_art.path)},
                            force=force, incremental=True)
    if writer.up_to_date:
        return writer.cached_result()

    todo = [c for c in candidates if c.pair_id not in writer.done_items]
    tick = ticker(progress, len(todo))
    to_score = []
    try:
        for pair in todo:
            reason = text_rule(pair, cfg)
            if reason is None and not is_temporal(pair.mode):
                to_score.append(pair)
                continue
            writer.add(Pair(pair.pair_id, pair.video_id, pair.question_id, pair.question, pair.chosen,
                            pair.rejected, None, None, False, pair.mode, kept=reason is None, drop_reason=reason,
                            prompt=pair.prompt))
            tick()
        if to_score:
            samples = {s.video_id: s for s in run.artifact("samples").read()}
            # One video at a time: its frames are embedded (or read from the cache) once for all its pairs.
            for video_id in sorted({p.video_id for p in to_score}):
                pairs = [p for p in to_score if p.video_id == video_id]
                scores = scorer.score_texts(run, samples[video_id], [t for p in pairs for t in (p.chosen, p.rejected)])
                for i, pair in enumerate(pairs):
                    writer.add(grounding_rule(pair, scores[2 * i], scores[2 * i + 1], cfg))
                    tick()
    finally:
        writer.close()

    current = {c.pair_id for c in candidates}
    rows: list[Pair] = [p for p in writer.records() if p.pair_id in current]
    dropped = Counter(p.drop_reason for p in rows if not p.kept)
    counts = {"candidates": len(rows), "kept": sum(p.kept for p in rows),
              "clip_scored": sum(p.chosen_clip is not None for p in rows), "swapped": sum(p.swapped for p in rows),
              **{f"dropped_{reason}": n for reason, n in sorted(dropped.items())},
              "kept_by_source": dict(sorted(Counter(p.mode for p in rows if p.kept).items()))}
    notes = {}
    temporal = [p for p in rows if is_temporal(p.mode)]
    if temporal:
        counts["temporal_unscored"] = len(temporal)
        notes["temporal"] = ("temporal pairs are not scored by CLIP, and never swapped: a mean over frame embeddings "
                             "is the same for every order of the frames")
    questions = run.artifact("questions", round)
    agreement = judge_agreement(rows, questions.read() if questions.complete else [])
    if agreement:
        counts["judge_agreement"] = agreement
    return writer.finish_result(len(todo), counts, keep=current, notes=notes or None)


# An option letter and its text, as benchmarks write them: "B. right", "B) right", "(B) right", "B: right".
_LETTERED = re.compile(r"^\s*\(?([A-J])\s*[.):]\s*(\S.*)$", re.DOTALL)


def truth_forms(truth: str) -> set[str]:
    """The normalised texts that count as naming the truth: itself, plus its letter and its option text when it
    is written with an option letter."""
    forms = {normalize_text(truth)}
    lettered = _LETTERED.match(truth)
    if lettered:
        forms |= {normalize_text(lettered.group(1)), normalize_text(lettered.group(2))}
    return forms - {""}


def judge_agreement(pairs: list[Pair], questions: list[Question]) -> dict[str, dict[str, int]]:
    """Per question kind with a known answer: the kept pairs with exactly one text naming the truth, and how many
    of them chose it. Empty when no question has a truth (see "Judge agreement" in the module docstring)."""
    known = {q.question_id: q for q in questions if q.truth is not None and q.truth.strip()}
    agreement = {kind: {"pairs": 0, "agree": 0} for kind in sorted({q.kind for q in known.values()})}
    for pair in pairs:
        question = known.get(pair.question_id)
        if question is None or not pair.kept:
            continue
        forms = truth_forms(question.truth)
        chosen, rejected = normalize_text(pair.chosen) in forms, normalize_text(pair.rejected) in forms
        if chosen != rejected:
            agreement[question.kind]["pairs"] += 1
            agreement[question.kind]["agree"] += chosen
    return agreement


def agreement_summary(agreement: dict[str, Any]) -> str:
    """One line for people: "judge agrees with the truth on 41/50 pairs (82%): direction 15/24, colour 26/26"."""
    pairs = sum(n["pairs"] for n in agreement.values())
    agree = sum(n["agree"] for n in agreement.values())
    share = f" ({agree / pairs:.0%})" if pairs else ""
    per_kind = ", ".join(f"{kind} {n['agree']}/{n['pairs']}" for kind, n in agreement.items())
    return f"judge agrees with the truth on {agree}/{pairs} pairs{share}: {per_kind}"
