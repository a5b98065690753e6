"""The synthetic clips must be what they claim: right frames, sizes, colours, directions, rotation and timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from stages.offline.videos import (
    COLORS,
    Shape,
    VideoSpec,
    frame_at,
    nearest_color,
    sha256_file,
    shape_center,
    truncate,
    upright_frame_at,
    write_clean_examples,
    write_corrupt,
    write_empty,
    write_example_set,
    write_video,
)

CLEAN_NAMES = [
    "clip_h264.mp4",
    "clip_h264.mkv",
    "clip_h264.mov",
    "clip_vp9.webm",
    "clip_mpeg4.avi",
    "phone_rotated.mp4",
    "vfr.mp4",
]
BAD_NAMES = ["truncated.mp4", "corrupt.mkv", "empty.mp4", "not_a_video.mp4"]
DECODER_NAMES = {"libx264": "h264", "libvpx-vp9": "vp9", "libvpx": "vp8", "mpeg4": "mpeg4"}


def decode_rgb(path: Path) -> tuple[list[np.ndarray], list[int], list[float], av.video.stream.VideoStream]:
    """All frames as stored RGB arrays, with pts, times and the stream (metadata read while open)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, pts, times = [], [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            pts.append(frame.pts)
            times.append(float(frame.time))
    return frames, pts, times, stream


def first_frame_rotation(path: Path) -> int:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).rotation


def color_at(frame: np.ndarray, x: float, y: float) -> str:
    # A 3x3 median keeps a stray chroma-subsampled pixel from deciding the answer.
    h, w = frame.shape[:2]
    c, r = int(x), int(y)
    patch = frame[max(r - 1, 0) : min(r + 2, h), max(c - 1, 0) : min(c + 2, w)].reshape(-1, 3)
    return nearest_color(np.median(patch, axis=0))


def color_centroid(frame: np.ndarray, color: str, tolerance: float = 80.0) -> tuple[float, float]:
    """Centre of the pixels close to a named colour, found from pixels alone (not from shape_center)."""
    dist = np.linalg.norm(frame.astype(np.float64) - np.array(COLORS[color], dtype=np.float64), axis=2)
    rows, cols = np.nonzero(dist < tolerance)
    assert rows.size, f"no {color} pixels in frame"
    return float(cols.mean()) + 0.5, float(rows.mean()) + 0.5


def assert_moves(track: list[tuple[float, float]], direction: str, upright_size: tuple[int, int]) -> None:
    xs, ys = np.array([p[0] for p in track]), np.array([p[1] for p in track])
    axis, sign = {
        "left_to_right": (xs, 1),
        "right_to_left": (xs, -1),
        "top_to_bottom": (ys, 1),
        "bottom_to_top": (ys, -1),
        "static": (xs, 0),
    }[direction]
    if sign == 0:
        assert np.ptp(xs) < 1.0 and np.ptp(ys) < 1.0
        return
    other = ys if axis is xs else xs
    steps = np.diff(axis) * sign
    # Decoded centroids wobble a little with compression; the motion must still never go backwards by more.
    assert steps.min() > -1.0, f"{direction}: moved backwards by {-steps.min():.2f}px"
    span = upright_size[0] if axis is xs else upright_size[1]
    assert (axis[-1] - axis[0]) * sign > span / 2, f"{direction}: travelled only {axis[-1] - axis[0]:.1f}px"
    assert np.ptp(other) < 2.0


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("examples")
    return folder, write_example_set(folder)


@pytest.fixture(scope="module")
def clean_specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, VideoSpec]:
    specs = write_clean_examples(tmp_path_factory.mktemp("clean"))
    return {spec.path.name: spec for spec in specs}


# --- pure geometry, no encoding -------------------------------------------------------------------------------


def test_shape_rejects_unknown_values() -> None:
    with pytest.raises(ValueError):
        Shape("triangle", "red", "static")
    with pytest.raises(ValueError):
        Shape("square", "mauve", "static")
    with pytest.raises(ValueError):
        Shape("square", "red", "diagonal")


