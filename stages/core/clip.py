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

    <run>/clip/<key>/<video_id>.npy     float32 (T, D), L2-normalised rows, in frame order
    <run>/clip/<key>/info.json          what produced them (model, weights, preprocessing)

``key`` (``ClipScorer.key``) is a readable label plus a fingerprint of the architecture and weights: the model
name and pretrained tag, or the sha256 of a weights file, or the config and weights files of a ``local-dir:``
folder, plus the image preprocessing. Different models or weights never share a folder. Files are written to a
temporary name and renamed, so a killed process leaves either a whole file or none. A cache file that cannot be
read, has the wrong shape, or is older than the video's frames (the run was re-sampled with ``--force``) is
recomputed and replaced.

Models and weights
------------------
``ClipConfig.model`` is an open_clip model name (``python -c 'import open_clip; print(open_clip.list_models())'``),
or ``local-dir:DIR`` (open_clip's own folder layout: ``open_clip_config.json`` with ``{"model_cfg": ...,
"preprocess_cfg": ...}`` and a weights file such as ``open_clip_model.safetensors``), or ``hf-hub:ORG/REPO`` (only
if it is already in the Hugging Face cache). ``ClipConfig.weights`` is, for a model name:

* a pretrained tag (``openai``, ``laion2b_s34b_b79k``, ...). It is loaded from the local caches
  (``~/.cache/huggingface``, or ``~/.cache/clip`` for direct URLs). If it is not there, it is downloaded only when
  the network can be reached and ``HF_HUB_OFFLINE`` is not set; otherwise `load` fails at once with instructions.
  A tag's QuickGELU setting and preprocessing are applied, so ``ViT-B-32`` + ``openai`` is the real OpenAI model.
* a weights file (``.pt``, ``.pth``, ``.bin``, ``.safetensors``) for that architecture.
* ``local-dir:DIR``: the folder's ``open_clip_config.json`` and weights are used (the model name must be the
  default or the same folder), or, if the folder has weights but no config, its weights file for ``model``.
* ``random``: seeded random initialisation (seed 0, so the cache stays valid). For tests, demos and timing only.

With ``model="local-dir:DIR"`` the folder brings its own weights, so ``weights`` is ignored when it is the default
(``openai``) or empty; ``random`` uses the folder's architecture untrained, a file path loads that file into the
folder's architecture, and any other pretrained tag is refused as a contradiction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from stages.core.errors import SaviError
from stages.core.records import Sample
from stages.core.store import Run, atomic_path, file_sha256, fingerprint, write_json

DEFAULT_CLIP = "ViT-B-32"
DEFAULT_WEIGHTS = "openai"
POOLINGS = ("mean", "max", "topk")
TEXT_POOLINGS = ("mean", "max")
RANDOM_WEIGHTS = "random"
RANDOM_SEED = 0
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
CONFIG_NAME = "open_clip_config.json"
CACHE_FORMAT = 1  # bump when the cached embeddings change meaning; it is part of the key
PROBE_SECONDS = 3.0

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n+\s*")


