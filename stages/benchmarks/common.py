"""What every benchmark reader shares: the normalised item, the video finder, and the file and field helpers.

The helpers raise `SaviError` with one line that names the file, the record and what to do, so every reader
reports damaged or misplaced files the same way.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.benchmarks.choice import LETTERS  # the same letters the answers are read back with
from stages.core.errors import SaviError


@dataclass(frozen=True)
class EvalItem:
    """One multiple-choice (or yes/no) question of a benchmark, normalised."""
    question_id: str          # unique within the benchmark split (e.g. NExT-QA f"{video}_{qid}", EgoSchema q_uid)
    video_name: str           # how the annotation names the video, for messages ("2909445186", "ZS9XR.mp4")
    video: Path | None        # the resolved video file or frame folder on disk; None when not found
    question: str             # question text only, options removed (TempCompass embeds them: split them out)
    options: tuple[str, ...]  # option texts with any "A. " / "Option 1: " style prefix stripped;
                              # ("yes", "no") for yes/no
    answer: int | None        # index into options; None where the answer key is hidden (EgoSchema full, tests)
    category: str             # the main breakdown: MVBench task, NExT-QA type group (causal/temporal/descriptive),
                              # Perception Test area, TempCompass dim, LongVideoBench question_category,
                              # Video-MME task_type, EgoSchema "all"
    meta: dict[str, str]      # further breakdowns, all values str (NExT-QA {"type": "CW"}, Video-MME
                              # {"duration": "short", "domain": ...}, LongVideoBench {"duration_group": "600"},
                              # TempCompass {"task": "multi-choice"})
    prompt: str               # the prompt lmms-eval uses for this item (see each reader module), options rendered
                              # with letters A., B., ... (or yes/no wording)
    yes_no: bool = False      # answered with yes/no instead of a letter
    start_s: float | None = None   # temporal bounds in seconds (MVBench bounded tasks only)
    end_s: float | None = None
    frame_fps: float | None = None  # set only when `video` is a folder of frames (MVBench episodic_reasoning: 3.0)
    replies: tuple[str, ...] | None = None  # a full reply per option, scored whole after `prompt` in likelihood
                                           # mode (lmms-eval's log-likelihood multiple choice); None: the
                                           # option labels are scored as the reply's first token
    family_prompts: dict[str, str] = field(default_factory=dict)  # lmms-eval's prompt for a model family
                              # where it differs from `prompt` (Video-MME's for Qwen3-VL)
    labels: tuple[str, ...] | None = None  # each option's label as the prompt shows it, where that is not its bare
                              # letter: MVBench's "(A)", TempCompass caption matching's "Option 1" / "Sentence A"
                              # / "Caption A". Likelihood scores these; the readers of replies accept them.


@dataclass
class Benchmark:
    name: str
    split: str
    items: list[EvalItem]
    sources: list[Path]       # the annotation files that were read (their hashes identify the benchmark version)
    answers_public: bool      # False for hidden-answer splits (then a submission file is written instead of/in
                              # addition to accuracy)


@dataclass(frozen=True)
class BenchmarkInfo:
    title: str
    splits: tuple[str, ...]
    default_split: str
    hidden_splits: tuple[str, ...]   # splits whose answer key is not published: scored by a leaderboard
    download: str                    # where the annotation files come from, quoted in "file missing" errors



# lmms-eval's post-prompt for most lettered tasks.
_ANSWER_WITH_LETTER = "Answer with the option's letter from the given choices directly."


# Tried in this order where the annotation names a video without its extension (lmms-eval's fallbacks, plus .webm).
VIDEO_EXTENSIONS = (".mp4", ".MP4", ".mkv", ".webm")
_KNOWN_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".gif"}


class _VideoFinder:
    """Finds a video among candidate relative paths under a few roots.

    Each directory is listed once and kept, so resolving tens of thousands of items costs one listing per
    directory rather than a stat per candidate and extension. Paths are handled as strings until a match is
    found: building pathlib objects for every candidate would dominate the time of reading a large split.
    """

    def __init__(self, roots: Sequence[Path], *, default: bool = False):
        self.roots = [str(root) for root in dict.fromkeys(roots)]
        self.default = default   # roots were derived from `data`, not given by the user
        self._listings: dict[str, dict[str, bool] | None] = {}

    def find(self, rels: Iterable[str], *, folder: bool = False) -> Path | None:
        rels = list(rels)
        for root in self.roots:
            for rel in rels:
                head, _, tail = rel.rpartition("/")
                directory = os.path.join(root, head) if head else root
                entries = self._listing(directory)
                if not entries:
                    continue
                for name in ([tail] if folder else _with_extensions(tail)):
                    if entries.get(name) is folder:
                        return Path(directory, name)
        return None

    def _listing(self, directory: str) -> dict[str, bool] | None:
        entries = self._listings.get(directory, False)
        if entries is False:
            try:
                with os.scandir(directory) as it:
                    entries = {entry.name: entry.is_dir() for entry in it}
            except OSError:
                entries = None
            self._listings[directory] = entries
        return entries


def _with_extensions(name: str) -> list[str]:
    if os.path.splitext(name)[1].lower() in _KNOWN_SUFFIXES:
        return [name]
    return [name + ext for ext in VIDEO_EXTENSIONS] + [name]


def _folder(data: Path) -> Path:
    return data if data.is_dir() else data.parent


def _first_file(folder: Path, patterns: Sequence[str]) -> Path | None:
    for pattern in patterns:
        if "*" in pattern:
            found = sorted(p for p in folder.glob(pattern) if p.is_file())
            if found:
                return found[0]
        elif (folder / pattern).is_file():
            return folder / pattern
    return None



def _missing(info: BenchmarkInfo, data: Path, expected: Sequence[str]) -> SaviError:
    return SaviError(f"{info.title}: found no {' or '.join(expected)} in {data}; download it from {info.download}")



def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SaviError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is it a JSON file?") from None
    except OSError as e:
        raise SaviError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        comma = _trailing_comma(text, e.pos)
        if comma is not None:
            line = text.count("\n", 0, comma) + 1
            column = comma - (text.rfind("\n", 0, comma) + 1) + 1
            raise SaviError(f"{path}: invalid JSON: trailing comma at line {line}, column {column} (before "
                            f"{text[e.pos]!r}); strict JSON allows none, remove it") from None
        raise SaviError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; the file is "
                        "damaged or cut short: download it again") from None


def _trailing_comma(text: str, pos: int) -> int | None:
    """Where the comma is, if the decoder stopped at a closing bracket that follows one."""
    if pos >= len(text) or text[pos] not in "}]":
        return None
    before = text[:pos].rstrip()
    return len(before) - 1 if before.endswith(",") else None


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [f for f in required if f not in (reader.fieldnames or [])]
            if missing:
                raise SaviError(f"{path}: the header has no {', '.join(missing)} column(s); found "
                                f"{', '.join(reader.fieldnames or []) or 'no header'}")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise SaviError(f"{path}: not UTF-8 text ({e.reason}); is it a CSV file?") from None
    except csv.Error as e:
        raise SaviError(f"{path}: malformed CSV: {e}") from None
    for i, row in enumerate(rows):
        if None in row or any(row[f] is None for f in required):
            raise SaviError(f"{path}: row {i + 2} has {'more' if None in row else 'fewer'} fields than the header")
    return rows


def _read_parquet(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise SaviError(f"{path}: not a readable Parquet file: {e}") from None
    missing = [f for f in required if f not in table.column_names]
    if missing:
        raise SaviError(f"{path}: no {', '.join(missing)} column(s); found {', '.join(table.column_names)}")
    return table.to_pylist()


def _where(index: int, rec: Any, id_field: str) -> str:
    if isinstance(rec, dict) and rec.get(id_field) not in (None, ""):
        return f"record {index} ({id_field} {rec[id_field]})"
    return f"record {index}"


def _field(rec: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(rec, dict):
        raise SaviError(f"{path}: {where} is not an object but {type(rec).__name__}")
    if rec.get(key) is None:
        raise SaviError(f"{path}: {where} has no {key!r} field; the file is damaged or not in the benchmark's "
                        "published format: download it again")
    return rec[key]


def _text(rec: Any, key: str, path: Path, where: str) -> str:
    value = _field(rec, key, path, where)
    if isinstance(value, (dict, list)):
        raise SaviError(f"{path}: {where}: {key!r} should be text, found {type(value).__name__}")
    return str(value)


def _options(rec: Any, key: str, path: Path, where: str) -> list[str]:
    value = _field(rec, key, path, where)
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise SaviError(f"{path}: {where}: {key!r} should be a list of at least 2 options, found {value!r}")
    return [str(v) for v in value]


def _answer_index(value: Any, num_options: int, path: Path, where: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        index = int(value)
        if isinstance(value, float) and value != index:
            raise ValueError
    except (TypeError, ValueError):
        raise SaviError(f"{path}: {where}: answer {value!r} is not an option index") from None
    if not 0 <= index < num_options:
        raise SaviError(f"{path}: {where}: answer {index} is out of range for {num_options} options "
                        f"(0..{num_options - 1})")
    return index


def _strip_letters(options: Sequence[str]) -> list[str]:
    # Only the letter that belongs to the position is stripped, so option text such as "I. M. Pei" survives.
    out = []
    for k, option in enumerate(options):
        m = re.match(rf"^\s*\(?{LETTERS[k]}\s*[.):]\s*", option)
        out.append(option[m.end():] if m else option)
    return out


def _lettered(options: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[k]}. {option}" for k, option in enumerate(options))


def _plain(value: Any) -> str:
    """A number as the annotation means it: 600, not 600.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
