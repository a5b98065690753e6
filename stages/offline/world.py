"""A world where the truth is known: seeded clips of moving shapes, with 4-option questions about them.

Every figure a random model gives is chance, so nothing in it can show that a round helps. Here every fact of every
clip is known (the colour, kind, direction and lane of each shape), so a model can be taught the world imperfectly,
a judge can be scored against the truth, and a round's change can be measured on questions whose answers are exact.

Each clip is 8 frames at 56x56 px (8 fps), written with `videos.write_video`, and holds one or two 14-px shapes
(7 colours, square or circle). Two shapes in one clip always differ in colour, share an axis of motion and move
in opposite directions, each in its own lane: for horizontal motion shape 0 runs in the top lane and shape 1 in the
bottom one, for vertical motion shape 0 runs in the left lane and shape 1 in the right one; a single shape runs in
the middle. Two questions per clip, each with 4 options (chance is 25%):

- direction: "Which way does the red square move?" (left, right, up, down);
- colour: "What colour is the square that moves up?" (the true colour, the other shape's colour when there is
  one, then colours drawn at random).

Each option also comes as a whole reply ("The red square moves left.", "The square that moves up is blue."): a
model that knows the world answers so, `savi eval world` scores the replies whole, and CLIP can read them.

The splits and their default sizes: train 600, judge 1000, pool 1800, val 150 and test 300 clips (3,850 in all,
7,700 questions). The pool is three times the feasibility study's 600: a round's pairs come only from the pool
questions whose two sampled answers differ, and 600 clips gave about 290 pairs with one right and one wrong answer,
too few for a round to move the model significantly. Each clip is drawn from its own seed, so a larger split only
adds clips. Layout of a world folder:

    DIR/world.json          version, seed, sizes, frame count and size, and a fingerprint of the content
    DIR/questions.jsonl     one question per line, with its clip's facts
    DIR/videos/<clip>.mp4   the clips (clip ids such as test-0007)

The same seed and sizes give byte-identical files. Each clip draws from its own generator, seeded by the world's
seed, its split and its index, so a clip does not change when another split is resized. The folder is written
beside itself and renamed into place, so a world is whole or absent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.errors import SaviError
from stages.core.store import Progress, atomic_dir, ticker
from stages.offline.videos import COLORS, KINDS, Shape, write_video

VERSION = 2  # 2: every question carries a full reply per option
SPLITS: tuple[str, ...] = ("train", "judge", "pool", "val", "test")
SIZES: dict[str, int] = {"train": 600, "judge": 1000, "pool": 1800, "val": 150, "test": 300}
# A tenth of the default world, for a first look in seconds rather than half a minute.
SMALL_SIZES: dict[str, int] = {"train": 60, "judge": 100, "pool": 60, "val": 15, "test": 30}

FRAMES = 8
FPS = 8.0
SIZE = 56
SHAPE_SIZE = 14

WORLD_FILE = "world.json"
QUESTIONS_FILE = "questions.jsonl"
VIDEOS_DIR = "videos"

COLOURS: tuple[str, ...] = tuple(COLORS)
# The words the questions use for each of write_video's directions, and the way back.
MOVES: dict[str, str] = {"left_to_right": "right", "right_to_left": "left", "top_to_bottom": "down",
                         "bottom_to_top": "up"}
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
_MOTIONS = {word: motion for motion, word in MOVES.items()}
AXES: dict[str, tuple[str, str]] = {"horizontal": ("left", "right"), "vertical": ("up", "down")}
# write_video puts shape i of n in lane (i + 1) / (n + 1) across the axis of motion: these are those lanes' names.
LANES: dict[tuple[str, int], tuple[str, ...]] = {
    ("horizontal", 1): ("middle",), ("horizontal", 2): ("top", "bottom"),
    ("vertical", 1): ("middle",), ("vertical", 2): ("left", "right"),
}
OPTIONS = 4


@dataclass(frozen=True)
class WorldShape:
    """One shape of a clip, in the words the questions use."""

    shape: str      # square or circle
    colour: str     # a name in videos.COLORS
    direction: str  # left, right, up or down
    lane: str       # top/bottom (horizontal motion), left/right (vertical), middle (a single shape)

    def facts(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "direction": self.direction, "lane": self.lane}


@dataclass(frozen=True)
class Clip:
    split: str
    index: int      # within the split
    shapes: tuple[WorldShape, ...]
    video_seed: int  # seeds the clip's background texture, so every clip has bytes of its own

    @property
    def clip_id(self) -> str:
        return f"{self.split}-{self.index:04d}"

    @property
    def axis(self) -> str:
        return "horizontal" if self.shapes[0].direction in AXES["horizontal"] else "vertical"


def build_world(folder: Path, *, seed: int = 0, sizes: Mapping[str, int] = SIZES,
                progress: Progress | None = None) -> Path:
    """Write the world of `seed` into `folder` (new, empty, or an earlier world) and return the folder.

    `sizes` gives the clips per split; splits left out get none. An earlier world of the same seed and sizes that
    is intact is left as it is; any other earlier world is replaced whole. A folder holding anything savi did not
    write is refused. `progress(total)` may return a callback called once per clip written.
    """
    folder = Path(folder)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SaviError(f"a world's seed is a whole number from 0 up, got {seed!r}")
    sizes = _checked_sizes(sizes)
    header = {"version": VERSION, "seed": seed, "sizes": sizes, "frames": FRAMES, "fps": FPS,
              "size": [SIZE, SIZE], "shape_size": SHAPE_SIZE}
    earlier = _earlier_world(folder)
    if earlier is not None and {k: earlier.get(k) for k in header} == header \
            and earlier.get("fingerprint") == fingerprint(folder):
        return folder

    clips = plan_world(seed, sizes)
    tick = ticker(progress, len(clips))
    # absolute(): "." has no name to put a temporary sibling beside.
    with atomic_dir(folder.absolute()) as tmp:
        for clip in clips:
            write_clip(clip, tmp / VIDEOS_DIR / f"{clip.clip_id}.mp4")
            tick()
        with open(tmp / QUESTIONS_FILE, "w", encoding="utf-8") as fh:
            for clip in clips:
                for record in questions(clip, seed):
                    fh.write(json.dumps(record, sort_keys=True) + "\n")
        # Written last: a world.json whose fingerprint matches is the proof that the world is whole.
        world = {**header, "clips": len(clips), "questions": 2 * len(clips), "fingerprint": fingerprint(tmp)}
        (tmp / WORLD_FILE).write_text(json.dumps(world, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder


def plan_world(seed: int, sizes: Mapping[str, int]) -> list[Clip]:
    """Every clip of the world, split by split, each drawn from its own generator."""
    clips = []
    for split_number, split in enumerate(SPLITS):
        for index in range(sizes.get(split, 0)):
            clips.append(_draw_clip(np.random.default_rng([seed, split_number, index]), split, index))
    return clips


def _draw_clip(rng: np.random.Generator, split: str, index: int) -> Clip:
    count = int(rng.integers(1, 3))
    axis = ("horizontal", "vertical")[int(rng.integers(2))]
    first = AXES[axis][int(rng.integers(2))]
    # Opposite directions on one axis: the two shapes cross in their own lanes and never overlap.
    directions = [first] + [d for d in AXES[axis] if d != first][:count - 1]
    # Distinct colours, so "the red square" names one shape even when both are squares.
    colours = [COLOURS[i] for i in rng.choice(len(COLOURS), size=count, replace=False)]
    kinds = [KINDS[int(k)] for k in rng.integers(len(KINDS), size=count)]
    lanes = LANES[(axis, count)]
    shapes = tuple(WorldShape(kinds[i], colours[i], directions[i], lanes[i]) for i in range(count))
    return Clip(split, index, shapes, int(rng.integers(2**31)))


def write_clip(clip: Clip, path: Path) -> None:
    shapes = [Shape(s.shape, s.colour, _MOTIONS[s.direction], SHAPE_SIZE) for s in clip.shapes]
    write_video(path, num_frames=FRAMES, fps=FPS, size=(SIZE, SIZE), shapes=shapes, seed=clip.video_seed)


def questions(clip: Clip, seed: int) -> list[dict[str, Any]]:
    """The clip's direction and colour questions, each with its facts; the target shapes and the option order
    come from a generator of their own, so they are as fixed by the seed as the clip is."""
    rng = np.random.default_rng([seed, SPLITS.index(clip.split), clip.index, 1])

    target = int(rng.integers(len(clip.shapes)))
    shape = clip.shapes[target]
    options = [DIRECTIONS[i] for i in rng.permutation(len(DIRECTIONS))]
    direction = _question(clip, "direction", target, f"Which way does the {shape.colour} {shape.shape} move?",
                          options, shape.direction,
                          [f"The {shape.colour} {shape.shape} moves {option}." for option in options])

    target = int(rng.integers(len(clip.shapes)))
    shape = clip.shapes[target]
    # The other shape's colour is the hardest wrong option: a model that sees colours but not motion picks it.
    colours = [shape.colour] + [s.colour for s in clip.shapes if s is not shape]
    rest = [c for c in COLOURS if c not in colours]
    colours += [rest[i] for i in rng.permutation(len(rest))[:OPTIONS - len(colours)]]
    options = [colours[i] for i in rng.permutation(OPTIONS)]
    colour = _question(clip, "colour", target, f"What colour is the {shape.shape} that moves {shape.direction}?",
                       options, shape.colour,
                       [f"The {shape.shape} that moves {shape.direction} is {option}." for option in options])
    return [direction, colour]


def _question(clip: Clip, kind: str, target: int, text: str, options: list[str], answer: str,
              replies: list[str]) -> dict[str, Any]:
    """One question record. `replies` are the options as whole answers, the way a model that knows the world
    answers: what `savi eval world` scores, what a round's sampled answers look like, and what CLIP reads."""
    return {"question_id": f"{clip.clip_id}-{kind}", "clip_id": clip.clip_id, "split": clip.split, "kind": kind,
            "question": text, "options": options, "replies": replies, "answer": options.index(answer),
            "target": target, "axis": clip.axis, "shapes": [s.facts() for s in clip.shapes]}


