"""Qwen2.5-VL-7B-Instruct's shape and inputs, for the GPU benchmarks that build it without a download (a sibling
module, also a script that builds the model folder).

The shape is the published config.json itself, the file savi keeps in `stages/core/checkpoints/qwen2_5_vl/` and
builds its tiny Qwen2.5-VL from (published flat layout: text settings at the top level, M-RoPE in `rope_scaling`).
Token ids are the exception: they must be those of the tokenizer actually in the folder, so they are the tiny
model's. A benchmark takes savi's tiny Qwen2.5-VL (tokenizer, chat template, processor, generation config) and
puts random weights of this shape beside them. The vocabulary keeps its 152,064 rows; ids past the tiny
tokenizer's are never produced by it, but the embedding and output head are the real size.

The GPU benchmarks share one model folder, keyed by its config, built once (`python benchmarks/qwen_7b.py`, or by
the first benchmark that needs it): random bf16 weights initialised on the device that will run them (8 B
parameters take seconds on a GPU and minutes on a CPU), then written with `save_pretrained`, because savi's
loader, like a user's model, reads a folder (`from_pretrained`). The marker file is written last, so a folder
without it is a half-written one and is rebuilt.

The frames come from numpy (`frames`), not from a video file: the GPU machine has neither PyAV nor decord, and
the model sees the same arrays whichever way they were made.

    .venv/bin/python benchmarks/qwen_7b.py --cache /tmp/savi-gpu-check/models            # GPU: the 7B folder
    .venv/bin/python benchmarks/qwen_7b.py --cache /tmp/savi-gpu-check/models --shrunk   # CPU: the dry-run one
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from stages.offline.tiny_model import CHECKPOINTS, build_tiny_model

PUBLISHED = CHECKPOINTS / "qwen2_5_vl" / "config.json"
# The size of the published checkpoint (its safetensors index); the published config must build exactly this many.
PARAMS = 8_292_166_656

# The dry runs' shrink, shared by every benchmark so that they share one folder: 2 text layers of width 256 with
# 2 heads of the real head_dim 128 (the published M-RoPE sections stay valid) and 2 vision blocks of width 64,
# one windowed and one full-attention block as the real tower alternates. The vocabulary is the tiny tokenizer's:
# on a CPU, the real 152,064-row output head would take most of a DPO step's time (measured: over half of it).
SHRUNK_TEXT: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_window_layers": 2,
}
SHRUNK_VISION: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "out_hidden_size": 256,
    "fullatt_block_indexes": [1],
}
# 448x448 frames lie inside the published processor's pixel budget (min_pixels 3,136, max_pixels 12,845,056), so
# they reach the model unresized: 32 frames -> 16 x 32 x 32 patches, merged 2x2 -> 4,096 video tokens.
VIDEO_TOKENS_32_FRAMES_448 = 4096


def tiny_folder(cache: Path) -> Path:
    """savi's tiny Qwen2.5-VL: the tokenizer, chat template, processor and token ids the big model reuses."""
    folder = cache / "tiny-qwen2_5_vl"
    if not (folder / "config.json").is_file() or not (folder / "preprocessor_config.json").is_file():
        build_tiny_model(folder, "qwen2_5_vl")
    return folder


def config(tiny: Path, text: dict[str, Any] | None = None, vision: dict[str, Any] | None = None, *,
           tiny_vocabulary: bool = False) -> dict[str, Any]:
    """The published config.json with the tiny folder's token ids, and `text` / `vision` overrides on top.

    `text` keys are top-level fields (the flat layout); `tiny_vocabulary` shrinks the embedding and output head to
    the tiny tokenizer, for models so small that the real 152,064 rows would dominate them.
    """
    small = json.loads((tiny / "config.json").read_text())
    result = json.loads(PUBLISHED.read_text())
    for key, value in small.items():
        if key.endswith(("_token_id", "_token_index")):
            result[key] = value
    if tiny_vocabulary:
        result["vocab_size"] = small["vocab_size"]
    result.update(text or {})
    result["vision_config"].update(vision or {})
    return result


