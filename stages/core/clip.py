"""CLIP grounding scores: how well a text is supported by a video's sampled frames, with frame embeddings cached.

The CLIP filter swaps a preference pair when the rejected response is better grounded in the video than the
chosen one. This module gives that filter (and evaluation) one number per (video, text).

Scoring formula
---------------
Let ``f_1 .. f_T`` be the CLIP image embeddings of the T sampled frames and ``t_1 .. t_S`` the CLIP text embeddings
of the S segments of a text (see "Long texts" below), all L2-normalised. The per-frame cosine is
``c[i, j] = f_i · t_j`` (a dot product of unit vectors, in [-1, 1]). Then

    per segment j:   v_j = mean_i c[i, j]                       pooling = "mean" (default)
                     v_j = max_i  c[i, j]                       pooling = "max"
                     v_j = mean of the k largest c[i, j]        pooling = "topk", k = min(topk, T)
    whole text:      score = mean_j v_j                         text_pooling = "mean" (default)
                     score = max_j  v_j                         text_pooling = "max"

so the score is always in [-1, 1]. No logit scale and no softmax: the raw cosine keeps scores comparable across
texts of one video, which is all the swap rule needs.

With ``frames = "grid"`` (see "Frames in a grid" below) the video is one image instead of T frames: T = 1, so
``v_j`` is that image's cosine with segment j whatever the frame pooling, and the text pooling is unchanged.

Defaults, and why:

* Frames pooled by **mean**. One odd frame (a scene cut, motion blur, a black frame at the start) moves the mean by
  only 1/T, so a swap is not decided by one frame. ``max`` rewards a claim seen in any single frame, which sounds
  right for short events but lets one spuriously similar frame flip a pair; ``topk`` is the middle ground for long
  videos where an event fills a few frames. The mean of per-frame cosines also equals the cosine with the
  renormalised mean frame embedding (the "video embedding" of the reference recipe) times ``|mean_i f_i|``, a factor
  that is the same for every text of a video: rankings and swap decisions within a video are identical.
* Segments pooled by **mean**. A response is judged on all of its claims, so one hallucinated sentence lowers the
  score. With ``max``, a response with one well grounded sentence and three invented ones would score as well as a
  fully grounded one, which is exactly what the filter is meant to catch.

Frames in a grid
----------------
A pooled score over frames embedded one by one cannot see time: the mean (and the max, and the top k) of a set of
cosines is the same whatever order the frames come in, so "moves left" and "moves right" score alike whenever
the frames show the same places (a study on moving shapes found such a judge right on 55% of the pairs that
disagree on direction, against 93% for one that sees the frames tiled in time order). With ``frames = "grid"``
each video becomes one image, embedded once:

* ``GRID_SIDE`` x ``GRID_SIDE`` tiles (2 x 2, four frames), filled row-major in time order: the first frame top
  left, the second top right, the third bottom left, the last bottom right. Two per side because CLIP reads its
  input at 224 px (ViT-B-32: 7 x 7 patches of 32 px), so a 2 x 2 tile keeps about 3 x 3 patches of each frame;
  a 3 x 3 grid would leave about 2 x 2, too few to see a shape.
* The frames are picked evenly spaced from first to last, ``round(linspace(0, T - 1, 4))``: of 8 frames 0, 2, 5
  and 7, of 32 frames 0, 10, 21 and 31, so the grid spans the whole clip. A video with fewer than four frames
  repeats some (of 2: 0, 0, 1, 1), which keeps the order and leaves no blank tile.
* Each tile is the central square of its frame, the part CLIP's preprocessing (resize the shorter side, crop the
  centre) keeps of a frame shown alone; tiling whole wide frames would make the grid as wide as one frame and
  the crop would then cut away the outer halves of the left and right tiles.

Long texts
----------
CLIP's text tower reads ``context_length`` tokens (77 for ViT-B-32) including start and end tokens; open_clip
silently cuts anything longer. So a text that does not fit is split into sentences (after ``.``, ``!``, ``?`` and
at line breaks), and a sentence that still does not fit is split into consecutive word windows that do. Every word
of the text lands in exactly one segment. A text that fits is one segment (S = 1), even if it has several
sentences. (A single "word" longer than the whole context, such as a 300-character URL, is the one thing still cut.)

Frame-embedding cache
---------------------
Frames never change within a run, and the filter of every round and every evaluation scores against the same
frames, so each video's frames are embedded once per CLIP model and kept in the run:

    <run>/clip/<key>/<video_id>.npy             float32 (T, D), L2-normalised rows, in frame order
    <run>/clip/<key>/grid-2x2/<video_id>.npy    float32 (1, D), the grid image's embedding (frames = "grid")
    <run>/clip/<key>/info.json                  what produced them (model, weights, preprocessing)

``key`` (``ClipScorer.key``) is a readable label plus a fingerprint of the architecture and weights: the model
name and pretrained tag, or the sha256 of a weights file, or the config and weights files of a ``local-dir:``
folder, plus the image preprocessing. Different models or weights never share a folder, and the two views of a
video (its frames, its grid) never share a file. Files are written to a temporary name and renamed, so a killed
process leaves either a whole file or none. A cache file that cannot be read, has the wrong shape, or is older
than the video's frames (the run was re-sampled with ``--force``) is recomputed and replaced.

Which model and weights a `ClipConfig` names, and how they are found offline: `stages/core/clip_weights.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import clip_weights
from stages.core.errors import SaviError
from stages.core.model import resolve_device
from stages.core.records import Sample
from stages.core.settings import ClipConfig
from stages.core.store import Run, atomic_path, fingerprint, slug, write_json

CACHE_FORMAT = 1  # bump when the cached embeddings change meaning; it is part of the key
GRID_SIDE = 2  # tiles per side of a `frames = "grid"` image: see "Frames in a grid" in the module docstring

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n+\s*")


class ClipScorer:
    """A loaded CLIP model that embeds frames (cached per run) and texts, and scores texts against videos."""

    def __init__(self, cfg: ClipConfig, model: Any, preprocess: Any, tokenizer: Any, device: Any, key: str,
                 info: dict[str, Any]):
        self.cfg = cfg
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self._key = key
        self.info = info
        self.dim = int(info["embed_dim"])
        self.context_length = int(info["context_length"])

    # -- loading ------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, cfg: ClipConfig) -> ClipScorer:
        """Resolve the model and weights (offline first), create the model in eval mode on the device."""
        import torch

        device = torch.device(resolve_device(cfg.device))
        source = clip_weights.resolve(cfg.model, cfg.weights)
        model, preprocess = clip_weights.create(source)
        model = model.to(device).eval()
        tokenizer = clip_weights.tokenizer(source.model_name, fingerprint(source.identity))
        context_length = int(getattr(model, "context_length", None) or getattr(tokenizer, "context_length", 77))
        with torch.inference_mode():
            probe = model.encode_text(tokenizer([""], context_length=context_length).to(device))
        preprocess_cfg = {k: list(v) if isinstance(v, tuple) else v
                          for k, v in dict(getattr(model.visual, "preprocess_cfg", {})).items()}
        identity = {**source.identity, "preprocess": preprocess_cfg, "format": CACHE_FORMAT}
        key = f"{slug(source.label) or 'clip'}-{fingerprint(identity)[:12]}"
        info = {"model": cfg.model, "weights": cfg.weights, "identity": identity, "embed_dim": int(probe.shape[-1]),
                "context_length": context_length}
        return cls(cfg, model, preprocess, tokenizer, device, key, info)

    @property
    def key(self) -> str:
        """Identifies the model and its weights; names the run's cache folder `clip/<key>/`."""
        return self._key

    @property
    def fingerprint(self) -> str:
        """The key without its readable label: the same CLIP gives the same fingerprint wherever its files are."""
        return fingerprint(self.info["identity"])

    # -- frames -------------------------------------------------------------------------------------------------

    def cache_dir(self, run: Run) -> Path:
        return run.path / "clip" / self.key

    def cache_path(self, run: Run, video_id: str) -> Path:
        return self.cache_dir(run) / f"{video_id}.npy"

    def grid_cache_path(self, run: Run, video_id: str) -> Path:
        return self.cache_dir(run) / f"grid-{GRID_SIDE}x{GRID_SIDE}" / f"{video_id}.npy"

    def video_embeddings(self, run: Run, sample: Sample) -> np.ndarray:
        """What texts are scored against, as the config's `frames` says: (T, D) embeddings of the frames one by
        one, or the (1, D) embedding of the frames tiled in a grid."""
        if self.cfg.frames == "grid":
            return self.grid_embedding(run, sample)
        return self.frame_embeddings(run, sample)

    def frame_embeddings(self, run: Run, sample: Sample) -> np.ndarray:
        """(T, D) L2-normalised float32 embeddings of the video's sampled frames, from the run's cache if valid."""
        from stages.core.video import load_frames

        folder, frame_files = self._frame_files(run, sample)
        return self._cached(run, self.cache_path(run, sample.video_id), frame_files, len(frame_files),
                            lambda: self.encode_frames(load_frames(folder)))

    def grid_embedding(self, run: Run, sample: Sample) -> np.ndarray:
        """(1, D) L2-normalised float32 embedding of the video's frames tiled in time order (`tile_grid`), from the
        run's cache if valid."""
        from stages.core.video import load_frames

        folder, frame_files = self._frame_files(run, sample)
        return self._cached(run, self.grid_cache_path(run, sample.video_id), frame_files, 1,
                            lambda: self.encode_frames(tile_grid(load_frames(folder))[None]))

    def _frame_files(self, run: Run, sample: Sample) -> tuple[Path, list[Path]]:
        """The video's frames folder and its frame files, or a one-line error saying why there are none."""
        if sample.status != "ok" or not sample.frames_dir:
            raise SaviError(f"video {sample.video_id} has no sampled frames ({sample.error or sample.status}); "
                            "only videos with status ok can be scored")
        folder = run.path / sample.frames_dir
        frame_files = sorted(folder.glob("*.jpg"))
        if not frame_files:
            raise SaviError(f"the frames of video {sample.video_id} are missing from {folder}; "
                            "run `savi sample` again for this run to restore them")
        return folder, frame_files

    def _cached(self, run: Run, path: Path, frame_files: list[Path], rows: int,
                embed: Callable[[], np.ndarray]) -> np.ndarray:
        """The (rows, D) embeddings cached at `path` if valid, else `embed()`, written there first."""
        cached = self._read_cache(path, frame_files, rows)
        if cached is not None:
            return cached
        embeddings = embed()
        if not (self.cache_dir(run) / "info.json").is_file():
            write_json(self.cache_dir(run) / "info.json", self.info)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, embeddings, allow_pickle=False)
        return embeddings

    def _read_cache(self, path: Path, frame_files: list[Path], rows: int) -> np.ndarray | None:
        """The cached embeddings, or None if absent, unreadable, the wrong shape, or older than the frames."""
        try:
            if path.stat().st_mtime_ns < max(f.stat().st_mtime_ns for f in frame_files):
                return None
            with open(path, "rb") as f:
                array = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if array.dtype != np.float32 or array.shape != (rows, self.dim) or not np.isfinite(array).all():
            return None
        return array

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """Embed (T, H, W, 3) uint8 frames: (T, D) L2-normalised float32. No cache: see `frame_embeddings`."""
        import torch
        from PIL import Image

        out = []
        with torch.inference_mode():
            for start in range(0, len(frames), self.cfg.batch_size):
                batch = torch.stack([self.preprocess(Image.fromarray(np.ascontiguousarray(frame)))
                                     for frame in frames[start:start + self.cfg.batch_size]])
                features = self.model.encode_image(batch.to(self.device))
                out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    # -- texts --------------------------------------------------------------------------------------------------

    def text_embeddings(self, texts: list[str]) -> list[np.ndarray]:
        """Per text, (S, D) L2-normalised float32 embeddings of its segments (S = 1 for a text that fits)."""
        import torch

        if isinstance(texts, str):
            raise TypeError("text_embeddings takes a list of texts, not one string")
        segmented = [self.segments(text) for text in texts]
        flat = [segment for segments in segmented for segment in segments]
        encoded = []
        with torch.inference_mode():
            for start in range(0, len(flat), self.cfg.batch_size):
                tokens = self.tokenizer(flat[start:start + self.cfg.batch_size], context_length=self.context_length)
                features = self.model.encode_text(tokens.to(self.device))
                encoded.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        matrix = np.concatenate(encoded).astype(np.float32, copy=False) if encoded else np.zeros((0, self.dim))
        result, offset = [], 0
        for segments in segmented:
            result.append(matrix[offset:offset + len(segments)])
            offset += len(segments)
        return result

    def segments(self, text: str) -> list[str]:
        """The text as it is embedded: whole if it fits the context, else sentences, else word windows."""
        if self.fits(text):
            return [text]
        out: list[str] = []
        for sentence in split_sentences(text):
            out.extend([sentence] if self.fits(sentence) else self._word_windows(sentence))
        return out or [text]

    def token_count(self, text: str) -> int:
        """Tokens the text takes in the context, start and end tokens included."""
        tok = self.tokenizer
        if hasattr(tok, "encode") and hasattr(tok, "sot_token_id"):  # open_clip's SimpleTokenizer
            return len(tok.encode(text)) + 2
        if hasattr(tok, "tokenizer"):  # open_clip's HFTokenizer
            return len(tok.tokenizer(text)["input_ids"])
        return 2 + 2 * len(text.split())  # unknown tokenizer: a conservative guess

    def fits(self, text: str) -> bool:
        return self.token_count(text) <= self.context_length

    def _word_windows(self, sentence: str) -> list[str]:
        """Consecutive runs of words, each as long as fits the context (a word too long alone is its own window)."""
        budget = self.context_length - 2
        windows: list[list[str]] = [[]]
        used = 0
        for word in sentence.split():
            cost = max(1, self.token_count(word) - 2)
            if windows[-1] and used + cost > budget:
                windows.append([])
                used = 0
            windows[-1].append(word)
            used += cost
        out = []
        for words in windows:
            # Token counts of words add up for CLIP's BPE; check anyway and split further if one does not fit.
            while len(words) > 1 and not self.fits(" ".join(words)):
                cut = len(words) // 2
                out.append(" ".join(words[:cut]))
                words = words[cut:]
            out.append(" ".join(words))
        return [w for w in out if w]

    # -- scores -------------------------------------------------------------------------------------------------

    def score(self, frames: np.ndarray, text: np.ndarray) -> float:
        """Grounding score of one text in one video: see the module docstring for the exact formula."""
        return pooled_score(frames, text, self.cfg.pooling, self.cfg.topk, self.cfg.text_pooling)

    def score_texts(self, run: Run, sample: Sample, texts: list[str]) -> list[float]:
        video = self.video_embeddings(run, sample)
        return [self.score(video, text) for text in self.text_embeddings(texts)]