def fingerprint(folder: Path) -> str:
    """sha256 over the questions file and every clip, with their names: equal fingerprints, equal worlds."""
    digest = hashlib.sha256()
    files = [folder / QUESTIONS_FILE] + sorted((folder / VIDEOS_DIR).glob("*.mp4"))
    for path in files:
        if path.is_file():
            digest.update(f"{path.relative_to(folder)} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def read_world(folder: Path) -> dict[str, Any]:
    """world.json of the intact world in `folder`, for what is built from a world (a model, a CLIP); anything
    else is a one-line error saying what to do. The fingerprint covers every clip and question, so past this
    check the world's files are as savi wrote them."""
    folder = Path(folder)
    try:
        world = json.loads((folder / WORLD_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        world = None
    if not isinstance(world, dict) or "fingerprint" not in world or "version" not in world:
        raise SaviError(f"{folder} is not a savi world (no readable {WORLD_FILE}); build one with "
                        f"`savi world {folder}`")
    if world["version"] != VERSION:
        raise SaviError(f"the world in {folder} was written by another savi (version {world['version']}, this one "
                        f"reads {VERSION}); build it again with `savi world {folder}`")
    if world["fingerprint"] != fingerprint(folder):
        raise SaviError(f"the world in {folder} is damaged: it does not match its {WORLD_FILE} (files changed or "
                        f"missing); build it again with `savi world {folder}`")
    return world


def _checked_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    unknown = [s for s in sizes if s not in SPLITS]
    if unknown:
        raise SaviError(f"unknown world split {unknown[0]!r}; the splits are {', '.join(SPLITS)}")
    checked = {split: sizes.get(split, 0) for split in SPLITS}
    bad = [f"{split}={n}" for split, n in checked.items() if not isinstance(n, int) or not 0 <= n <= 9999]
    if bad:
        raise SaviError(f"world split sizes must be whole numbers from 0 to 9999, got {', '.join(bad)}")
    if not sum(checked.values()):
        raise SaviError("a world needs at least one clip: give some split a size above 0")
    return checked


def _earlier_world(folder: Path) -> dict[str, Any] | None:
    """world.json of the world already in `folder`; None when the folder is absent or empty. Anything else in the
    way is refused, because replacing a world deletes the folder and savi never deletes what it did not write."""
    if folder.exists() and not folder.is_dir():
        raise SaviError(f"{folder} is a file; a world goes into a folder: give a folder path")
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    foreign = SaviError(f"{folder} holds files savi did not write, and savi never deletes them; give a new or "
                        "empty folder for the world")
    if any(p.name not in (WORLD_FILE, QUESTIONS_FILE, VIDEOS_DIR) for p in folder.iterdir()):
        raise foreign
    videos = folder / VIDEOS_DIR
    if videos.exists() and (not videos.is_dir() or any(p.suffix != ".mp4" or not p.is_file()
                                                       for p in videos.iterdir())):
        raise foreign
    try:
        world = json.loads((folder / WORLD_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise foreign from None
    if not isinstance(world, dict) or "version" not in world or "fingerprint" not in world:
        raise foreign
    return world
