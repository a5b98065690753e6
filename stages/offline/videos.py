"""Small synthetic test videos, written on the spot with PyAV.

savi's tests, ``make demo`` and the benchmarks need real video files, but nothing binary is committed. This
module draws clips of moving shapes whose colours and directions are known, so a test can check that decoded
frames are right ("the red square moves left to right") and the demo has something concrete to ask about.

Everything is deterministic: the same call writes the same bytes (muxers run with ``fflags=+bitexact`` so
Matroska/WebM do not stamp random segment UIDs), and :func:`frame_at` rebuilds the exact RGB frame that was
handed to the encoder, so decoded pixels can be compared against the ground truth.

Coordinates and rotation
------------------------
``VideoSpec.width``/``height`` are the stored (coded) size. ``VideoSpec.rotation`` is the display rotation
written into the stream's display matrix, in counter-clockwise degrees (PyAV's convention for
``VideoStream.set_display_rotation``; PyAV reads 180 back as -180 and 270 as -90 from ``VideoFrame.rotation``).
A viewer sees ``np.rot90(stored, k=rotation // 90)`` (:func:`upright_frame_at`).

Shape directions describe that *upright* picture, because that is what a person (or a model shown the
correctly rotated frames) perceives: a phone clip with rotation 90 whose shape moves ``top_to_bottom`` shows
the shape moving top to bottom once rotated, while in the stored frames it moves right to left.
:func:`frame_at` and :func:`shape_center` use stored coordinates; ``shape_center(..., upright=True)`` gives
upright ones. For rotation 0 the two coincide.

Motion is linear in presentation time (not frame index), so in a variable-frame-rate clip a shape's position
tells the frame's timestamp, just as real footage would.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
KINDS: tuple[str, ...] = ("square", "circle")
DIRECTIONS: tuple[str, ...] = ("left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top", "static")
ROTATIONS: tuple[int, ...] = (0, 90, 180, 270)

# Containers we know how to write, with the codec each gets when none is asked for.
DEFAULT_CODECS: dict[str, str] = {
    ".mp4": "libx264",
    ".mkv": "libx264",
    ".mov": "libx264",
    ".webm": "libvpx-vp9",
    ".avi": "mpeg4",
}
CONTAINER_FORMATS: dict[str, str] = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm", ".avi": "avi"}

# Keeps shapes off the frame border, where chroma subsampling and codec edge handling smear them.
_EDGE_MARGIN = 2
# Amplitude of the per-seed background texture: enough that different seeds give different pixels (and bytes),
# small enough that it never gets confused with a shape colour.
_TEXTURE_AMPLITUDE = 4
# Pattern of frame intervals (in nominal frame periods) for variable-frame-rate clips.
_VFR_STEPS: tuple[int, ...] = (1, 3)


@dataclass(frozen=True)
class Shape:
    """One shape in a clip. ``direction`` is as seen in the upright (displayed) picture."""

    kind: str
    color: str
    direction: str
    size: int = 16

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown shape kind {self.kind!r}; expected one of {KINDS}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {tuple(COLORS)}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}; expected one of {DIRECTIONS}")
        if self.size < 2:
            raise ValueError(f"shape size must be at least 2 pixels, got {self.size}")

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color]


@dataclass(frozen=True)
class VideoSpec:
    """What :func:`write_video` wrote: enough to rebuild every frame exactly."""

    path: Path
    width: int
    height: int
    fps: float
    num_frames: int
    duration_s: float
    codec: str
    container: str
    rotation: int
    shapes: tuple[Shape, ...]
    variable_frame_rate: bool
    background: tuple[int, int, int] = (20, 20, 20)
    seed: int = 0
    # Presentation time of each frame; for VFR clips these are irregular.
    frame_times_s: tuple[float, ...] = field(default=())

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) of the picture a viewer sees after applying the rotation."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


def _frame_pts(num_frames: int, variable_frame_rate: bool) -> list[int]:
    """Frame timestamps in units of the nominal frame period."""
    if not variable_frame_rate:
        return list(range(num_frames))
    pts, t = [], 0
    for i in range(num_frames):
        pts.append(t)
        t += _VFR_STEPS[i % len(_VFR_STEPS)]
    return pts


def _frame_period(fps: float) -> Fraction:
    # limit_denominator keeps NTSC-style rates exact (30000/1001) while turning 12.0 into 12/1.
    return 1 / Fraction(fps).limit_denominator(1001)


def _motion_fraction(spec: VideoSpec, frame_index: int) -> float:
    """How far along its path every moving shape is at this frame, 0.0 at the first frame, 1.0 at the last."""
    times = spec.frame_times_s
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (times[frame_index] - times[0]) / (times[-1] - times[0])


def _upright_center(spec: VideoSpec, shape_index: int, frame_index: int) -> tuple[float, float]:
    shape = spec.shapes[shape_index]
    uw, uh = spec.upright_size
    half = shape.size / 2
    n = len(spec.shapes)

    def lane(dim: int) -> float:
        # Each shape gets its own lane across its motion axis so that shapes moving the same way never overlap.
        return min(max((shape_index + 1) / (n + 1) * dim, half), dim - half)

    def travel(dim: int, forward: bool) -> float:
        lo, hi = half + _EDGE_MARGIN, dim - half - _EDGE_MARGIN
        if hi < lo:
            lo = hi = dim / 2
        f = _motion_fraction(spec, frame_index)
        return lo + (hi - lo) * f if forward else hi - (hi - lo) * f

    if shape.direction == "left_to_right":
        return travel(uw, True), lane(uh)
    if shape.direction == "right_to_left":
        return travel(uw, False), lane(uh)
    if shape.direction == "top_to_bottom":
        return lane(uw), travel(uh, True)
    if shape.direction == "bottom_to_top":
        return lane(uw), travel(uh, False)
    return lane(uw), lane(uh)


def _upright_to_stored(x: float, y: float, spec: VideoSpec) -> tuple[float, float]:
    # stored = np.rot90(upright, -k): k clockwise quarter turns. In continuous pixel coordinates one clockwise
    # turn of a (w, h) picture sends (x, y) to (h - y, x) in a (h, w) picture.
    w, h = spec.upright_size
    for _ in range((spec.rotation // 90) % 4):
        x, y, w, h = h - y, x, h, w
    return x, y


def shape_center(spec: VideoSpec, shape_index: int, frame_index: int, *, upright: bool = False) -> tuple[float, float]:
    """Centre (x, y) of a shape at a frame, in stored pixel coordinates (``upright=True``: as displayed).

    Coordinates are continuous: pixel column ``c`` spans ``[c, c + 1)``, so the pixel containing the centre is
    ``(int(x), int(y))``.
    """
    if not 0 <= frame_index < spec.num_frames:
        raise IndexError(f"frame {frame_index} out of range for {spec.num_frames} frames")
    x, y = _upright_center(spec, shape_index, frame_index)
    return (x, y) if upright else _upright_to_stored(x, y, spec)


def _background(spec: VideoSpec) -> np.ndarray:
    w, h = spec.upright_size
    rng = np.random.default_rng(spec.seed)
    # Luma-only texture, fixed over time: it keeps colours neutral and costs the encoder little after frame 0.
    texture = rng.integers(-_TEXTURE_AMPLITUDE, _TEXTURE_AMPLITUDE + 1, size=(h, w, 1), dtype=np.int16)
    base = np.array(spec.background, dtype=np.int16).reshape(1, 1, 3)
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def upright_frame_at(spec: VideoSpec, index: int) -> np.ndarray:
    """The RGB picture (H, W, 3) uint8 a viewer sees at frame ``index``, i.e. with the rotation applied."""
    if not 0 <= index < spec.num_frames:
        raise IndexError(f"frame {index} out of range for {spec.num_frames} frames")
    frame = _background(spec)
    h, w = frame.shape[:2]
    # Pixel centres sit at half-integers; testing them (half-open for squares) always covers exactly
    # size x size pixels for a square, whatever the fractional centre.
    ys = np.arange(h, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float64)[None, :] + 0.5
    for i, shape in enumerate(spec.shapes):
        cx, cy = _upright_center(spec, i, index)
        half = shape.size / 2
        if shape.kind == "square":
            mask = (xs >= cx - half) & (xs < cx + half) & (ys >= cy - half) & (ys < cy + half)
        else:
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= half**2
        frame[mask] = shape.rgb
    return frame


def frame_at(spec: VideoSpec, index: int) -> np.ndarray:
    """The exact RGB frame (H, W, 3) uint8 that was encoded at ``index``, as stored (not rotated)."""
    return np.ascontiguousarray(np.rot90(upright_frame_at(spec, index), k=-(spec.rotation // 90)))


def _encoder_options(codec: str) -> dict[str, str]:
    # Quality is set high so decoded frames stay close to frame_at; the clips are tiny either way.
    if codec == "libx264":
        # The same bytes on every machine: one thread, and no macroblock tree, whose rate control gave differing
        # bytes from run to run on CPUs with AVX-512 (the synthetic clips need no rate-control finesse).
        return {"crf": "16", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
    if codec == "libvpx-vp9":
        return {"crf": "16", "b": "0", "deadline": "realtime", "cpu-used": "8"}
    if codec == "libvpx":
        # libvpx (VP8) only honours crf together with a bitrate ceiling.
        return {"crf": "8", "b": "2M", "deadline": "realtime", "cpu-used": "8"}
    return {}


def write_video(
    path: str | os.PathLike[str],
    *,
    num_frames: int = 48,
    fps: float = 12.0,
    size: tuple[int, int] = (96, 64),
    codec: str | None = None,
    shapes: Sequence[Shape] | None = None,
    rotation: int = 0,
    variable_frame_rate: bool = False,
    background: tuple[int, int, int] = (20, 20, 20),
    seed: int = 0,
) -> VideoSpec:
    """Write a clip of moving shapes and return its spec.

    ``size`` is the stored (width, height); both must be even (yuv420p). The container comes from the suffix;
    ``codec=None`` picks the container's usual codec (see ``DEFAULT_CODECS``). ``shapes`` defaults to one red
    square moving left to right. ``rotation`` (CCW degrees) is written as display-matrix metadata; shapes
    move as described in the rotated (upright) picture. ``variable_frame_rate`` alternates frame intervals of
    1x and 3x the nominal period, so the file is genuinely VFR.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONTAINER_FORMATS:
        raise ValueError(f"unsupported suffix {path.suffix!r}; expected one of {tuple(CONTAINER_FORMATS)}")
    width, height = size
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"size must be positive and even for yuv420p, got {size}")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation}")
    if rotation and suffix == ".avi":
        # AVI has no display matrix; FFmpeg drops the rotation without a word and the spec would lie.
        raise ValueError("AVI cannot carry a display rotation")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    shapes = tuple(shapes) if shapes is not None else (Shape("square", "red", "left_to_right"),)
    for shape in shapes:
        if shape.size > min(width, height):
            raise ValueError(f"shape size {shape.size} does not fit a {width}x{height} frame")
    codec = codec or DEFAULT_CODECS[suffix]
    if codec == "libvpx-vp9" and codec not in av.codecs_available:
        codec = "libvpx"

    period = _frame_period(fps)
    pts = _frame_pts(num_frames, variable_frame_rate)
    last_step = _VFR_STEPS[(num_frames - 1) % len(_VFR_STEPS)] if variable_frame_rate else 1
    spec = VideoSpec(
        path=path,
        width=width,
        height=height,
        fps=float(fps),
        num_frames=num_frames,
        duration_s=float((pts[-1] + last_step) * period),
        codec=codec,
        container=CONTAINER_FORMATS[suffix],
        rotation=rotation,
        shapes=shapes,
        variable_frame_rate=variable_frame_rate,
        background=tuple(background),
        seed=seed,
        frame_times_s=tuple(float(p * period) for p in pts),
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    # bitexact: Matroska/WebM otherwise write a random segment UID and the bytes differ run to run.
    with av.open(str(path), "w", format=spec.container, options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=1 / period, options=_encoder_options(codec))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # One encoder thread: with several, libx264 and libvpx split the work by the machine's core count and
        # load, and the bytes differ between machines (and between runs on a busy one).
        stream.codec_context.thread_count = 1
        # A time base of one nominal period makes VFR pts exact small integers; muxers rescale as they need.
        stream.time_base = period
        stream.codec_context.time_base = period
        # Keyframe about every second so seeking tests have more than one keyframe to land on.
        stream.codec_context.gop_size = max(1, round(fps))
        if variable_frame_rate:
            # MP4 stores sample durations as dts deltas; with B-frames reordering irregular pts, the container
            # duration comes out shorter than the clip. Phone encoders that produce VFR rarely use B-frames anyway.
            # (libx264 silently ignores an unknown "bframes" option; max_b_frames is what it reads.)
            stream.codec_context.max_b_frames = 0
        if codec == "mpeg4":
            stream.codec_context.bit_rate = 4_000_000
        if rotation:
            # Must be set before the first frame: the muxer copies side data into the header then.
            stream.set_display_rotation(rotation)
        # Packet durations are set from the frame timestamps: libx264 hands them out in decode order, which
        # B-frame reordering scrambles, and the muxer would otherwise guess the last frame's length. Either
        # way a VFR clip's container duration would disagree with spec.duration_s.
        ends = pts[1:] + [pts[-1] + last_step]
        durations = {start: end - start for start, end in zip(pts, ends)}
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_at(spec, index), format="rgb24").reformat(format="yuv420p")
            frame.pts = pts[index]
            frame.time_base = period
            container.mux(_with_durations(stream.encode(frame), durations))
        container.mux(_with_durations(stream.encode(None), durations))
    return spec