@dataclass(frozen=True)
class ClipConfig:
    model: str = DEFAULT_CLIP
    """open_clip model name (e.g. ViT-B-32), or local-dir:DIR (open_clip folder layout), or hf-hub:ORG/REPO."""
    weights: str = DEFAULT_WEIGHTS
    """Pretrained tag, weights file, local-dir:DIR, or random. Ignored (folder's own) for a local-dir: model."""
    pooling: str = "mean"
    """Per-frame cosines to one score per segment: mean (robust to one odd frame), max, or topk (mean of top k)."""
    topk: int = 4
    """k for pooling=topk (capped at the number of frames)."""
    text_pooling: str = "mean"
    """Segment scores of a long text to one score: mean (every claim counts) or max."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps."""
    batch_size: int = 32
    """Frames or text segments per forward pass."""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise SaviError(f"unknown CLIP pooling {self.pooling!r}: use one of {', '.join(POOLINGS)}")
        if self.text_pooling not in TEXT_POOLINGS:
            raise SaviError(f"unknown CLIP text pooling {self.text_pooling!r}: use one of {', '.join(TEXT_POOLINGS)}")
        if self.topk < 1:
            raise SaviError(f"CLIP topk must be at least 1, got {self.topk}")
        if self.batch_size < 1:
            raise SaviError(f"CLIP batch size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class _Source:
    """What `load` resolved the config to: the arguments for open_clip and the identity of the weights."""

    model_name: str  # passed to open_clip (a name, local-dir:..., or hf-hub:...)
    pretrained: str | None  # a file path, or a tag to download, or None
    checkpoint_after: str | None  # a file to load into a local-dir architecture after creating it
    random: bool
    tag_cfg: dict[str, Any]
    identity: dict[str, Any]  # what the cache key is made of
    label: str  # readable part of the key


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

        device = _resolve_device(cfg.device)
        source = _resolve(cfg)
        model, preprocess = _create(source)
        model = model.to(device).eval()
        tokenizer = _tokenizer(source.model_name, fingerprint(source.identity))
        context_length = int(getattr(model, "context_length", None) or getattr(tokenizer, "context_length", 77))
        with torch.inference_mode():
            probe = model.encode_text(tokenizer([""], context_length=context_length).to(device))
        preprocess_cfg = {k: list(v) if isinstance(v, tuple) else v
                          for k, v in dict(getattr(model.visual, "preprocess_cfg", {})).items()}
        identity = {**source.identity, "preprocess": preprocess_cfg, "format": CACHE_FORMAT}
        key = f"{_slug(source.label)}-{fingerprint(identity)[:12]}"
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

    def frame_embeddings(self, run: Run, sample: Sample) -> np.ndarray:
        """(T, D) L2-normalised float32 embeddings of the video's sampled frames, from the run's cache if valid."""
        if sample.status != "ok" or not sample.frames_dir:
            raise SaviError(f"video {sample.video_id} has no sampled frames ({sample.error or sample.status}); "
                            "only videos with status ok can be scored")
        folder = run.path / sample.frames_dir
        frame_files = sorted(folder.glob("*.jpg"))
        if not frame_files:
            raise SaviError(f"the frames of video {sample.video_id} are missing from {folder}; "
                            "run `savi sample` again for this run to restore them")
        path = self.cache_path(run, sample.video_id)
        cached = self._read_cache(path, frame_files)
        if cached is not None:
            return cached
        from stages.core.video import load_frames

        embeddings = self.encode_frames(load_frames(folder))
        if not (self.cache_dir(run) / "info.json").is_file():
            write_json(self.cache_dir(run) / "info.json", self.info)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, embeddings, allow_pickle=False)
        return embeddings

    def _read_cache(self, path: Path, frame_files: list[Path]) -> np.ndarray | None:
        """The cached embeddings, or None if absent, unreadable, the wrong shape, or older than the frames."""
        try:
            if path.stat().st_mtime_ns < max(f.stat().st_mtime_ns for f in frame_files):
                return None
            with open(path, "rb") as f:
                array = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if array.dtype != np.float32 or array.shape != (len(frame_files), self.dim) or not np.isfinite(array).all():
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
        frames = self.frame_embeddings(run, sample)
        return [self.score(frames, text) for text in self.text_embeddings(texts)]


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


