"""Which CLIP a `ClipConfig` names, and where its weights are: on this machine, or reachable to download.

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from stages.core.errors import SaviError
from stages.core.hub import offline, offline_declared, reachable
from stages.core.store import file_sha256, fingerprint

DEFAULT_CLIP = "ViT-B-32"
DEFAULT_WEIGHTS = "openai"
RANDOM_WEIGHTS = "random"
RANDOM_SEED = 0
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
CONFIG_NAME = "open_clip_config.json"


@dataclass(frozen=True)
class Source:
    """What `resolve` found: the arguments for open_clip and the identity of the weights."""

    model_name: str  # passed to open_clip (a name, local-dir:..., or hf-hub:...)
    pretrained: str | None  # a file path, or a tag to download, or None
    checkpoint_after: str | None  # a file to load into a local-dir architecture after creating it
    random: bool
    tag_cfg: dict[str, Any]
    identity: dict[str, Any]  # what the cache key is made of
    label: str  # readable part of the key


# ---------------------------------------------------------------------------------------------------------------
# Resolving model and weights


def resolve(model: str, weights: str) -> Source:
    """The CLIP `model` with `weights` (see the module docstring for the forms each can take)."""
    model, weights = model.strip(), (weights or "").strip()
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


def _resolve_local_dir(folder: Path, weights: str) -> Source:
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
    return Source(model_name=f"{LOCAL_DIR}{folder}", pretrained=None, checkpoint_after=checkpoint_after,
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


def _resolve_named(model: str, weights: str) -> Source:
    import open_clip
    from open_clip import pretrained as oc_pretrained

    name = model.replace("/", "-")
    if open_clip.get_model_config(name) is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SaviError(f"unknown CLIP model {model!r}{hint}; list the names with "
                        "python -c 'import open_clip; print(open_clip.list_models())', or pass local-dir:FOLDER")
    if weights == RANDOM_WEIGHTS:
        return Source(model_name=name, pretrained=None, checkpoint_after=None, random=True, tag_cfg={},
                       identity={"model": name, "weights": f"random-seed{RANDOM_SEED}"}, label=f"{name}-random")
    file = _weights_file(weights, name) if weights else None
    if file is not None:
        return Source(model_name=name, pretrained=str(file), checkpoint_after=None, random=False, tag_cfg={},
                       identity={"model": name, "weights": file_sha256(file)}, label=f"{name}-{file.stem}")
    tag_cfg = oc_pretrained.get_pretrained_cfg(name, weights) if weights else {}
    if not tag_cfg:
        tags = oc_pretrained.list_pretrained_tags_by_model(name)
        known = f"its tags: {', '.join(tags)}" if tags else "it has no pretrained tags"
        raise SaviError(f"CLIP weights {weights or '(empty)'!r} are neither a pretrained tag of {name} ({known}) nor "
                        f"an existing weights file; pass one of those, or '{RANDOM_WEIGHTS}' for tests")
    tag = oc_pretrained._clean_tag(weights)
    source = Source(model_name=name, pretrained=None, checkpoint_after=None, random=False, tag_cfg=tag_cfg,
                     identity={"model": name, "tag": tag}, label=f"{name}-{tag}")
    cached = _cached_tag_file(tag_cfg)
    if cached is not None:
        return dataclasses.replace(source, pretrained=cached)
    host = _download_host(tag_cfg)
    if offline_declared() or host is None or not reachable(host):
        raise SaviError(
            f"CLIP weights {weights!r} for {name} are not on this machine and cannot be downloaded here; "
            "download them on a machine with internet (python -c 'import open_clip; "
            f"open_clip.create_model_and_transforms(\"{name}\", pretrained=\"{weights}\")' caches them under "
            "~/.cache/huggingface) and copy that folder here, or pass --clip-weights "
            "/path/to/open_clip_pytorch_model.bin")
    return dataclasses.replace(source, pretrained=tag)  # open_clip downloads it


def _resolve_hf_hub(repo: str, weights: str) -> Source:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, CONFIG_NAME)
    if not isinstance(found, str):
        raise SaviError(f"CLIP model hf-hub:{repo} is not in the Hugging Face cache of this machine; download it "
                        "where there is internet (python -c 'import open_clip; "
                        f"open_clip.create_model_and_transforms(\"hf-hub:{repo}\")') and copy ~/.cache/huggingface "
                        "here, or pass local-dir:FOLDER with its files")
    if weights not in ("", DEFAULT_WEIGHTS):
        raise SaviError(f"CLIP model hf-hub:{repo} brings its own weights; leave --clip-weights at its default")
    return Source(model_name=f"{HF_HUB}{repo}", pretrained=None, checkpoint_after=None, random=False, tag_cfg={},
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


# ---------------------------------------------------------------------------------------------------------------
# Creating the model


def create(source: Source) -> tuple[Any, Any]:
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
        with torch.random.fork_rng(devices=[]), offline(not downloading), quiet_open_clip():
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


class _DropExpected(logging.Filter):
    """open_clip logs on the root logger; these lines describe what savi asked for and only add noise."""

    EXPECTED = ("No pretrained weights loaded", "Ignoring `pretrained=")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in str(record.msg) for text in self.EXPECTED)


@contextlib.contextmanager
def quiet_open_clip() -> Iterator[None]:
    root, drop = logging.getLogger(), _DropExpected()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@functools.lru_cache(maxsize=8)
def tokenizer(model_name: str, identity: str) -> Any:
    """open_clip's tokenizer for the model (building one reads the BPE vocabulary: worth keeping)."""
    import open_clip

    with offline(True), quiet_open_clip():
        return open_clip.get_tokenizer(model_name)
