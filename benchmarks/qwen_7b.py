"""Qwen2.5-VL-7B-Instruct's shape, for the GPU benchmarks that build it without a download (a sibling module).

The published config.json in transformers 5's field names. Token ids are left out on purpose: they must be those
of the tokenizer actually in the folder, so they stay the tiny model's. A benchmark takes savi's tiny
Qwen2.5-VL (tokenizer, chat template, processor) and swaps in this shape.
"""

import json
from pathlib import Path
from typing import Any

from stages.core.tiny_model import build_tiny_model

TEXT: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,  # head_dim 3584 / 28 = 128
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 28,
    "layer_types": ["full_attention"] * 28,
    # M-RoPE: the 64 rotary frequency pairs of a 128-wide head split into time, height and width sections.
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "num_heads": 16,
    "intermediate_size": 3420,
    "out_hidden_size": 3584,
    "hidden_act": "silu",
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
# The size of the published checkpoint (its safetensors index); the full config must build exactly this many.
PARAMS = 8_292_166_656
# min_pixels / max_pixels of the published preprocessor_config.json, per frame. 448x448 frames lie inside, so
# they reach the model unresized: 32x32 patches, merged 2x2, 256 tokens per 2 frames.
PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}


def tiny_folder(cache: Path) -> Path:
    """savi's tiny Qwen2.5-VL: the tokenizer, chat template, processor and config skeleton the big model reuses."""
    folder = cache / "tiny-qwen2_5_vl"
    if not (folder / "config.json").is_file() or not (folder / "processor_config.json").is_file():
        build_tiny_model(folder, "qwen2_5_vl")
    return folder


def config_from_tiny(tiny: Path, text: dict[str, Any], vision: dict[str, Any]) -> dict[str, Any]:
    """The tiny model's config.json with these text and vision shapes."""
    config = json.loads((tiny / "config.json").read_text())
    config["text_config"].update(text)
    config["vision_config"].update(vision)
    return config


def count_params_on_meta(config: dict[str, Any]) -> int:
    """Parameters of a config, counted without allocating them (the 7B would need 16.6 GB just to be counted)."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(Qwen2_5_VLConfig(**config))
    return sum(p.numel() for p in model.parameters())