def split_sentences(text: str) -> list[str]:
    """Sentences: split after . ! ? followed by whitespace, and at line breaks. Empty pieces are dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


# ---------------------------------------------------------------------------------------------------------------
# Tiny model


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised CLIP (1.6M parameters) in open_clip's `local-dir:` layout; returns the folder.

    Load it as `ClipConfig(model=f"local-dir:{folder}")` (weights left at the default: the folder's own). The same
    seed gives the same bytes, hence the same cache key.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CLIP(**model_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / "open_clip_model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(out_dir / CONFIG_NAME, {"model_cfg": model_cfg, "preprocess_cfg": {}})
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Resolving model and weights


def _resolve(cfg: ClipConfig) -> _Source:
    model, weights = cfg.model.strip(), (cfg.weights or "").strip()
    if weights.startswith(LOCAL_DIR):
        folder = _local_folder(weights[len(LOCAL_DIR):], "--clip-weights")
        if (folder / CONFIG_NAME).is_file():
            if model not in (DEFAULT_CLIP, f"{LOCAL_DIR}{folder}", f"{LOCAL_DIR}{weights[len(LOCAL_DIR):]}"):
                raise SaviError(f"CLIP weights {weights} bring their own architecture ({folder / CONFIG_NAME}), "
                                f"which contradicts model {model!r}; pass the folder as the model instead")
            return _resolve_local_dir(folder, DEFAULT_WEIGHTS)
        checkpoint = _find_checkpoint(folder)
        if checkpoint is None:
            raise SaviError(f"CLIP weights folder {folder} has no weights file ({', '.join(WEIGHT_SUFFIXES)}); "
                            "put open_clip_pytorch_model.bin or open_clip_model.safetensors in it")
        weights = str(checkpoint)
    if model.startswith(LOCAL_DIR):
        return _resolve_local_dir(_local_folder(model[len(LOCAL_DIR):], "--clip-model"), weights)
    if model.startswith(HF_HUB):
        return _resolve_hf_hub(model[len(HF_HUB):], weights)
    return _resolve_named(model, weights)


def _local_folder(raw: str, flag: str) -> Path:
    folder = Path(raw).expanduser()
    if not raw or not folder.is_dir():
        raise SaviError(f"CLIP folder {raw or '(empty)'} given as {flag} local-dir: does not exist; "
                        f"pass a folder with {CONFIG_NAME} and open_clip_model.safetensors")
    return folder.resolve()


def _find_checkpoint(folder: Path) -> Path | None:
    preferred = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                 "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
                 "model.pth")
    for name in preferred:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for suffix in WEIGHT_SUFFIXES for p in folder.glob(f"*{suffix}") if p.is_file())
    return found[0] if found else None


def _resolve_local_dir(folder: Path, weights: str) -> _Source:
    config_path = folder / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text())
        config["model_cfg"]
    except FileNotFoundError:
        raise SaviError(f"CLIP folder {folder} has no {CONFIG_NAME}; a local-dir: model needs "
                        '{"model_cfg": {...}, "preprocess_cfg": {...}} there (open_clip\'s folder layout)') from None
    except (ValueError, KeyError, TypeError):
        raise SaviError(f"{config_path} is not an open_clip config (needs a \"model_cfg\" entry)") from None
    identity: dict[str, Any] = {"config": fingerprint(config)}
    random = checkpoint_after = None
    if weights == RANDOM_WEIGHTS:
        random, identity["weights"] = True, f"random-seed{RANDOM_SEED}"
    elif weights in ("", DEFAULT_WEIGHTS, "local-dir"):
        checkpoint = _find_checkpoint(folder)
        if checkpoint is None:
            raise SaviError(f"CLIP folder {folder} has {CONFIG_NAME} but no weights file "
                            "(open_clip_model.safetensors or open_clip_pytorch_model.bin); add it, or pass "
                            f"--clip-weights {RANDOM_WEIGHTS} to use the architecture untrained")
        identity["weights"] = file_sha256(checkpoint)
    else:
        file = _weights_file(weights, None)
        if file is None:
            raise SaviError(f"CLIP weights {weights!r} are a pretrained tag, but model local-dir:{folder} brings its "
                            "own weights; leave --clip-weights at its default, or pass a weights file or 'random'")
        checkpoint_after, identity["weights"] = str(file), file_sha256(file)
    return _Source(model_name=f"{LOCAL_DIR}{folder}", pretrained=None, checkpoint_after=checkpoint_after,
                   random=bool(random), tag_cfg={}, identity=identity, label=f"local-{folder.name}")


def _weights_file(weights: str, model: str | None) -> Path | None:
    """The weights as an existing file, None if they are not meant as a path; SaviError for a missing file."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path.resolve()
    if path.suffix.lower() in WEIGHT_SUFFIXES or "/" in weights or os.sep in weights or weights.startswith("~"):
        where = f" for {model}" if model else ""
        raise SaviError(f"CLIP weights file {weights} does not exist; pass an existing "
                        f".pt/.bin/.safetensors file{where}, or a pretrained tag")
    return None


