"""A tiny randomly initialised CLIP, built offline, for `savi filter` in tests and demos without a download."""

from __future__ import annotations

from pathlib import Path

from stages.core.clip_weights import CONFIG_NAME
from stages.core.store import atomic_path, check_output_folder, write_json


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised CLIP (1.6M parameters) in open_clip's `local-dir:` layout; returns the folder.

    Load it as `ClipConfig(model=f"local-dir:{folder}")` (weights left at the default: the folder's own). The same
    seed gives the same bytes, hence the same cache key.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    check_output_folder(out_dir, (CONFIG_NAME,), "a tiny CLIP")
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
