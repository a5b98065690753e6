"""lmms-eval 0.7.3's video protocol as pure functions: which frames each model family's default path decodes, the
size those frames reach the model at, and how many tokens a reply may take. Nothing here loads a model or decodes
a video; the numbers let savi sample and size frames the way published lmms-eval figures were produced.

Which code runs. `--model NAME` resolves through `lmms_eval/models/registry_v2.py::ModelRegistryV2.resolve`, which
prefers a chat implementation when `lmms_eval/models/__init__.py::AVAILABLE_CHAT_TEMPLATE_MODELS` has one:
- `qwen2_5_vl` -> chat `models/chat/qwen2_5_vl.py` (its constructor is the simple class's);
- `qwen3_vl` -> chat `models/chat/qwen3_vl.py` (constructor and generation defaults in `models/simple/qwen3_vl.py`);
- `qwen2_vl` -> simple `models/simple/qwen2_vl.py` (no chat class is registered for it);
- `llava_onevision` -> simple `models/simple/llava_onevision.py` (no chat class; it runs the LLaVA-NeXT package and
  its lmms-lab checkpoints, not transformers' LlavaOnevision classes).

Frame indices (`frame_indices`), for a clip of T frames as the video reader counts them:
- qwen2_5_vl (`chat/qwen2_5_vl.py::generate_until`): n = min(max_num_frames=32, T), floored to even, at least 2,
  passed as `nframes`. qwen-vl-utils' `smart_nframes` keeps an even n and raises when n > T, so a 1-frame clip
  fails. Its readers then take `torch.linspace(0, T - 1, n).round()` (round half to even, in float32).
- qwen3_vl (`simple/qwen3_vl.py::_build_video_kwargs`): `nframes` = max_num_frames=32 as is, without the probe
  qwen2_5_vl does; `smart_nframes` rounds it to even (Python `round`, so 13 -> 12, 15 -> 16) and raises when it
  exceeds T: lmms-eval's Qwen3-VL run fails on clips shorter than 32 frames. Then the same linspace.
- qwen2_vl (`simple/qwen2_vl.py::generate_until`): the video entry has no `nframes`, so qwen-vl-utils samples at
  its default 2 fps: n = T / fps * 2 clamped to [4, min(768, T) floored to even] and to T, floored to even
  (`smart_nframes`), then the same linspace. lmms-eval then keeps `np.unique(np.linspace(0, n - 1, 32,
  dtype=int))` of those n frames, so short clips give fewer than 32 frames. This needs the clip's frame rate.
  (That path takes only files ending .mp4, .avi or .mov as videos; it drops any other silently.)
- llava_onevision (`simple/llava_onevision.py::load_video`): `np.linspace(0, T - 1, max_frames_num=32,
  dtype=int)` (truncation), duplicates kept, no fps rule and no `force_sample` in this class.
All four read the whole clip: none of them passes start or end times for these benchmarks. T is the reader's
count: qwen-vl-utils reads with torchcodec when installed, else decord, while chat/qwen2_5_vl.py probes T with
decord; where the two counts differ, n follows decord's and the linspace the reader's.

Frame sizes (`frame_size`), from a frame of height x width:
- Qwen families: qwen-vl-utils' `smart_resize(height, width, factor, min_pixels, max_pixels)`: both sides rounded
  to a multiple of `factor` (Python `round`), at least `factor`; if the area exceeds max_pixels both sides are
  scaled down by sqrt(area / max_pixels) and floored to the factor; if below min_pixels scaled up and ceiled.
  factor = image_patch_size * 2: 28 for Qwen2-VL and Qwen2.5-VL (the default patch 14), 32 for Qwen3-VL (lmms-eval
  passes `image_patch_size=16`). The per-frame max_pixels is clamped by `fetch_video`: min(entry max_pixels,
  max(min(768 * factor^2, 128000 * factor^2 * 0.9 / n * 2), int(min_pixels * 1.05))), n = frames decoded together.
  Entry pixels: qwen2_vl min 3136, max 602112 (`simple/qwen2_vl.py` defaults); qwen2_5_vl and qwen3_vl min
  256*28*28 = 200704, max 1605632, so their per-frame cap is 602112 (factor 28) and 786432 (factor 32).
  The Qwen3-VL path then calls its processor with do_resize=False; the Qwen2 and Qwen2.5 paths leave the
  processor's own smart_resize on, which keeps these sizes as long as they lie within its pixel range.
- llava_onevision: LLaVA-NeXT's `SigLipImageProcessor.preprocess` (llava/model/multimodal_encoder/siglip_encoder.py)
  resizes every frame to 384x384 (bicubic, aspect ratio not kept); transformers' LlavaOnevisionVideoProcessor
  does the same.

Reply length (`reply_tokens`): the task yaml's `generation_kwargs.max_new_tokens` where it sets one, else the
model path's default (128 for the three Qwen paths, 1024 for llava_onevision).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stages.core.errors import SaviError

SOURCE_VERSIONS = ("lmms-eval 0.7.3 (git 75571cfe), qwen-vl-utils 0.0.14 (QwenLM/Qwen3-VL, qwen-vl-utils/), "
                   "LLaVA-NeXT SigLipImageProcessor")

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")

# transformers `config.model_type` -> family. The MoE Qwen3-VL checkpoints run through the same lmms-eval class
# (`simple/qwen3_vl.py::_resolve_model_class` picks the MoE model class from the checkpoint name).
_FAMILY_OF_MODEL_TYPE = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl",
    "llava_onevision": "llava_onevision",
}

# ---------------------------------------------------------------------------------------------------------------
# Reply length

# max_new_tokens the task yaml sets (lmms_eval/tasks/...):
_TASK_REPLY_TOKENS = {
    "egoschema": 16,  # egoschema/_default_template_yaml (included by egoschema.yaml and egoschema_subset.yaml)
    "mvbench": 16,  # mvbench/_default_template_yaml (every mvbench_<subtask>.yaml includes it)
    "videomme": 16,  # videomme/videomme.yaml (and videomme/_default_template_yaml)
    "longvideobench": 32,  # longvideobench/longvideobench_val_v.yaml (and the _val_i/_test_* variants)
    "world": 16,  # savi's own benchmark: one-sentence replies ("The blue square moves left.")
}
# Tasks whose yaml sets no generation_kwargs (nextqa/_default_template_yaml + nextqa_mc_test.yaml,
# perceptiontest/val/_default_template_yaml + perceptiontest_mc.yaml, tempcompass/_default_template_yaml +
# tempcompass_*.yaml); lmms_eval/api/task.py then passes only `until` and `do_sample: False`, and the model path's
# own default applies.
_UNSET_REPLY_TOKENS = ("nextqa", "perceptiontest", "tempcompass")
# The default each path uses when the task sets none.
_PATH_REPLY_TOKENS = {
    "qwen2_vl": 128,  # models/simple/qwen2_vl.py::generate_until, default_gen_kwargs
    "qwen2_5_vl": 128,  # models/chat/qwen2_5_vl.py::generate_until, default_gen_kwargs
    "qwen3_vl": 128,  # models/simple/qwen3_vl.py::Qwen3_VL.DEFAULT_GEN_KWARGS, used by the chat class
    "llava_onevision": 1024,  # models/simple/llava_onevision.py::generate_until, `if "max_new_tokens" not in ...`
}
CHAT_REPLY_TOKENS = 128  # the chat paths' default


def reply_tokens(benchmark: str, family: str | None = None) -> int:
    """The `max_new_tokens` lmms-eval generates with for `benchmark`. Where the task sets none it depends on the
    model path: `family` picks it, and without one the chat paths' 128 applies (llava_onevision's is 1024)."""
    if benchmark in _TASK_REPLY_TOKENS:
        return _TASK_REPLY_TOKENS[benchmark]
    if benchmark in _UNSET_REPLY_TOKENS:
        return CHAT_REPLY_TOKENS if family is None else _PATH_REPLY_TOKENS[_check_family(family)]
    known = ", ".join([*_TASK_REPLY_TOKENS, *_UNSET_REPLY_TOKENS])
    raise SaviError(f"no lmms-eval reply length is known for benchmark {benchmark!r}; known: {known}")


def system_message(family: str) -> str | None:
    """The system turn lmms-eval's path sends: Qwen3-VL's chat class inserts its `system_prompt` (default "You are
    a helpful assistant.", models/simple/qwen3_vl.py); the others send none (Qwen2-VL's and Qwen2.5-VL's chat
    templates add that same sentence by themselves)."""
    return "You are a helpful assistant." if _check_family(family) == "qwen3_vl" else None


def family_of(model_type: str) -> str:
    """The family of a transformers `config.model_type`."""
    family = _FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        raise SaviError(f"model type {model_type!r} has no lmms-eval protocol here; supported model types: "
                        f"{', '.join(_FAMILY_OF_MODEL_TYPE)}")
    return family


# ---------------------------------------------------------------------------------------------------------------
# Frame indices

MAX_FRAMES = 32  # max_num_frames (Qwen classes) and max_frames_num (llava_onevision): the default of all four

# qwen-vl-utils 0.0.14, vision_process.py
_FRAME_FACTOR = 2  # frame counts are kept even (the vision towers pair frames in time)
_DEFAULT_FPS = 2.0  # FPS: the sampling rate when a video entry gives neither nframes nor fps
_FPS_MIN_FRAMES = 4
_FPS_MAX_FRAMES = 768


def frame_indices(family: str, total_frames: int, frames: int | None = None, *, fps: float | None = None) -> list[int]:
    """The indices of the frames lmms-eval's default path for `family` decodes from a clip of `total_frames`
    frames. `frames` overrides the path's maximum frame count (32). `fps`, the clip's average frame rate as the
    reader reports it, is needed for qwen2_vl only, which samples at 2 fps first. Raises SaviError where lmms-eval
    itself fails (a Qwen clip with too few frames)."""
    family = _check_family(family)
    limit = _check_frames(frames)
    _check_count("total_frames", total_frames)
    if family == "llava_onevision":
        return np.linspace(0, total_frames - 1, limit, dtype=int).tolist()
    first = _qwen_vl_utils_indices(total_frames, _qwen_vl_utils_count(family, total_frames, limit, fps))
    if family != "qwen2_vl":
        return first
    # lmms-eval's Qwen2-VL path keeps up to `limit` evenly spaced frames of the ones qwen-vl-utils decoded.
    kept = np.unique(np.linspace(0, len(first) - 1, limit, dtype=int))
    return [first[position] for position in kept]


def decoded_frame_count(family: str, total_frames: int, frames: int | None = None, *,
                        fps: float | None = None) -> int:
    """How many frames the path decodes and resizes as one video: the count `frame_size`'s per-frame pixel budget
    divides by. It is len(frame_indices(...)) except for qwen2_vl, which resizes all of its 2-fps frames before
    lmms-eval keeps 32 of them."""
    family = _check_family(family)
    limit = _check_frames(frames)
    _check_count("total_frames", total_frames)
    if family == "llava_onevision":
        return limit
    return _qwen_vl_utils_count(family, total_frames, limit, fps)


def _qwen_vl_utils_count(family: str, total: int, limit: int, fps: float | None) -> int:
    """The frame count qwen-vl-utils' `smart_nframes` settles on for the video entry lmms-eval builds."""
    if family == "qwen2_5_vl":
        # chat/qwen2_5_vl.py probes the clip's length so that nframes never exceeds it, except for 1-frame clips.
        asked = max(_FRAME_FACTOR, min(limit, total) // _FRAME_FACTOR * _FRAME_FACTOR)
        count = round(asked / _FRAME_FACTOR) * _FRAME_FACTOR
    elif family == "qwen3_vl":
        count = round(limit / _FRAME_FACTOR) * _FRAME_FACTOR
    else:
        if fps is None or not fps > 0:
            raise SaviError("lmms-eval's Qwen2-VL path samples at 2 fps: the clip's frame rate is needed")
        most = math.floor(min(_FPS_MAX_FRAMES, total) / _FRAME_FACTOR) * _FRAME_FACTOR
        count = min(max(total / fps * _DEFAULT_FPS, _FPS_MIN_FRAMES), most, total)
        count = math.floor(count / _FRAME_FACTOR) * _FRAME_FACTOR
    if count > total:
        raise SaviError(f"lmms-eval's {family} path fails on a {total}-frame clip: it has qwen-vl-utils take "
                        f"{count} frames, more than the clip has")
    if count < _FRAME_FACTOR:
        raise SaviError(f"lmms-eval's {family} path fails on a {total}-frame clip: qwen-vl-utils would get "
                        f"{count} frames of it, and takes at least {_FRAME_FACTOR}")
    return count


def _qwen_vl_utils_indices(total: int, count: int) -> list[int]:
    """qwen-vl-utils' `torch.linspace(0, total - 1, count).round()`. Computed with torch itself: its float32
    steps move an index by one against exact arithmetic on long clips (from about 13,000 frames when count is in
    the hundreds), so only the same computation reproduces it."""
    import torch

    return torch.linspace(0, total - 1, count, dtype=torch.float32).round().long().tolist()


# ---------------------------------------------------------------------------------------------------------------
# Frame sizes


@dataclass(frozen=True)
class _QwenPixels:
    patch: int  # image_patch_size given to qwen-vl-utils' process_vision_info
    min_pixels: int  # the video entry's min_pixels (lmms-eval's constructor default)
    max_pixels: int  # the video entry's max_pixels (likewise), before qwen-vl-utils clamps it


_QWEN_PIXELS = {
    "qwen2_vl": _QwenPixels(patch=14, min_pixels=3136, max_pixels=602112),  # simple/qwen2_vl.py
    "qwen2_5_vl": _QwenPixels(patch=14, min_pixels=256 * 28 * 28, max_pixels=1605632),  # simple/qwen2_5_vl.py
    "qwen3_vl": _QwenPixels(patch=16, min_pixels=256 * 28 * 28, max_pixels=1605632),  # simple/qwen3_vl.py
}
LLAVA_ONEVISION_SIZE = (384, 384)  # LLaVA-NeXT SigLipImageProcessor(size=(384, 384))

# qwen-vl-utils 0.0.14, vision_process.py
_SPATIAL_MERGE = 2  # SPATIAL_MERGE_SIZE: 2x2 patches merge into one token, so sides are multiples of 2 patches
_VIDEO_MAX_TOKENS = 768  # VIDEO_MAX_TOKEN_NUM: per-frame cap, in merged tokens
_MODEL_SEQ_LEN = 128000  # MODEL_SEQ_LEN (environment variable of that name, unset by lmms-eval)
_MAX_RATIO = 200  # smart_resize refuses frames more elongated than this


def frame_size(family: str, height: int, width: int, frames: int) -> tuple[int, int]:
    """The (height, width) each frame of a height x width clip is resized to before the model's processor sees
    it, when `frames` frames are decoded together (`decoded_frame_count`). For llava_onevision that is the
    processor's own fixed 384x384."""
    family = _check_family(family)
    _check_count("height", height)
    _check_count("width", width)
    _check_count("frames", frames)
    if family == "llava_onevision":
        return LLAVA_ONEVISION_SIZE
    pixels = _QWEN_PIXELS[family]
    factor = pixels.patch * _SPATIAL_MERGE
    # fetch_video: a per-frame cap, and a share of the whole video's budget, never below 1.05 x min_pixels.
    video_budget = _MODEL_SEQ_LEN * factor * factor * 0.9
    cap = max(min(_VIDEO_MAX_TOKENS * factor * factor, video_budget / frames * _FRAME_FACTOR),
              int(pixels.min_pixels * 1.05))
    return _smart_resize(height, width, factor, pixels.min_pixels, min(pixels.max_pixels, cap))


def _smart_resize(height: int, width: int, factor: int, min_pixels: float, max_pixels: float) -> tuple[int, int]:
    """qwen-vl-utils' smart_resize: sides that are multiples of `factor`, the area within [min_pixels,
    max_pixels], the aspect ratio kept as closely as that allows."""
    if max(height, width) / min(height, width) > _MAX_RATIO:
        raise SaviError(f"a {width}x{height} frame is too elongated for qwen-vl-utils (aspect ratio over "
                        f"{_MAX_RATIO})")
    new_height = max(factor, round(height / factor) * factor)
    new_width = max(factor, round(width / factor) * factor)
    if new_height * new_width > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        new_height = math.floor(height / shrink / factor) * factor
        new_width = math.floor(width / shrink / factor) * factor
    elif new_height * new_width < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * grow / factor) * factor
        new_width = math.ceil(width * grow / factor) * factor
    return new_height, new_width


# ---------------------------------------------------------------------------------------------------------------
# Argument checks


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise SaviError(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")
    return family


def _check_frames(frames: int | None) -> int:
    if frames is None:
        return MAX_FRAMES
    _check_count("frames", frames)
    return frames


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SaviError(f"{name} must be a whole number of at least 1, got {value!r}")