def _resolve_named(model: str, weights: str) -> _Source:
    import open_clip
    from open_clip import pretrained as oc_pretrained

    name = model.replace("/", "-")
    if open_clip.get_model_config(name) is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SaviError(f"unknown CLIP model {model!r}{hint}; list the names with "
                        "python -c 'import open_clip; print(open_clip.list_models())', or pass local-dir:FOLDER")
    if weights == RANDOM_WEIGHTS:
        return _Source(model_name=name, pretrained=None, checkpoint_after=None, random=True, tag_cfg={},
                       identity={"model": name, "weights": f"random-seed{RANDOM_SEED}"}, label=f"{name}-random")
    file = _weights_file(weights, name) if weights else None
    if file is not None:
        return _Source(model_name=name, pretrained=str(file), checkpoint_after=None, random=False, tag_cfg={},
                       identity={"model": name, "weights": file_sha256(file)}, label=f"{name}-{file.stem}")
    tag_cfg = oc_pretrained.get_pretrained_cfg(name, weights) if weights else {}
    if not tag_cfg:
        tags = oc_pretrained.list_pretrained_tags_by_model(name)
        known = f"its tags: {', '.join(tags)}" if tags else "it has no pretrained tags"
        raise SaviError(f"CLIP weights {weights or '(empty)'!r} are neither a pretrained tag of {name} ({known}) nor "
                        f"an existing weights file; pass one of those, or '{RANDOM_WEIGHTS}' for tests")
    tag = oc_pretrained._clean_tag(weights)
    source = _Source(model_name=name, pretrained=None, checkpoint_after=None, random=False, tag_cfg=tag_cfg,
                     identity={"model": name, "tag": tag}, label=f"{name}-{tag}")
    cached = _cached_tag_file(tag_cfg)
    if cached is not None:
        return dataclasses.replace(source, pretrained=cached)
    host = _download_host(tag_cfg)
    if _offline_declared() or host is None or not _reachable(host):
        raise SaviError(
            f"CLIP weights {weights!r} for {name} are not on this machine and cannot be downloaded here; "
            "download them on a machine with internet (python -c 'import open_clip; "
            f"open_clip.create_model_and_transforms(\"{name}\", pretrained=\"{weights}\")' caches them under "
            "~/.cache/huggingface) and copy that folder here, or pass --clip-weights "
            "/path/to/open_clip_pytorch_model.bin")
    return dataclasses.replace(source, pretrained=tag)  # open_clip downloads it


def _resolve_hf_hub(repo: str, weights: str) -> _Source:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, CONFIG_NAME)
    if not isinstance(found, str):
        raise SaviError(f"CLIP model hf-hub:{repo} is not in the Hugging Face cache of this machine; download it "
                        "where there is internet (python -c 'import open_clip; "
                        f"open_clip.create_model_and_transforms(\"hf-hub:{repo}\")') and copy ~/.cache/huggingface "
                        "here, or pass local-dir:FOLDER with its files")
    if weights not in ("", DEFAULT_WEIGHTS):
        raise SaviError(f"CLIP model hf-hub:{repo} brings its own weights; leave --clip-weights at its default")
    return _Source(model_name=f"{HF_HUB}{repo}", pretrained=None, checkpoint_after=None, random=False, tag_cfg={},
                   identity={"hf-hub": repo, "snapshot": Path(found).parent.name}, label=f"hf-{repo.split('/')[-1]}")