def count_params_on_meta(config: dict[str, Any]) -> int:
    """Parameters of a config, counted without allocating them (the 7B would need 16.6 GB just to be counted)."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(Qwen2_5_VLConfig(**config))
    return sum(p.numel() for p in model.parameters())


def check_published_size(cache: Path) -> int:
    """The published config's parameter count, checked against the checkpoint's; a dry run checks it too."""
    params = count_params_on_meta(config(tiny_folder(cache)))
    if params != PARAMS:
        raise SystemExit(f"the Qwen2.5-VL-7B config builds {params:,} parameters, not the published {PARAMS:,}")
    return params


def model_folder(cache: Path, *, shrunk: bool) -> tuple[Path, dict[str, Any]]:
    """Where the benchmark model is (or will be), and its config; the name is keyed by the config."""
    cfg = config(tiny_folder(cache), SHRUNK_TEXT if shrunk else None, SHRUNK_VISION if shrunk else None,
                 tiny_vocabulary=shrunk)
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"qwen2.5-vl-7b{'-shrunk' if shrunk else ''}-{key}", cfg


def ensure_model_folder(cache: Path, *, shrunk: bool, device: str) -> tuple[Path, dict[str, Any]]:
    """The model folder, built first if it is missing. Returns it and its marker (parameters, build times)."""
    folder, cfg = model_folder(cache, shrunk=shrunk)
    marker = folder / "bench-model.json"
    if not marker.is_file():
        build_folder(folder, cfg, device, tiny_folder(cache))
    return folder, json.loads(marker.read_text())


def ensure_model_folder_in_child(cache: Path, *, shrunk: bool) -> tuple[Path, dict[str, Any]]:
    """`ensure_model_folder`, building (if needed) in a child process: the 16.6 GB it holds on the GPU while
    building are then gone before the caller measures anything."""
    import subprocess

    folder, _ = model_folder(cache, shrunk=shrunk)
    if not (folder / "bench-model.json").is_file():
        argv = [sys.executable, str(Path(__file__).resolve()), "--cache", str(cache)] + (["--shrunk"] if shrunk else [])
        if subprocess.run(argv, stdout=subprocess.DEVNULL, check=False).returncode != 0:
            raise SystemExit("building the model folder failed (see above)")
    return folder, json.loads((folder / "bench-model.json").read_text())


def build_folder(folder: Path, cfg: dict[str, Any], device: str, tiny: Path) -> None:
    """Random bf16 weights of `cfg` on `device`, saved with the tiny folder's tokenizer, processor and generation
    config into `folder`, as a downloaded checkpoint is laid out."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig
    from transformers.utils import logging as hf_logging

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(Qwen2_5_VLConfig(**cfg), dtype=torch.bfloat16)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    init_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    model.save_pretrained(folder)
    save_s = time.perf_counter() - start
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    # save_pretrained writes config.json in transformers' current layout; a real checkpoint has the published one.
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.json", "preprocessor_config.json",
                 "generation_config.json"):
        shutil.copyfile(tiny / name, folder / name)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    (folder / "bench-model.json").write_text(json.dumps(
        {"params": params, "device": device, "init_s": round(init_s, 1), "save_s": round(save_s, 1),
         "weights_bytes": size, "built": time.time()}, indent=2))


def frames(count: int, size: int, seed: int = 0) -> np.ndarray:
    """`count` RGB frames of `size` x `size` (uint8): a coloured square crossing a noisy background.

    What a model costs does not depend on what the frames show; the noise only keeps JPEG files of these frames
    about as large as those of real footage, for the benchmarks that store them.
    """
    rng = np.random.default_rng(seed)
    background = rng.integers(30, 110, (size, size, 3), dtype=np.uint8)
    color = rng.integers(140, 256, 3, dtype=np.uint8)
    side = max(2, size // 6)
    row = int(rng.integers(0, size - side + 1))
    video = np.repeat(background[None], count, axis=0)
    for t in range(count):
        x = (size - side) * t // max(1, count - 1)
        video[t, row:row + side, x:x + side] = color
    return video


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the benchmarks' Qwen2.5-VL-7B model folder (random "
                                     "weights) and print its path.")
    parser.add_argument("--cache", type=Path, required=True, help="model folders are built and reused here")
    parser.add_argument("--shrunk", action="store_true", help="the dry runs' shrunk config, built on the CPU")
    args = parser.parse_args(argv)
    import torch

    device = "cpu" if args.shrunk else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("qwen_7b: building the 7B folder needs a CUDA GPU (none found); --shrunk builds the dry-run one")
        return 2
    params = check_published_size(args.cache)
    print(f"published Qwen2.5-VL-7B config: {params:,} parameters (checked on the meta device)", file=sys.stderr)
    start = time.perf_counter()
    folder, marker = ensure_model_folder(args.cache, shrunk=args.shrunk, device=device)
    print(f"model folder ready in {time.perf_counter() - start:.1f} s: {marker['params']:,} parameters; built on "
          f"{marker['device']} (init {marker['init_s']} s, save_pretrained {marker['save_s']} s, "
          f"{marker['weights_bytes'] / 1e9:.2f} GB of weights)", file=sys.stderr)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
