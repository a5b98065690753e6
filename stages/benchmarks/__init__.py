"""Readers for video-QA benchmarks, in the on-disk layouts their authors publish.

Every benchmark ships its questions differently: EgoSchema keeps its answer key in a second file, MVBench stores
the answer as option text, NExT-QA is a CSV, TempCompass embeds the options in the question text, Video-MME
prefixes every option with its letter, LongVideoBench pads missing options with "N/A". Each module here turns
one benchmark's files into `EvalItem`s, so prompting, scoring and reporting handle a single shape.

`data` is the folder the user downloaded (a GitHub checkout, a Hugging Face snapshot or the unzipped archive);
where natural the annotation file itself is accepted too. Videos are looked for at the paths the real layouts
use, under `videos` if given, else under `data`. Anything wrong with the files raises `SaviError` with one line
that names the file, the record and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stages.benchmarks import egoschema, longvideobench, mvbench, nextqa, perceptiontest, tempcompass, videomme, world
from stages.benchmarks.common import VIDEO_EXTENSIONS, Benchmark, BenchmarkInfo, EvalItem, _VideoFinder
from stages.benchmarks.extract import parse_answer
from stages.benchmarks.mvbench import MVBENCH_FRAME_FPS, MVBENCH_TASKS
from stages.benchmarks.tempcompass import TEMPCOMPASS_TASKS
from stages.core.errors import SaviError

__all__ = ["BENCHMARKS", "MVBENCH_FRAME_FPS", "MVBENCH_TASKS", "TEMPCOMPASS_TASKS", "VIDEO_EXTENSIONS", "Benchmark",
           "BenchmarkInfo", "EvalItem", "parse_answer", "read_benchmark", "submission"]

_MODULES = {"egoschema": egoschema, "mvbench": mvbench, "nextqa": nextqa, "perceptiontest": perceptiontest,
            "tempcompass": tempcompass, "longvideobench": longvideobench, "videomme": videomme, "world": world}
BENCHMARKS: dict[str, BenchmarkInfo] = {name: module.INFO for name, module in _MODULES.items()}
_READERS: dict[str, Callable[[Path, str, _VideoFinder], Benchmark]] = {
    name: module.read for name, module in _MODULES.items()}
# Benchmarks scored by a leaderboard define `submission`: what it takes, from the chosen (item, option) pairs.
_SUBMISSIONS: dict[str, Callable[[list[tuple[EvalItem, int]]], object]] = {
    name: module.submission for name, module in _MODULES.items() if hasattr(module, "submission")}


def read_benchmark(name: str, data: Path, split: str | None = None, videos: Path | None = None) -> Benchmark:
    """Read benchmark `name` from `data` (its downloaded folder, or the annotation file itself).

    `split=None` picks the benchmark's default split, or the split an annotation file's name says it holds.
    `videos` overrides the folder videos are looked for in.
    """
    info = BENCHMARKS.get(name)
    if info is None:
        raise SaviError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    if name == "tempcompass" and split == "captioning":
        raise SaviError("TempCompass captioning is not supported: its answers are free-form captions that need an "
                        "LLM judge; use the multi-choice, yes_no or caption_matching split")
    if split is not None and split not in info.splits:
        raise SaviError(f"unknown split {split!r} for {info.title}; known splits: {', '.join(info.splits)}")
    data = Path(data).expanduser()
    if not data.exists():
        raise SaviError(f"{info.title}: {data} does not exist; download the annotations from {info.download}")
    if videos is not None:
        videos = Path(videos).expanduser()
        if not videos.is_dir():
            raise SaviError(f"{info.title}: the videos folder {videos} does not exist")
    split = _split_for(name, data, split)
    if videos is not None:
        finder = _VideoFinder([videos])
    else:
        # A file may sit in a config folder of its dataset (MC/test-….parquet): its videos are one level up.
        finder = _VideoFinder([data] if data.is_dir() else [data.parent, data.parent.parent], default=True)
    return _READERS[name](data, split, finder)


def submission(benchmark: Benchmark, predictions: dict[str, int | None]) -> tuple[str, object]:
    """The file name and JSON-able content a benchmark's leaderboard takes, from predicted option indices.

    `predictions` maps question_id to the predicted option index (None: no usable answer, left out).
    """
    by_id = {item.question_id: item for item in benchmark.items}
    unknown = [qid for qid in predictions if qid not in by_id]
    if unknown:
        raise SaviError(f"{len(unknown)} predictions are for questions that {benchmark.name} {benchmark.split} does "
                        f"not have (e.g. {unknown[0]!r})")
    chosen: list[tuple[EvalItem, int]] = []
    for item in benchmark.items:
        pred = predictions.get(item.question_id)
        if pred is None:
            continue
        if not 0 <= pred < len(item.options):
            raise SaviError(f"prediction {pred} for {item.question_id} is out of range for its "
                            f"{len(item.options)} options")
        chosen.append((item, pred))
    file_name = f"{benchmark.name}_{benchmark.split}_submission.json"
    write = _SUBMISSIONS.get(benchmark.name)
    if write is not None:
        return file_name, write(chosen)
    raise SaviError(f"{BENCHMARKS[benchmark.name].title} has no leaderboard submission format: its answers are "
                    "public, so it is scored locally")


def _split_for(name: str, data: Path, split: str | None) -> str:
    """The split to read: as asked, else the one an annotation file's name gives, else the default."""
    info = BENCHMARKS[name]
    named = None
    if data.is_file() and name == "egoschema":
        # The HF mirror names its configs by folder: Subset/ has the answers, MC/ is the full set.
        named = {"subset": "subset", "mc": "full"}.get(data.parent.name.lower())
    elif data.is_file():
        stem = data.stem.lower().replace("-", "_")
        if name == "tempcompass" and "captioning" in stem:
            raise SaviError(f"{data}: TempCompass captioning is not supported: its free-form captions need an "
                            "LLM judge")
        named = next((s for s in sorted(info.splits, key=len, reverse=True) if s.replace("-", "_") in stem), None)
    if split is None:
        return named or info.default_split
    if named is not None and named != split and not (name == "mvbench" and split == "all"):
        raise SaviError(f"{data} holds the {named} split of {info.title}, not {split}")
    return split