def _cached_tag_file(tag_cfg: dict[str, Any]) -> str | None:
    """Where a pretrained tag's weights already are on this machine (Hugging Face cache or ~/.cache/clip)."""
    if tag_cfg.get("file") and os.path.isfile(tag_cfg["file"]):
        return str(tag_cfg["file"])
    hf = tag_cfg.get("hf_hub", "")
    if hf:
        from huggingface_hub import try_to_load_from_cache
        from open_clip import pretrained as oc_pretrained

        repo, filename = os.path.split(hf)
        filename = filename or oc_pretrained.HF_WEIGHTS_NAME
        for name in [*oc_pretrained._get_safe_alternatives(filename), filename]:
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = tag_cfg.get("url", "")
    if url:
        path = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if path.is_file():
            return str(path)
    return None


def _download_host(tag_cfg: dict[str, Any]) -> tuple[str, int] | None:
    if tag_cfg.get("hf_hub"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    else:
        endpoint = tag_cfg.get("url", "")
    parsed = urlparse(endpoint)
    if not parsed.hostname:
        return None
    return parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)


def _offline_declared() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _reachable(host: tuple[str, int]) -> bool:
    """Whether a TCP connection to the host opens within PROBE_SECONDS (name lookup included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(host, timeout=PROBE_SECONDS).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(PROBE_SECONDS + 0.5)
    return bool(result and result[0])


# ---------------------------------------------------------------------------------------------------------------
# Creating the model


def _create(source: _Source) -> tuple[Any, Any]:
    import open_clip
    import torch

    kwargs: dict[str, Any] = {}
    if source.tag_cfg:
        kwargs["force_quick_gelu"] = bool(source.tag_cfg.get("quick_gelu", False))
        for ours, theirs in (("image_mean", "mean"), ("image_std", "std"), ("image_interpolation", "interpolation"),
                             ("image_resize_mode", "resize_mode")):
            if source.tag_cfg.get(theirs) is not None:
                kwargs[ours] = source.tag_cfg[theirs]
    downloading = source.pretrained is not None and not os.path.isfile(source.pretrained)
    what = source.pretrained or source.checkpoint_after or source.model_name
    try:
        with torch.random.fork_rng(devices=[]), _offline(not downloading), _quiet_open_clip():
            torch.manual_seed(RANDOM_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                source.model_name, pretrained=source.pretrained,
                load_weights=not (source.random or source.checkpoint_after), **kwargs)
            if source.checkpoint_after:
                open_clip.load_checkpoint(model, source.checkpoint_after)
    except SaviError:
        raise
    except Exception as e:
        reason = " ".join(str(e).split())[:300]
        if downloading:
            raise SaviError(f"could not download CLIP weights {source.pretrained!r} for {source.model_name} "
                            f"({reason}); download them on a machine with internet, or pass --clip-weights "
                            "/path/to/open_clip_pytorch_model.bin") from None
        raise SaviError(f"could not load CLIP {source.model_name} with weights {what} ({reason}); check that the "
                        "weights belong to this architecture (QuickGELU models are named e.g. ViT-B-32-quickgelu)"
                        ) from None
    return model, preprocess


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Forbid Hugging Face downloads for the duration (the env var, and the constant read at import time)."""
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hf_constants

    saved_env, saved_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = saved_const
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


class _DropExpected(logging.Filter):
    """open_clip logs on the root logger; these lines describe what savi asked for and only add noise."""

    EXPECTED = ("No pretrained weights loaded", "Ignoring `pretrained=")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in str(record.msg) for text in self.EXPECTED)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root, drop = logging.getLogger(), _DropExpected()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@functools.lru_cache(maxsize=8)
def _tokenizer(model_name: str, identity: str) -> Any:
    """open_clip's tokenizer for the model (building one reads the BPE vocabulary: worth keeping)."""
    import open_clip

    with _offline(True), _quiet_open_clip():
        return open_clip.get_tokenizer(model_name)


def _resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise SaviError(f"unknown device {device!r} for CLIP: use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SaviError(f"device {device!r} asked for CLIP, but no CUDA GPU is available; use --device cpu or auto")
    return resolved


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:48] or "clip"
