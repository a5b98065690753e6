"""Video and frame I/O: decode a few frames of a video, upright and resized, and store them as JPEGs.

Decoding uses decord (fast seeking by frame index). PyAV opens the file first: it gives a clear reason when a
file is not a video, and it reads the display rotation of phone clips. decord applies that rotation itself for
some containers (mp4, mov) and not for others (mkv), so `read_video` checks what decord did and finishes the
job, and the frames always come out upright.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.core.errors import first_line

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                    ".ts", ".mts", ".m2ts", ".ogv")
JPEG_QUALITY = 90
# The vision towers need frames of at least 28 px (Qwen's merged patches) to 32 px (Qwen3-VL's): a video smaller than
# this on a side has nothing they can see (the same bound as --max-side's).
MIN_SIDE = 32


class VideoError(Exception):
    """A video that cannot be sampled. Its message becomes the `error` of the sample row."""


@dataclass(frozen=True)
class Sampling:
    """Frames picked and sized by a rule of their own instead of uniform segment midpoints and a longest side (an
    evaluation protocol's, e.g. lmms-eval's for a model family).

    pick(count, fps): the indices to decode among the `count` frames of the clip (or of its time span), given its
    average frame rate; repeats are decoded as often as they appear. size(height, width, count, fps): the
    (height, width) every frame is resized to, given its upright size (a rule's pixel budget per frame can
    depend on how many frames it takes)."""

    pick: Callable[[int, float], list[int]]
    size: Callable[[int, int, int, float], tuple[int, int]]


@dataclass
class DecodedVideo:
    frames: list[np.ndarray]  # upright RGB uint8 frames, each (H, W, 3)
    indices: list[int]
    timestamps_s: list[float]
    container: str
    codec: str
    duration_s: float
    fps: float
    num_frames: int
    width: int  # upright size before resizing
    height: int
    rotation: int
    variable_frame_rate: bool
    shortfall: str | None


def read_video(path: str | Path, *, frames: int = 32, fps: float | None = None, max_side: int = 448,
               threads: int = 1, start_s: float | None = None, end_s: float | None = None,
               sampling: Sampling | None = None) -> DecodedVideo:
    """Decode `frames` frames at uniform segment midpoints (or at `fps`, capped at `frames`), upright and resized
    so the longer side is at most `max_side`; or, with `sampling`, the frames its rule picks at the size it gives.
    `start_s`/`end_s` restrict sampling to that span of the clip.
    Raises VideoError with a one-line reason for anything unreadable."""
    path = Path(path)
    status = path.stat()
    if not stat.S_ISREG(status.st_mode):
        # A pipe or a device never ends (or never starts): reading it would hang instead of failing.
        raise VideoError(f"not a regular file ({file_kind(status.st_mode)})")
    if status.st_size == 0:
        raise VideoError("empty file (0 bytes)")
    container, codec, rotation, first_raw = _probe(path)
    turns = (rotation // 90) % 4
    stored_height, stored_width = first_raw.shape[:2]
    if min(stored_height, stored_width) < MIN_SIDE:
        width, height = (stored_height, stored_width) if turns % 2 else (stored_width, stored_height)
        raise VideoError(f"the video is {width}x{height} px, too small: frames need at least {MIN_SIDE} px on each "
                         "side")
    # Resizing inside the decoder is much faster than after it, but decord gets the output shape wrong when it
    # also applies a rotation, so rotated clips are resized afterwards.
    scale = max_side / max(stored_height, stored_width)
    size = {}
    if turns == 0 and scale < 1 and sampling is None:
        size = {"width": max(1, round(stored_width * scale)), "height": max(1, round(stored_height * scale))}

    with _utf8_path(path) as readable:
        return _decode(readable, container, codec, turns, first_raw, size, frames, fps, max_side, threads,
                       (start_s, end_s), sampling)


def read_frame_folder(folder: Path, *, frames: int = 32, max_side: int = 448, folder_fps: float = 3.0,
                      start_s: float | None = None, end_s: float | None = None) -> DecodedVideo:
    """A video stored as numbered JPEGs (some benchmarks ship frames, e.g. at 3 fps), sampled like a file."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise VideoError(f"no frames (.jpg or .png) in the folder {folder}")
    starts = np.arange(len(files)) / folder_fps
    duration = len(files) / folder_fps
    indices, shortfall = _choose_indices(starts, duration, frames, None, (start_s, end_s))
    try:
        decoded = [_resize(np.asarray(Image.open(files[i]).convert("RGB")), max_side) for i in indices]
    except OSError as e:
        raise VideoError(f"unreadable frame in {folder}: {first_line(e, 200)}") from None
    height, width = decoded[0].shape[:2]
    return DecodedVideo(frames=decoded, indices=indices, timestamps_s=[round(float(starts[i]), 6) for i in indices],
                        container="frames", codec="jpeg", duration_s=duration, fps=folder_fps, num_frames=len(files),
                        width=width, height=height, rotation=0, variable_frame_rate=False, shortfall=shortfall)


