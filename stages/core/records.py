"""The record schema: one dataclass per table, and the table specs the store reads and writes.

Each table has a name, a schema version, a key column (stable ids, so resume and joins work) and a sort order
(so a resumed run writes the same file as an uninterrupted one). The Arrow schema is derived from the dataclass
annotations, so the dataclass is the single source of truth. Bump a table's version on any breaking change; the
store refuses files stamped with a version newer than the one here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

SCHEMA_METADATA_KEY = b"savi.schema"


@dataclass(slots=True)
class Sample:
    """One input video of a run, sampled or failed. Key: `video_id` (from the file's content)."""

    video_id: str
    path: str
    status: str  # "ok" or "error"
    error: str | None
    size_bytes: int
    mtime_ns: int
    container: str | None = None
    codec: str | None = None
    duration_s: float | None = None
    fps: float | None = None
    num_frames: int | None = None
    width: int | None = None  # upright (after rotation), before resizing
    height: int | None = None
    rotation: int = 0  # degrees counter-clockwise applied to make the stored picture upright
    variable_frame_rate: bool = False
    sampling: str = "uniform"  # "uniform" (segment midpoints) or "fps"
    frames_requested: int = 0
    frame_indices: list[int] = dataclasses.field(default_factory=list)
    timestamps_s: list[float] = dataclasses.field(default_factory=list)
    frame_width: int | None = None  # size of the JPEGs written under frames_dir
    frame_height: int | None = None
    shortfall: str | None = None  # what was done when the video had fewer frames than requested
    frames_dir: str | None = None  # relative to the run folder


@dataclass(slots=True)
class Question:
    """A question about a video in one round. Key: `question_id` (video, kind and text).

    The policy writes them (`savi ask`). Questions whose answer is known (a world built for the purpose, or a
    benchmark with answers used as a probe) carry it in `truth`, and `savi filter` then reports how often its
    choice agrees with it.
    """

    question_id: str
    video_id: str
    kind: str  # "spatial", "temporal", "what", "why" or "how" (or the kinds of a probe, such as "direction")
    text: str
    parsed_as: str  # how the model's output was read: "json", "numbered" or "lines"
    prompt_version: str
    model: str
    truth: str | None = None  # the right answer's text ("B. right" also accepts "B"); None: not known


@dataclass(slots=True)
class Answer:
    """One candidate answer to a question. Key: `answer_id` (question, temperature and sample index)."""

    answer_id: str
    question_id: str
    video_id: str
    text: str
    temperature: float
    sample_index: int
    num_tokens: int
    finished: bool  # the model stopped by itself (False: cut off at --max-new-tokens)
    prompt_version: str
    model: str
    prompt: str = ""  # the user turn it was sampled from ("" in tables written before savi recorded it)
    # A temporal negative (`savi answer --temporal`): how its frames were perturbed ("reverse", "shuffle", "drop").
    perturbation: str | None = None
    # The positions of the sampled frames it was shown, in the order shown ([]: all of them, in order): the
    # keyframes, or a perturbation's order.
    frame_order: list[int] = dataclasses.field(default_factory=list)
    localizer: str | None = None  # answered from keyframes found by "policy" or "clip" (`savi keyframes`)


@dataclass(slots=True)
class Keyframes:
    """SeViLA's keyframes of one question: how much each sampled frame holds what the question needs, and the
    top k. Key: `question_id`."""

    question_id: str
    video_id: str
    localizer: str  # "policy" (P(yes) when the policy is asked about the frame) or "clip" (question-frame cosine)
    scores: list[float]  # one per sampled frame, in time order
    chosen: list[int]  # the positions of the top k frames, in temporal order
    prompt_version: str  # the policy's prompt ("" for clip)
    model: str  # the policy, or the CLIP's fingerprint


@dataclass(slots=True)
class Critique:
    """The policy's verdict on one answer. Key: `critique_id` (answer and mode).

    critique mode: a critique naming the errors, then a revised answer. judge mode: scores 1-5 per criterion.
    """

    critique_id: str
    answer_id: str
    question_id: str
    video_id: str
    mode: str  # "critique" or "judge"
    text: str  # the critique, or the judge's raw output
    found_errors: bool | None = None
    error_types: list[str] = dataclasses.field(default_factory=list)
    revision: str | None = None
    revision_similarity: float | None = None  # 1.0 = the revision repeats the answer
    relevance: float | None = None
    accuracy: float | None = None
    temporal_grounding: float | None = None
    clarity: float | None = None
    score: float | None = None  # judge mode: mean of the criteria that parsed
    prompt_version: str = ""
    model: str = ""
    revision_finished: bool | None = None  # the revision ended by itself (False: cut off at --max-new-tokens)


@dataclass(slots=True)
class Candidate:
    """A preference pair proposed by the critique stage, before CLIP filtering. Key: `pair_id`.

    `usable` is the critique's own judgement. Unusable pairs are kept with their `note` ("no_errors",
    "revision_unchanged", "tie", ...), so `savi filter` can report every drop with its reason.
    """

    pair_id: str
    video_id: str
    question_id: str
    question: str
    chosen: str
    rejected: str
    chosen_source: str  # "revision" or the answer_id it came from
    rejected_source: str
    critique_id: str | None
    mode: str
    chosen_score: float | None
    rejected_score: float | None
    usable: bool
    note: str | None
    prompt: str = ""  # the user turn the answers were sampled from, which DPO scores them under
    chosen_finished: bool | None = None  # False: the text was cut off at --max-new-tokens
    rejected_finished: bool | None = None


@dataclass(slots=True)
class Pair:
    """A candidate pair after CLIP filtering. Key: `pair_id`. Kept pairs train the policy; dropped ones stay in
    the table with their `drop_reason`, so every drop can be counted and inspected."""

    pair_id: str
    video_id: str
    question_id: str
    question: str
    chosen: str
    rejected: str
    chosen_clip: float | None  # CLIP grounding of each text in the video (None: not scored, dropped earlier)
    rejected_clip: float | None
    swapped: bool  # CLIP found the rejected text more grounded, so the roles were exchanged
    mode: str
    kept: bool
    drop_reason: str | None
    prompt: str = ""  # the user turn DPO scores both texts under ("" before savi recorded it: the question)


@dataclass(slots=True)
class TrainStep:
    """One logged optimizer step of `savi dpo`. Key: `step`."""

    step: int
    epoch: float
    loss: float | None
    reward_accuracy: float | None
    reward_margin: float | None
    chosen_reward: float | None
    rejected_reward: float | None
    learning_rate: float | None
    grad_norm: float | None
    # VistaDPO's levels (`[dpo] levels`): the reward margin of the true video over the perturbed one (temporal) and
    # over the masked keyframes (perceptive), and how often it is positive; None where the level is off.
    temporal_margin: float | None = None
    temporal_accuracy: float | None = None
    perceptive_margin: float | None = None
    perceptive_accuracy: float | None = None


@dataclass(slots=True)
class EvalResult:
    """The model's answer to one benchmark question. Key: `question_id` (the benchmark's own id).

    `prediction` is an index into `options`: the option the protocol's reading of the reply picks (lmms-eval's
    answer extractor for the benchmark), or the best-scoring option under likelihood. It is None when the reply
    names no option (savi never guesses) or the video could not be decoded (`error`). `correct` is None where the
    answer key is hidden. The strict reading of the same reply (savi's own parser) sits beside it.
    """

    question_id: str
    benchmark: str  # name, plus the split when it is not the default ("nextqa-test")
    category: str
    meta: dict[str, str]
    video: str  # as the benchmark names it
    question: str
    options: list[str]
    answer: int | None
    mode: str  # the protocol: "lmms-eval" or "likelihood" ("generate" in tables written before protocols)
    prediction: int | None
    correct: bool | None
    parsed_as: str | None  # the rule that read the reply ("likelihood" under likelihood); None: unmatched
    response: str  # the generated reply (lmms-eval), else ""
    option_scores: list[float]  # likelihood: log-probability of each option's label
    num_frames: int
    error: str | None
    model: str
    # What lmms-eval does with a reply its extractor cannot read: "random" (a seeded random letter; savi credits
    # its expected value, 1/k), "judge" (TempCompass's GPT judge; counted unmatched) or "wrong". None if read.
    fallback: str | None = None
    # This question's part of the lmms-eval figure: 1 right, 0 wrong, 1/k for a reply lmms-eval answers at random.
    score: float | None = None
    strict_prediction: int | None = None  # savi's parser on the same reply: None when it names no single option
    strict_correct: bool | None = None
    # The positions of the decoded frames shown, in the order shown ([]: all of them, in order): the keyframes
    # (`--keyframes`, found by `localizer`), or the order of `--perturb`.
    frame_order: list[int] = dataclasses.field(default_factory=list)
    localizer: str | None = None


@dataclass(frozen=True)
class TableSpec:
    """A table: its records, the key that identifies a row, and the item column naming the unit of work that
    produced it (a row's key by default; a video for questions, since one generation writes all of them)."""

    name: str
    version: int
    record: type
    key: str
    order: tuple[str, ...]
    made_by: str  # the savi command that writes it, for "run ... first" messages
    item_column: str | None = None

    @property
    def item(self) -> str:
        return self.item_column or self.key

    @property
    def stamp(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def schema(self) -> pa.Schema:
        return _arrow_schema(self.record)


SAMPLES = TableSpec("samples", 1, Sample, key="video_id", order=("path", "video_id"), made_by="sample")
QUESTIONS = TableSpec("questions", 2, Question, key="question_id", order=("video_id", "question_id"), made_by="ask",
                      item_column="video_id")

ANSWERS = TableSpec("answers", 3, Answer, key="answer_id", order=("video_id", "question_id", "answer_id"),
                    made_by="answer")
KEYFRAMES = TableSpec("keyframes", 1, Keyframes, key="question_id", order=("video_id", "question_id"),
                      made_by="keyframes")
CRITIQUES = TableSpec("critiques", 2, Critique, key="critique_id", order=("video_id", "question_id", "answer_id"),
                      made_by="critique")
CANDIDATES = TableSpec("candidates", 2, Candidate, key="pair_id", order=("video_id", "question_id", "pair_id"),
                       made_by="critique")

PAIRS = TableSpec("pairs", 2, Pair, key="pair_id", order=("video_id", "question_id", "pair_id"), made_by="filter")
TRAIN_LOG = TableSpec("train_log", 2, TrainStep, key="step", order=("step",), made_by="dpo")
EVALS = TableSpec("evals", 2, EvalResult, key="question_id", order=("category", "question_id"), made_by="eval")

TABLES = {spec.name: spec for spec in (SAMPLES, QUESTIONS, KEYFRAMES, ANSWERS, CRITIQUES, CANDIDATES, PAIRS,
                                       TRAIN_LOG, EVALS)}


def to_arrow(spec: TableSpec, records: list[Any]) -> pa.Table:
    columns = {f.name: [getattr(r, f.name) for r in records] for f in dataclasses.fields(spec.record)}
    table = pa.Table.from_pydict(columns, schema=spec.schema)
    return table.replace_schema_metadata({SCHEMA_METADATA_KEY: spec.stamp.encode()})


def upgrade(spec: TableSpec, table: pa.Table) -> pa.Table:
    """A table written by an earlier schema version, with the columns added since filled with their defaults."""
    columns = []
    for f in dataclasses.fields(spec.record):
        if f.name in table.column_names:
            columns.append(table.column(f.name))
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"column {f.name!r} is missing")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        columns.append(pa.array([default] * table.num_rows, spec.schema.field(f.name).type))
    return pa.Table.from_arrays(columns, schema=spec.schema).replace_schema_metadata(table.schema.metadata)


def from_arrow(spec: TableSpec, table: pa.Table) -> list[Any]:
    names = [f.name for f in dataclasses.fields(spec.record)]
    maps = [f.name for f in table.schema if pa.types.is_map(f.type) and f.name in names]
    rows = table.select(names).to_pylist()
    for row in rows:
        for name in maps:  # Arrow gives a map back as (key, value) pairs
            row[name] = dict(row[name] or [])
    return [spec.record(**row) for row in rows]


_ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """Map a field annotation to (arrow type, nullable)."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in args if a is not type(None)]
        return _arrow_type(inner)[0], True
    if typing.get_origin(annotation) is list:
        return pa.list_(_arrow_type(args[0])[0]), False
    if typing.get_origin(annotation) is dict:
        return pa.map_(_arrow_type(args[0])[0], _arrow_type(args[1])[0]), False
    return _ARROW_TYPES[annotation], False


def _arrow_schema(record: type) -> pa.Schema:
    hints = typing.get_type_hints(record)
    fields = []
    for f in dataclasses.fields(record):
        arrow_type, nullable = _arrow_type(hints[f.name])
        fields.append(pa.field(f.name, arrow_type, nullable=nullable))
    return pa.schema(fields)