def pooled_score(frames: np.ndarray, text: np.ndarray, pooling: str = "mean", topk: int = 4,
                 text_pooling: str = "mean") -> float:
    """The score of (T, D) frame embeddings against (S, D) (or (D,)) text embeddings, both L2-normalised."""
    frames = np.asarray(frames, dtype=np.float64)
    text = np.atleast_2d(np.asarray(text, dtype=np.float64))
    if frames.ndim != 2 or not len(frames) or not len(text) or frames.shape[1] != text.shape[1]:
        raise ValueError(f"cannot score frames of shape {frames.shape} against text of shape {text.shape}")
    cosines = frames @ text.T  # (T, S)
    if pooling == "mean":
        per_segment = cosines.mean(axis=0)
    elif pooling == "max":
        per_segment = cosines.max(axis=0)
    elif pooling == "topk":
        k = min(topk, len(frames))
        per_segment = np.sort(cosines, axis=0)[-k:].mean(axis=0)
    else:
        raise ValueError(f"unknown pooling {pooling!r}")
    if text_pooling == "mean":
        value = per_segment.mean()
    elif text_pooling == "max":
        value = per_segment.max()
    else:
        raise ValueError(f"unknown text pooling {text_pooling!r}")
    return float(np.clip(value, -1.0, 1.0))