def _decode(path: Path, container: str, codec: str, turns: int, first_raw: np.ndarray, size: dict[str, int],
            frames: int, fps: float | None, max_side: int, threads: int,
            span: tuple[float | None, float | None], sampling: Sampling | None = None) -> DecodedVideo:
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # its FFmpeg would print to stderr; the row keeps the reason
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads, **size)
        total = len(reader)
    except Exception as e:  # decord raises its own DECORDError and sometimes RuntimeError
        raise VideoError(f"decoder cannot read the file: {_decord_reason(e)}") from None
    if total == 0:
        raise VideoError("the video stream has no frames")

    starts_ends = reader.get_frame_timestamp(np.arange(total))
    starts = starts_ends[:, 0].astype(float)
    duration = float(starts_ends[-1, 1])
    if not np.isfinite(duration) or duration <= 0:
        raise VideoError(f"the video has no usable timestamps (duration {duration})")
    if sampling is None:
        indices, shortfall = _choose_indices(starts, duration, frames, fps, span)
    else:
        first, last = _span_frames(starts, span)
        rate = float(reader.get_avg_fps())
        indices = [first + k for k in sampling.pick(last - first, rate)]
        shortfall = None

    # decord may or may not have rotated already; compare with PyAV's raw first frame to find out.
    todo_turns = turns
    if turns:
        todo_turns = 0 if _decord_rotated(reader, first_raw, turns) else turns

    decoded = []
    for index in indices:
        try:
            frame = _rgb(reader[int(index)].asnumpy())
        except VideoError:
            raise
        except Exception as e:
            raise VideoError(f"decoding failed at frame {index} of {total}: {_decord_reason(e)}") from None
        if todo_turns:
            frame = np.rot90(frame, todo_turns)
        if sampling is None:
            decoded.append(_resize(frame, max_side))
        else:
            decoded.append(_resize_to(frame, sampling.size(*frame.shape[:2], last - first, rate)))

    height, width = first_raw.shape[:2]
    if turns % 2:
        width, height = height, width
    deltas = np.diff(starts)
    return DecodedVideo(
        frames=decoded,
        indices=[int(i) for i in indices],
        timestamps_s=[round(float(starts[i]), 6) for i in indices],
        container=container,
        codec=codec,
        duration_s=round(duration, 6),
        fps=round(float(reader.get_avg_fps()), 6),
        num_frames=total,
        width=width,
        height=height,
        rotation=turns * 90,
        variable_frame_rate=bool(len(deltas) > 2 and deltas.std() > 0.01 * deltas.mean()),
        shortfall=shortfall,
    )


@contextlib.contextmanager
def _utf8_path(path: Path) -> Iterator[Path]:
    """decord only takes UTF-8 paths; a file whose name is other bytes is read through an ASCII-named symlink."""
    try:
        str(path).encode("utf-8")
        yield path
        return
    except UnicodeEncodeError:
        pass
    with tempfile.TemporaryDirectory(prefix="savi-") as tmp:
        link = Path(tmp) / f"video{path.suffix.encode('ascii', 'ignore').decode()}"
        link.symlink_to(path.resolve())
        yield link