def _with_durations(packets: list[av.Packet], durations: dict[int, int]) -> list[av.Packet]:
    for packet in packets:
        if packet.pts is not None and packet.pts in durations:
            packet.duration = durations[packet.pts]
    return packets


def truncate(path: str | os.PathLike[str], keep_fraction: float = 0.5) -> Path:
    """Cut the file to ``keep_fraction`` of its bytes, in place, as an interrupted copy would leave it."""
    path = Path(path)
    if not 0.0 <= keep_fraction < 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1), got {keep_fraction}")
    original = path.stat().st_size
    keep = min(int(original * keep_fraction), max(original - 1, 0))
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    return path


def write_corrupt(path: str | os.PathLike[str], *, num_bytes: int = 4096, seed: int = 0) -> Path:
    """Random bytes under a video suffix: a file no demuxer should accept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(num_bytes))
    return path


def write_huge(path: str | os.PathLike[str], *, side: int = 8000, frames: int = 6) -> Path:
    """`frames` frames of side x side that are cheap to encode: flat grey with a red top-left quarter, written
    straight as YUV (no RGB frame of that size is ever made here)."""
    yuv = np.full((side * 3 // 2, side), 128, np.uint8)
    yuv[:side] = 120
    yuv[:side // 2, :side // 2] = 76                     # Y of red
    u, v = yuv[side:side * 5 // 4].reshape(side // 2, side // 2), yuv[side * 5 // 4:].reshape(side // 2, side // 2)
    u[:side // 4, :side // 4], v[:side // 4, :side // 4] = 85, 255
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4, options={"preset": "ultrafast"})
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        for pts in range(frames):
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return Path(path)


def write_empty(path: str | os.PathLike[str]) -> Path:
    """A zero-byte file under a video suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_not_a_video(path: str | os.PathLike[str]) -> Path:
    """Plain text under a video suffix, like a mislabelled download."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("This is not a video. It is a text file that happens to be named like one.\n", encoding="utf-8")
    return path


def _shape_size(size: tuple[int, int]) -> int:
    return max(2, (min(size) // 4) // 2 * 2)


def write_clean_examples(folder: str | os.PathLike[str], *, num_frames: int = 48,
                         size: tuple[int, int] = (96, 64)) -> list[VideoSpec]:
    """The decodable part of :func:`write_example_set`, returned as specs so tests can check pixels."""
    folder = Path(folder)
    s = _shape_size(size)
    w, h = size
    # Shapes sharing a clip move along parallel lanes (or one is static off the other's lane) so they never
    # overlap and every shape stays fully visible in every frame.
    plan: list[tuple[str, dict]] = [
        ("clip_h264.mp4", dict(shapes=(Shape("square", "red", "left_to_right", s),
                                       Shape("circle", "blue", "right_to_left", s)))),
        ("clip_h264.mkv", dict(shapes=(Shape("circle", "green", "top_to_bottom", s),
                                       Shape("square", "yellow", "static", s)))),
        ("clip_h264.mov", dict(shapes=(Shape("square", "white", "bottom_to_top", s),
                                       Shape("circle", "magenta", "top_to_bottom", s)))),
        ("clip_vp9.webm", dict(codec="libvpx-vp9", shapes=(Shape("square", "cyan", "right_to_left", s),
                                                           Shape("circle", "red", "left_to_right", s)))),
        ("clip_mpeg4.avi", dict(codec="mpeg4", shapes=(Shape("circle", "yellow", "left_to_right", s),))),
        # A phone held upright: portrait content stored landscape, turned back by the display matrix.
        ("phone_rotated.mp4", dict(rotation=90, shapes=(Shape("square", "red", "top_to_bottom", s),
                                                        Shape("circle", "green", "static", s)))),
        ("vfr.mp4", dict(variable_frame_rate=True, shapes=(Shape("square", "blue", "left_to_right", s),))),
    ]
    specs = []
    for seed, (name, kwargs) in enumerate(plan):
        specs.append(write_video(folder / name, num_frames=num_frames, size=(w, h), seed=seed, **kwargs))
    return specs


def write_bad_examples(folder: str | os.PathLike[str], *, num_frames: int = 48,
                       size: tuple[int, int] = (96, 64)) -> list[Path]:
    """Files a robust pipeline must survive: truncated, random bytes, empty, and text posing as video."""
    folder = Path(folder)
    # faststart puts the index first, so the truncated file still opens and claims all its frames but runs
    # out of data part-way: the nastier case, which a header-only probe does not catch.
    truncated = folder / "truncated.mp4"
    _write_faststart(truncated, num_frames=num_frames, size=size)
    truncate(truncated, 0.5)
    return [
        truncated,
        write_corrupt(folder / "corrupt.mkv", seed=1),
        write_empty(folder / "empty.mp4"),
        write_not_a_video(folder / "not_a_video.mp4"),
    ]


def _write_faststart(path: Path, *, num_frames: int, size: tuple[int, int]) -> VideoSpec:
    spec = write_video(path, num_frames=num_frames, size=size, seed=100,
                       shapes=(Shape("circle", "white", "left_to_right", _shape_size(size)),))
    # Remux rather than re-encode: moving the moov atom first needs a second pass over the finished file.
    tmp = path.with_name(path.name + ".faststart.mp4")
    with av.open(str(path)) as src, av.open(str(tmp), "w", format="mp4",
                                            options={"fflags": "+bitexact", "movflags": "+faststart"}) as dst:
        in_stream = src.streams.video[0]
        out_stream = dst.add_stream_from_template(in_stream)
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            dst.mux(packet)
    tmp.replace(path)
    return spec


def write_example_set(folder: str | os.PathLike[str], *, num_frames: int = 48,
                      size: tuple[int, int] = (96, 64)) -> list[Path]:
    """Write the demo/test set into ``folder`` and return every path written.

    Clean clips across mp4/mkv/mov (h264), webm (vp9), avi (mpeg4), a rotated phone-style mp4 and a VFR mp4;
    under ``bad/``: a truncated mp4, random bytes as .mkv, an empty .mp4 and a text file named .mp4.
    The same arguments always give the same bytes.
    """
    folder = Path(folder)
    clean = [spec.path for spec in write_clean_examples(folder, num_frames=num_frames, size=size)]
    return clean + write_bad_examples(folder / "bad", num_frames=num_frames, size=size)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes; used to check that writing is deterministic."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def nearest_color(rgb: Sequence[float]) -> str:
    """Name of the colour in ``COLORS`` closest to ``rgb`` (Euclidean in RGB)."""
    names = list(COLORS)
    table = np.array([COLORS[n] for n in names], dtype=np.float64)
    dist = ((table - np.asarray(rgb, dtype=np.float64).reshape(1, 3)) ** 2).sum(axis=1)
    return names[int(dist.argmin())]
