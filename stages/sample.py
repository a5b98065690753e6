"""Stage `sample`: decode a fixed set of frames per video, once per run, for every later stage and round.

Each input video becomes one row of `samples.parquet`, keyed by a hash of its content. A video that cannot be
decoded becomes an error row with the reason, and the run goes on. Frames are written as JPEGs under
`frames/<video_id>/`. Adding videos to a run samples only the new ones; the sampling parameters are fixed per
run (changing them needs --force). A video whose frames are gone or incomplete is sampled again (a repair).

A redo (--force) keeps the finished table and its frames until it is whole: its frames go to `.frames.redo/`, and
only once every video is done are they swapped in for `frames/`, with the new table (`_finish_redo`).

Decoding runs in worker processes: decoders can crash on hostile files, and a crash must cost one video, not the
run. If a worker dies, the videos it may have been holding are retried one at a time in a fresh process, and
the one that kills the decoder again becomes an error row.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stages.core.config import read_config, update_config
from stages.core.errors import SaviError
from stages.core.records import Sample
from stages.core.settings import SampleConfig
from stages.core.store import Artifact, ArtifactWriter, Progress, Run, file_sha256, fingerprint, written_records
from stages.core.video import VIDEO_EXTENSIONS, VideoError, file_kind, frame_name, read_video, save_frames

LIST_SUFFIXES = (".txt", ".list", ".lst")
REDO_FRAMES = ".frames.redo"  # the frames of a redo, in the run, until they replace frames/
OLD_FRAMES = ".frames.old"  # the frames a redo replaces, while its table is being written


@dataclass(frozen=True)
class SampleResult:
    path: Path
    new: int
    ok: int
    errors: int
    duplicates: int
    up_to_date: bool
    repaired: int = 0  # videos among `new` whose frames were gone or incomplete; their rows stand


def find_videos(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files, folders (recursively, by video extension) and text files listing files or folders. Order is
    stable. A path that is not a regular file (a pipe, a device) is refused: reading one would never end."""
    found: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise SaviError(f"no such file or folder: {raw}")
        if path.is_dir():
            found += _videos_under(path, raw)
        elif not path.is_file():
            raise SaviError(f"{raw} is not a regular file ({file_kind(path.stat().st_mode)}); give video files, "
                            "folders, or text files listing them")
        elif path.suffix.lower() in LIST_SUFFIXES:
            for entry in _read_list(path):
                found += _videos_under(entry, entry) if entry.is_dir() else [entry]
        else:
            found.append(path)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise SaviError("no videos given")
    return unique


def _videos_under(folder: Path, raw: str | Path) -> list[Path]:
    """The videos in a folder and its subfolders, by extension; hidden ones and pipes are not videos."""
    videos = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not videos:
        raise SaviError(f"no videos found under {raw} (looked for {', '.join(VIDEO_EXTENSIONS)})")
    return videos