def _probe(path: Path) -> tuple[str, str, int, np.ndarray]:
    """Container and codec names, display rotation (CCW degrees) and the first frame as stored."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"no video stream (container {container.format.name})")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            if first is None:
                raise VideoError("the video stream has no decodable frames")
            return container.format.name, stream.codec_context.name, int(first.rotation or 0), \
                first.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
        # strerror is FFmpeg's reason without the errno and path noise ("Invalid data found when processing input").
        reason = e.strerror or first_line(e, 200)
        hint = _FFMPEG_HINTS.get(reason)
        raise VideoError(f"not a readable video: {reason}" + (f" ({hint})" if hint else "")) from None


# FFmpeg reasons that read like a system fault but, when opening a file, mean the file itself stops short.
_FFMPEG_HINTS = {
    "End of file": "the file ends before its first frame: it is cut short or has no frames",
    "Input/output error": "the file is cut short or damaged",
}


def _span_frames(starts: np.ndarray, span: tuple[float | None, float | None]) -> tuple[int, int]:
    """The first frame and one past the last that start inside the span (benchmark questions about part of a
    clip); the whole clip without one. Never empty."""
    first = 0 if span[0] is None else int(np.searchsorted(starts, span[0], side="left"))
    last = len(starts) if span[1] is None else int(np.searchsorted(starts, span[1], side="right"))
    first = min(first, len(starts) - 1)
    return first, max(last, first + 1)


def _choose_indices(starts: np.ndarray, duration: float, frames: int, fps: float | None,
                    span: tuple[float | None, float | None] = (None, None)) -> tuple[list[int], str | None]:
    first, last = _span_frames(starts, span)
    total = last - first
    if fps is None:
        # Segment midpoints in frame-index space: frame k of N is the middle frame of the k-th of N equal segments.
        wanted = [first + int((k + 0.5) * total / frames) for k in range(frames)]
    else:
        times = np.arange(0.5 / fps, duration, 1.0 / fps)
        if len(times) > frames:  # the cap: spread `frames` samples over the whole clip rather than cut it short
            times = times[((np.arange(frames) + 0.5) * len(times) / frames).astype(int)]
        wanted = [int(max(0, np.searchsorted(starts, t, side="right") - 1)) for t in times]
    indices = sorted(set(wanted))
    if len(indices) < len(wanted) or (fps is None and total < frames):
        return indices, f"kept all {len(indices)} distinct frames ({len(wanted)} requested, video has {total})"
    return indices, None


def _rgb(frame: np.ndarray) -> np.ndarray:
    """A frame from decord as an (H, W, 3) array.

    decord pads each row of a frame to its line alignment, and when the padded row is a whole multiple of the
    width it reports the padding as extra channels: (H, W, 96 / W) below 32 px wide, (H, W, 4) at 48 or 72 px
    (sizes that resizing a portrait clip also gives). The pixels are the first 3 W bytes of each row."""
    if frame.ndim != 3 or frame.shape[2] < 3:
        raise VideoError(f"the decoder returned frames shaped {frame.shape}, not height x width x RGB")
    if frame.shape[2] == 3:
        return frame
    height, width, channels = frame.shape
    return np.ascontiguousarray(frame.reshape(height, width * channels)[:, :3 * width].reshape(height, width, 3))


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, in words, for an error message."""
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


def _decord_rotated(reader, first_raw: np.ndarray, turns: int) -> bool:
    first = _rgb(reader[0].asnumpy())
    rotated = np.rot90(first_raw, turns)
    if turns % 2:  # 90/270 degrees: the shape alone tells (unless the frame is square)
        if first.shape != first_raw.shape:
            return True
        if first.shape[0] != first.shape[1]:
            return False
    # 180 degrees: same shape either way, so compare pixels.
    diff_rotated = np.abs(first.astype(np.int16) - rotated).mean()
    diff_raw = np.abs(first.astype(np.int16) - first_raw).mean()
    return bool(diff_rotated < diff_raw)


def _resize(frame: np.ndarray, max_side: int) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return np.ascontiguousarray(frame)
    from PIL import Image

    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize(size, Image.BILINEAR, reducing_gap=2.0))


def _resize_to(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The frame at exactly (height, width), bicubic as qwen-vl-utils resizes (PIL's, not torchvision's)."""
    height, width = size
    if frame.shape[:2] == (height, width):
        return np.ascontiguousarray(frame)
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((width, height), Image.BICUBIC))


def _decord_reason(error: BaseException) -> str:
    """decord's messages start with a time and its own source path; keep the reason and name FFmpeg's codes."""
    text = re.sub(r"^\[[\d:]+\] \S+:\d+: (Error: )?", "", first_line(error, 200))
    if str(_AVERROR_INVALIDDATA) in text:
        return "invalid data (the file is truncated or damaged)"
    return text


_AVERROR_INVALIDDATA = 1094995529  # FFmpeg's AVERROR_INVALIDDATA, as decord reports it


# ---------------------------------------------------------------------------------------------------------------
# The frame store


def frame_name(k: int) -> str:
    return f"{k:04d}.jpg"


def save_frames(frames: list[np.ndarray], folder: Path, quality: int = JPEG_QUALITY) -> None:
    """Write frames as JPEGs into `folder` all at once: a temporary folder renamed into place.

    Each JPEG is encoded in memory and written by Python's file object: Pillow writing to the file itself ignores
    a short write, so a full disk (or a file-size limit) would leave a truncated frame that looks finished."""
    from PIL import Image

    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k, frame in enumerate(frames):
        encoded = io.BytesIO()
        Image.fromarray(frame).save(encoded, format="JPEG", quality=quality)
        try:
            (tmp / frame_name(k)).write_bytes(encoded.getbuffer())
        except OSError as e:  # a failed write() names no file; say which one
            raise OSError(e.errno, e.strerror, str(tmp / frame_name(k))) from None
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:
        # Another process wrote the same video's frames first (a copy of the same file); they are identical.
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_abandoned(folder)


def _remove_abandoned(folder: Path) -> None:
    """Temporary frame folders of processes that died mid-write (a kill, a full disk) for the same video."""
    for leftover in folder.parent.glob(f".{folder.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_frames(folder: Path) -> np.ndarray:
    """The stored frames of one video as a (T, H, W, 3) uint8 array, in order."""
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"no frames in {folder}")
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