def grid_indices(count: int, tiles: int = GRID_SIDE * GRID_SIDE) -> list[int]:
    """Which of `count` frames fill the `tiles` tiles of a grid: evenly spaced from the first to the last, in
    order (some repeated when there are fewer frames than tiles)."""
    return [int(i) for i in np.floor(np.linspace(0, count - 1, tiles) + 0.5)]


def tile_grid(frames: np.ndarray, side: int = GRID_SIDE) -> np.ndarray:
    """(T, H, W, C) frames as one (side * S, side * S, C) image, S = min(H, W): the central square of each frame
    picked by `grid_indices`, placed row-major in time order (frame k of the pick at row k // side, column
    k % side)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or not len(frames):
        raise ValueError(f"cannot tile frames of shape {frames.shape} into a grid")
    _, height, width, channels = frames.shape
    square = min(height, width)
    top, left = (height - square) // 2, (width - square) // 2
    tiles = frames[grid_indices(len(frames), side * side), top:top + square, left:left + square]
    # (side * side, S, S, C) -> rows of tiles (side, side, S, S, C) -> pixel rows (side, S, side, S, C) -> image
    return np.ascontiguousarray(
        tiles.reshape(side, side, square, square, channels).transpose(0, 2, 1, 3, 4)
        .reshape(side * square, side * square, channels))


def split_sentences(text: str) -> list[str]:
    """Sentences: split after . ! ? followed by whitespace, and at line breaks. Empty pieces are dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