def test_colors_are_well_separated() -> None:
    table = np.array(list(COLORS.values()), dtype=np.float64)
    dist = np.linalg.norm(table[:, None] - table[None, :], axis=2)
    np.fill_diagonal(dist, np.inf)
    assert dist.min() >= 250
    assert all(nearest_color(rgb) == name for name, rgb in COLORS.items())


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("directions", [("left_to_right", "right_to_left"), ("top_to_bottom", "bottom_to_top")])
def test_frame_at_matches_shape_center_in_every_rotation(tmp_path: Path, rotation: int,
                                                         directions: tuple[str, str]) -> None:
    # Parallel lanes, so neither shape ever hides part of the other.
    shapes = (Shape("square", "red", directions[0], 12), Shape("circle", "cyan", directions[1], 10))
    spec = write_video(tmp_path / "r.mp4", num_frames=5, size=(64, 48), shapes=shapes, rotation=rotation)
    upright_w, upright_h = spec.upright_size
    tracks: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    for index in range(spec.num_frames):
        stored = frame_at(spec, index)
        upright = upright_frame_at(spec, index)
        assert stored.shape == (spec.height, spec.width, 3) and stored.dtype == np.uint8
        assert upright.shape == (upright_h, upright_w, 3)
        np.testing.assert_array_equal(np.rot90(stored, k=rotation // 90), upright)
        red = np.all(stored == COLORS["red"], axis=2)
        assert red.sum() == 12 * 12  # a square covers exactly size x size pixels wherever its centre falls
        for i, shape in enumerate(shapes):
            cx, cy = shape_center(spec, i, index)
            assert color_centroid(stored, shape.color, tolerance=1.0) == pytest.approx((cx, cy), abs=0.5)
            tracks[i].append(shape_center(spec, i, index, upright=True))
    for i, shape in enumerate(shapes):
        assert_moves(tracks[i], shape.direction, spec.upright_size)


def test_shapes_stay_inside_the_frame_and_move_monotonically(tmp_path: Path) -> None:
    shapes = tuple(Shape("square", c, d) for c, d in zip(COLORS, ["left_to_right", "right_to_left", "static"]))
    spec = write_video(tmp_path / "m.mkv", num_frames=9, shapes=shapes)
    for i, shape in enumerate(shapes):
        track = [shape_center(spec, i, f) for f in range(spec.num_frames)]
        half = shape.size / 2
        assert all(half <= x <= spec.width - half and half <= y <= spec.height - half for x, y in track)
        assert_moves(track, shape.direction, spec.upright_size)


def test_seed_changes_background_but_not_shapes(tmp_path: Path) -> None:
    a = write_video(tmp_path / "a.mp4", num_frames=3, seed=0)
    b = write_video(tmp_path / "b.mp4", num_frames=3, seed=1)
    assert not np.array_equal(frame_at(a, 0), frame_at(b, 0))
    assert shape_center(a, 0, 2) == shape_center(b, 0, 2)
    assert sha256_file(a.path) != sha256_file(b.path)


def test_write_video_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_video(tmp_path / "odd.mp4", size=(95, 64))
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.flv")
    with pytest.raises(ValueError):
        write_video(tmp_path / "r.mp4", rotation=45)
    with pytest.raises(ValueError):
        write_video(tmp_path / "r.avi", rotation=90)
    with pytest.raises(ValueError):
        write_video(tmp_path / "big.mp4", size=(32, 16), shapes=(Shape("square", "red", "static", 20),))


# --- the example set ------------------------------------------------------------------------------------------


def test_example_set_has_the_expected_mix(example_dir: tuple[Path, list[Path]]) -> None:
    folder, paths = example_dir
    assert [p.name for p in paths] == CLEAN_NAMES + BAD_NAMES
    assert all(p.parent == folder for p in paths[: len(CLEAN_NAMES)])
    assert all(p.parent == folder / "bad" for p in paths[len(CLEAN_NAMES) :])
    assert all(p.is_file() for p in paths)
    assert {p.suffix for p in paths} == {".mp4", ".mkv", ".mov", ".webm", ".avi"}


def test_example_set_is_deterministic(example_dir: tuple[Path, list[Path]], tmp_path: Path,
                                      clean_specs: dict[str, VideoSpec]) -> None:
    _, first = example_dir
    second = write_example_set(tmp_path)
    assert [sha256_file(p) for p in first] == [sha256_file(p) for p in second]
    # The specs the pixel tests use describe the very same files.
    for path in first[: len(CLEAN_NAMES)]:
        assert sha256_file(clean_specs[path.name].path) == sha256_file(path)


@pytest.mark.parametrize("name", CLEAN_NAMES)
def test_clean_clip_decodes_to_the_frames_written(clean_specs: dict[str, VideoSpec], name: str) -> None:
    spec = clean_specs[name]
    frames, _, times, stream = decode_rgb(spec.path)
    assert stream.codec_context.name == DECODER_NAMES[spec.codec]
    assert len(frames) == spec.num_frames
    assert all(f.shape == (spec.height, spec.width, 3) for f in frames)
    errors = [np.abs(f.astype(np.int16) - frame_at(spec, i)).mean() for i, f in enumerate(frames)]
    assert max(errors) < 8, f"{name}: mean abs error up to {max(errors):.2f}"
    # mkv/webm store milliseconds, so 1/12 s steps come back rounded.
    np.testing.assert_allclose(times, spec.frame_times_s, atol=1e-3)


@pytest.mark.parametrize("name", CLEAN_NAMES)
def test_shapes_have_their_colour_and_direction_in_decoded_pixels(clean_specs: dict[str, VideoSpec],
                                                                  name: str) -> None:
    spec = clean_specs[name]
    frames, _, _, _ = decode_rgb(spec.path)
    k = spec.rotation // 90
    for i, shape in enumerate(spec.shapes):
        for index, frame in enumerate(frames):
            x, y = shape_center(spec, i, index)
            assert color_at(frame, x, y) == shape.color, f"{name}: shape {i} frame {index}"
        # Directions are judged on the decoded pixels as a viewer would see them.
        track = [color_centroid(np.rot90(frame, k=k), shape.color) for frame in frames]
        assert_moves(track, shape.direction, spec.upright_size)


def test_rotated_phone_clip(clean_specs: dict[str, VideoSpec]) -> None:
    import decord

    spec = clean_specs["phone_rotated.mp4"]
    assert spec.rotation == 90 and spec.width > spec.height
    assert first_frame_rotation(spec.path) == 90
    upright = upright_frame_at(spec, 0)
    assert upright.shape == (spec.width, spec.height, 3)  # portrait
    assert spec.shapes[0].direction == "top_to_bottom"
    # Stored frames are landscape and the square crosses them right to left; turned upright it falls.
    stored_track = [shape_center(spec, 0, f) for f in range(spec.num_frames)]
    assert stored_track[-1][0] < stored_track[0][0]
    # decord applies the mp4 display matrix, so it must return the upright picture.
    reader = decord.VideoReader(str(spec.path))
    for index in (0, spec.num_frames // 2, spec.num_frames - 1):
        got = reader[index].asnumpy()
        assert got.shape == upright.shape
        assert np.abs(got.astype(np.int16) - upright_frame_at(spec, index)).mean() < 8


@pytest.mark.parametrize("rotation", [180, 270])
def test_other_rotations_read_back(tmp_path: Path, rotation: int) -> None:
    spec = write_video(tmp_path / "r.mov", num_frames=2, rotation=rotation)
    # PyAV reports rotations as signed angles in (-180, 180].
    assert first_frame_rotation(spec.path) % 360 == rotation


def test_vfr_clip_has_irregular_timestamps(clean_specs: dict[str, VideoSpec]) -> None:
    spec = clean_specs["vfr.mp4"]
    assert spec.variable_frame_rate
    _, pts, times, stream = decode_rgb(spec.path)
    deltas = set(np.diff(pts).tolist())
    assert len(deltas) > 1, f"pts deltas are constant: {deltas}"
    assert max(deltas) == 3 * min(deltas)
    np.testing.assert_allclose(times, spec.frame_times_s, atol=1e-6)
    with av.open(str(spec.path)) as container:
        assert container.duration / 1e6 == pytest.approx(spec.duration_s, abs=1e-3)
    assert spec.duration_s > spec.num_frames / spec.fps  # gaps make it longer than a CFR clip


@pytest.mark.parametrize("name", ["clip_h264.mp4", "clip_h264.mov", "clip_mpeg4.avi"])
def test_cfr_clips_have_constant_timestamps(clean_specs: dict[str, VideoSpec], name: str) -> None:
    _, pts, _, _ = decode_rgb(clean_specs[name].path)
    assert len(set(np.diff(pts).tolist())) == 1


@pytest.mark.parametrize("name", [n for n in CLEAN_NAMES if n != "vfr.mp4"])
def test_decord_reads_clean_clips(clean_specs: dict[str, VideoSpec], name: str) -> None:
    import decord

    spec = clean_specs[name]
    reader = decord.VideoReader(str(spec.path))
    assert len(reader) == spec.num_frames
    w, h = spec.upright_size
    assert reader[0].shape == (h, w, 3)
    assert reader.get_avg_fps() == pytest.approx(spec.fps, rel=0.02)


def test_vp8_webm_is_writable(tmp_path: Path) -> None:
    spec = write_video(tmp_path / "v.webm", codec="libvpx", num_frames=6)
    frames, _, _, stream = decode_rgb(spec.path)
    assert stream.codec_context.name == "vp8" and len(frames) == 6
    assert max(np.abs(f.astype(np.int16) - frame_at(spec, i)).mean() for i, f in enumerate(frames)) < 8


# --- broken files ---------------------------------------------------------------------------------------------


def test_bad_files(example_dir: tuple[Path, list[Path]]) -> None:
    folder, _ = example_dir
    bad = folder / "bad"
    assert (bad / "empty.mp4").stat().st_size == 0
    assert (bad / "corrupt.mkv").stat().st_size == 4096
    assert (bad / "not_a_video.mp4").read_text(encoding="utf-8").startswith("This is not a video")
    for name in ("corrupt.mkv", "empty.mp4", "not_a_video.mp4"):
        with pytest.raises(av.FFmpegError):
            av.open(str(bad / name)).close()


def test_truncated_example_opens_but_runs_out_of_frames(example_dir: tuple[Path, list[Path]]) -> None:
    folder, _ = example_dir
    path = folder / "bad" / "truncated.mp4"
    # The index is at the front (faststart), so the header survives and promises every frame.
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        claimed, decoded = stream.frames, 0
        with pytest.raises(av.FFmpegError):
            for _ in container.decode(stream):
                decoded += 1
    assert claimed == 48
    assert 0 < decoded < claimed


def test_truncate_write_corrupt_write_empty(tmp_path: Path) -> None:
    spec = write_video(tmp_path / "t.mkv", num_frames=12)
    original = spec.path.stat().st_size
    assert truncate(spec.path, 0.25) == spec.path
    assert spec.path.stat().st_size == int(original * 0.25) < original
    assert write_corrupt(tmp_path / "c.mp4", num_bytes=100).stat().st_size == 100
    assert (tmp_path / "c.mp4").read_bytes() == write_corrupt(tmp_path / "d.mp4", num_bytes=100).read_bytes()
    assert write_empty(tmp_path / "e.webm").stat().st_size == 0
    with pytest.raises(ValueError):
        truncate(spec.path, 1.0)


def test_importing_does_not_pull_in_torch() -> None:
    code = "import sys, stages.offline.videos; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