def _read_list(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text().splitlines()
    except UnicodeDecodeError:
        raise SaviError(f"{list_file} is not a text list of video paths (not UTF-8)") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    # Relative entries are relative to the list file, so a list travels with its videos.
    paths = [p if p.is_absolute() else list_file.parent / p for p in map(Path, entries)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise SaviError(f"{len(missing)} paths listed in {list_file} do not exist: {_shown(missing)}")
    special = [p for p in paths if not p.is_file() and not p.is_dir()]
    if special:
        raise SaviError(f"{len(special)} paths listed in {list_file} are not regular files (pipes, devices or "
                        f"sockets): {_shown(special)}")
    return paths


def _shown(paths: list[Path]) -> str:
    return ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def content_id(path: Path) -> str:
    """Stable video id: the file's content, so a renamed or copied file is the same video."""
    return file_sha256(path)[:16]


def path_text(path: Path) -> str:
    """The path as it is stored: Parquet needs UTF-8, and Linux file names may be any bytes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def sample_one(path: Path, video_id: str, frames_root: Path, cfg: SampleConfig, threads: int) -> Sample:
    """Decode one video and store its frames. Never raises for a bad video: it returns an error row."""
    stat = path.stat()
    row = Sample(video_id=video_id, path=path_text(path), status="ok", error=None, size_bytes=stat.st_size,
                 mtime_ns=stat.st_mtime_ns, sampling="uniform" if cfg.fps is None else "fps",
                 frames_requested=cfg.frames)
    try:
        video = read_video(path, frames=cfg.frames, fps=cfg.fps, max_side=cfg.max_side, threads=threads)
    except VideoError as e:
        row.status, row.error = "error", str(e)
        return row
    except Exception as e:  # decoders fail in many ways; one hostile file must not end the run
        row.status, row.error = "error", f"unexpected {type(e).__name__} while decoding: {str(e)[:200]}"
        return row
    # Outside the try: a failed write (a full disk) is the machine's fault, not this video's, and stops the run,
    # which the same command then resumes.
    save_frames(video.frames, frames_root / video_id)
    row.container, row.codec = video.container, video.codec
    row.duration_s, row.fps, row.num_frames = video.duration_s, video.fps, video.num_frames
    row.width, row.height, row.rotation = video.width, video.height, video.rotation
    row.variable_frame_rate = video.variable_frame_rate
    row.frame_indices, row.timestamps_s = video.indices, video.timestamps_s
    row.frame_height, row.frame_width = video.frames[0].shape[:2]
    row.shortfall = video.shortfall
    row.frames_dir = f"frames/{video_id}"
    return row


def run(run: Run, inputs: Iterable[str | Path], cfg: SampleConfig = SampleConfig(), *, force: bool = False,
        progress: Progress | None = None,
        worker: Callable[..., Sample] = sample_one) -> SampleResult:
    """Sample every video in `inputs` into `run`. Returns where the table is and what was done.

    `progress(total)` may return a callback that is called once per finished video (for a progress bar).
    `worker` is `sample_one`; it is a parameter only so a test can show that a crashing decoder costs one video.
    """
    if cfg.frames < 1:
        raise SaviError("--frames must be at least 1")
    if cfg.fps is not None and cfg.fps <= 0:
        raise SaviError("--fps must be positive")
    videos = find_videos(inputs)
    artifact = run.artifact("samples")
    _settle_frames(run, artifact)
    existing = [] if force else written_records(artifact)
    known = {(r.path, r.size_bytes, r.mtime_ns): r.video_id for r in existing}
    identified = _identify(videos, known, cfg.workers)
    owner, todo, duplicates = _new_videos(identified, existing)

    params = {k: v for k, v in asdict(cfg).items() if k != "workers"}  # workers change speed, not results
    writer = ArtifactWriter(artifact, params=params, inputs=_inputs_digest(owner), force=force, incremental=True)
    if writer.replacing and not force:
        # A killed redo resumes as a redo: the old table's videos are done again, not taken as done.
        owner, todo, duplicates = _new_videos(identified, writer.records())
        writer.inputs = _inputs_digest(owner)
    redo_frames = run.path / REDO_FRAMES
    if force or not writer.replacing:
        shutil.rmtree(redo_frames, ignore_errors=True)  # frames of a redo that was started over or abandoned
    repairs = {} if writer.replacing else _frames_to_repair(run, existing, identified)
    if writer.up_to_date and not repairs:
        return SampleResult(artifact.path, 0, 0, 0, duplicates, up_to_date=True)

    frames_root = redo_frames if writer.replacing else run.frames_dir
    frames_root.mkdir(parents=True, exist_ok=True)
    for leftover in frames_root.glob(".*.tmp-*"):  # frames of a video whose worker was killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    todo = {vid: path for vid, path in todo.items() if vid not in writer.done_items}
    jobs = {**todo, **repairs}
    tick = progress(len(jobs)) if progress else (lambda: None)
    ok = errors = 0
    try:
        for row in _sample_all(jobs, frames_root, cfg, worker):
            if row.video_id not in repairs:  # a repaired video's row is in the table already
                writer.add(row)
            ok += row.status == "ok"
            errors += row.status == "error"
            tick()
    finally:
        writer.close()
    result = SampleResult(artifact.path, len(jobs), ok, errors, duplicates, up_to_date=False, repaired=len(repairs))
    if writer.up_to_date:  # only repairs: the table was finished and stays as it is
        return result
    rows = writer.records()
    counts = {"ok": sum(r.status == "ok" for r in rows), "error": sum(r.status == "error" for r in rows)}
    if writer.replacing:
        _finish_redo(run, writer, counts, notes={"duplicate_inputs": duplicates})
    else:
        writer.finish(counts=counts, notes={"duplicate_inputs": duplicates})
    # The run remembers how it was sampled, so adding videos (or sampling one again) needs no flags.
    if writer.replacing or SampleConfig.SECTION not in read_config(run):
        update_config(run, SampleConfig.SECTION, params)
    return result


def _new_videos(identified: list[tuple[Path, str]],
                existing: list[Sample]) -> tuple[dict[str, str], dict[str, Path], int]:
    """Which inputs are new, decided by content id: every video of the table (id -> stored path), the inputs to
    sample (id -> path), and how many inputs were another path to a video already there."""
    owner = {r.video_id: r.path for r in existing}
    todo: dict[str, Path] = {}
    duplicates = 0
    for path, video_id in identified:
        if video_id in owner:
            duplicates += owner[video_id] != path_text(path)
            continue
        owner[video_id] = path_text(path)
        todo[video_id] = path
    return owner, todo, duplicates


def _inputs_digest(owner: dict[str, str]) -> dict[str, Any]:
    return {"videos": len(owner), "video_ids_sha256": fingerprint(sorted(owner))}


def _frames_to_repair(run: Run, existing: list[Sample], identified: list[tuple[Path, str]]) -> dict[str, Path]:
    """The inputs already sampled whose frames folder is gone or holds fewer frames than their row: they are
    sampled again. A model stage that cannot read a video's frames says to do just that."""
    given = {video_id: path for path, video_id in identified}
    repairs = {}
    for row in existing:
        if row.status != "ok" or row.video_id not in given or not row.frames_dir:
            continue
        try:
            stored = set(os.listdir(run.path / row.frames_dir))
        except OSError:  # gone, or not a folder any more
            stored = set()
        if any(frame_name(k) not in stored for k in range(len(row.frame_indices or []))):
            repairs[row.video_id] = given[row.video_id]
    return repairs


def _finish_redo(run: Run, writer: ArtifactWriter, counts: dict[str, Any], notes: dict[str, Any]) -> None:
    """Put a finished redo in place: its frames for `frames/`, its table for the old one.

    The old manifest goes first, so from then until the new one is written nothing looks finished and no reader
    pairs the old table with the new frames or the reverse. The old frames are set aside, the new ones renamed
    in, the table written, and only then are the old frames removed. `_settle_frames` repairs a crash at any
    step: before the new manifest it puts the old frames back (the redo resumes and swaps again); after it, it
    removes the old ones."""
    old_frames = run.path / OLD_FRAMES
    writer.artifact.manifest_path.unlink(missing_ok=True)
    if run.frames_dir.exists():
        os.rename(run.frames_dir, old_frames)
    os.rename(run.path / REDO_FRAMES, run.frames_dir)
    writer.finish(counts=counts, notes=notes)
    shutil.rmtree(old_frames, ignore_errors=True)


def _settle_frames(run: Run, artifact: Artifact) -> None:
    """Finish or undo the frames swap of a redo that a crash interrupted (see `_finish_redo`)."""
    old_frames = run.path / OLD_FRAMES
    if not old_frames.exists():
        return
    if artifact.manifest_path.is_file() and not artifact.in_progress:
        shutil.rmtree(old_frames)  # the new table was written: only the old frames' removal was left
        return
    # The new table is not finished (or its parts remain, so the redo finishes again): put the old frames back,
    # with the new ones where the resumed redo expects them. Nothing looks finished until it does.
    artifact.manifest_path.unlink(missing_ok=True)
    if run.frames_dir.exists():
        os.rename(run.frames_dir, run.path / REDO_FRAMES)
    os.rename(old_frames, run.frames_dir)


def _identify(videos: list[Path], known: dict[tuple[str, int, int], str], workers: int) -> list[tuple[Path, str]]:
    """Content ids for every input; unchanged files (same path, size, mtime) reuse the id already recorded."""

    def one(path: Path) -> tuple[Path, str]:
        stat = path.stat()
        cached = known.get((path_text(path), stat.st_size, stat.st_mtime_ns))
        return path, cached or content_id(path)

    # hashlib releases the GIL on large buffers, so threads hash files in parallel.
    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, videos))


def _sample_all(todo: dict[str, Path], frames_root: Path, cfg: SampleConfig,
                worker: Callable[..., Sample]) -> Iterable[Sample]:
    """Yield one row per video, decoding in worker processes; survive workers that crash."""
    workers = max(1, cfg.workers)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pending = dict(todo)
    while pending:
        try:
            yield from _pool_map(pending, frames_root, cfg, threads, workers, worker)
        except _PoolCrashed as crash:
            for video_id in crash.in_flight:
                # Alone in a fresh process, a crash is this video's fault.
                alone = {video_id: pending.pop(video_id)}
                try:
                    yield from _pool_map(alone, frames_root, cfg, threads, 1, worker)
                except _PoolCrashed:
                    yield _crashed_row(alone[video_id], video_id, cfg)


class _PoolCrashed(Exception):
    def __init__(self, in_flight: list[str]):
        self.in_flight = in_flight


def _pool_map(pending: dict[str, Path], frames_root: Path, cfg: SampleConfig, threads: int, workers: int,
              worker: Callable[..., Sample]) -> Iterable[Sample]:
    """Decode `pending` (removing each finished video from it). At most `workers` videos are in flight at once,
    so when a worker dies we know exactly which videos may have killed it."""
    # spawn, not fork: the caller may have loaded threaded libraries (torch), and forking those can deadlock.
    context = multiprocessing.get_context("spawn")
    queue = iter(list(pending.items()))
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
        in_flight: dict[cf.Future, str] = {}
        try:
            while True:
                while len(in_flight) < workers and (item := next(queue, None)):
                    video_id, path = item
                    in_flight[pool.submit(worker, path, video_id, frames_root, cfg, threads)] = video_id
                if not in_flight:
                    return
                done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    try:
                        row = future.result()
                    except cf.process.BrokenProcessPool:
                        raise _PoolCrashed(list(in_flight.values())) from None
                    del pending[in_flight.pop(future)]
                    yield row
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise


def _worker_init() -> None:
    """Ctrl-C is the parent's to handle (it saves finished rows); and ask Linux to kill this worker when the
    parent dies, so a `kill -9` leaves no decoder running."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _crashed_row(path: Path, video_id: str, cfg: SampleConfig) -> Sample:
    stat = path.stat()
    return Sample(video_id=video_id, path=path_text(path), status="error",
                  error="the decoder crashed on this file (corrupt or unsupported video)",
                  size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns,
                  sampling="uniform" if cfg.fps is None else "fps", frames_requested=cfg.frames)
