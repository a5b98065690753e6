"""Tiny, randomly initialised video chat models of real Hugging Face families, built offline.

No model hub is reachable in CI or in `make demo`, so tests and demos need a model they can make on the spot. Each
family here gets a byte-level BPE tokenizer trained on a few sentences, a processor with tiny frame sizes, and a
config a few layers deep, then is written with `save_pretrained`. The folder is an ordinary model folder: everything
else in savi loads it through `AutoProcessor` and `AutoModelForImageTextToText`, exactly as it would a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase, ProcessorMixin

FAMILIES: tuple[str, ...] = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava_onevision")
DEFAULT_FAMILY = "qwen2_5_vl"

# Sentences shaped like the captions, questions and answers savi produces, so that even a random model decodes
# into things that look like words, and the BPE merges cover the vocabulary the demo prompts use.
_CORPUS: tuple[str, ...] = (
    "A red square moves from the left side of the frame to the right side.",
    "The green ball rolls slowly across the table and stops near the edge.",
    "A blue car drives past a white house before turning left at the corner.",
    "After the door opens, a person walks into the room and sits down.",
    "The yellow bird flies up from the branch and lands on the roof.",
    "Two small boxes appear on the right, then one of them disappears.",
    "What colour is the object that moves first in the video?",
    "Where does the square go after it reaches the middle of the frame?",
    "Does the ball move to the left or to the right before it stops?",
    "How many objects are visible at the start and at the end of the clip?",
    "The camera stays still while a black cat jumps onto the chair.",
    "A man in a blue shirt picks up a cup and drinks from it.",
    "The background is dark grey and the shape changes colour every second.",
    "First the square is red, then it turns green, and finally it becomes blue.",
    "The answer is correct because the square moves down and to the right.",
    "The answer is wrong: the ball moves up, not down, in the last frames.",
    "A woman opens a book, reads a page, and closes it again.",
    "Near the top of the frame, a white cloud drifts slowly to the left.",
    "The video shows a busy street with cars, bikes and people walking.",
    "Before the light turns green, the bus waits behind the line.",
    "The small orange fish swims in circles inside a glass bowl.",
    "A hand places three coloured blocks in a row from left to right.",
    "The dog runs toward the camera, then turns around and runs away.",
    "Is the square larger or smaller than the circle next to it?",
    "During the clip, the object never leaves the centre of the screen.",
    "The question asks about the order of events, and the answer is yes.",
    "At the end of the video, the table is empty and the room is quiet.",
    "A purple kite rises into the sky while children watch from below.",
    "The train enters the station from the left and slows to a stop.",
    "Describe what happens in the video in one short sentence.",
)

# Qwen chat tokens, shared by every family: LLaVA-OneVision uses a Qwen2 text model with the same chat markup.
_CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_QWEN_VISION_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_LLAVA_VISION_TOKENS = ("<image>", "<video>")

_QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
_QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
# Qwen3-VL's processor expands one bare <|video_pad|> into "<t seconds><|vision_start|>...<|vision_end|>" per
# temporal group, so wrapping it in vision tokens here would nest a second, empty-looking pair around the clip.
_QWEN3_VIDEO = "<|video_pad|>"

_VOCAB_SIZE = 384
_MAX_POSITIONS = 4096

# One text tower for all families: head_dim is 64 / 4 = 16, and the Qwen mrope sections must sum to head_dim / 2.
_TEXT = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": _MAX_POSITIONS,
    "rms_norm_eps": 1e-6,
}


def build_tiny_model(out_dir: str | Path, family: str = DEFAULT_FAMILY, seed: int = 0) -> Path:
    """Build a tiny random model of `family`, save model and processor to `out_dir`, and return that folder.

    The same `seed` gives identical weights; the tokenizer and processor do not depend on it.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")

    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    vision_tokens, image_markup, video_markup = {
        "qwen2_5_vl": (_QWEN_VISION_TOKENS, _QWEN_IMAGE, _QWEN_VIDEO),
        "qwen2_vl": (_QWEN_VISION_TOKENS, _QWEN_IMAGE, _QWEN_VIDEO),
        "qwen3_vl": (_QWEN_VISION_TOKENS, _QWEN_IMAGE, _QWEN3_VIDEO),
        "llava_onevision": (_LLAVA_VISION_TOKENS, "<image>", "<video>"),
    }[family]
    tokenizer = _train_tokenizer(_CHAT_TOKENS + vision_tokens)
    chat_template = _chat_template(image_markup, video_markup)
    processor = _PROCESSORS[family](tokenizer, chat_template)
    config = _CONFIGS[family](tokenizer)

    # A private RNG stream: building a model must not shift the caller's own random numbers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)

    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # Greedy and short: tests compare outputs across runs, and a random model only babbles anyway.
    model.generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=16, eos_token_id=eos_id, pad_token_id=pad_id
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    # A one-shard "Writing model shards" bar is noise for a sub-megabyte model; restore the setting afterwards.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
        processor.save_pretrained(out)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return out


def _train_tokenizer(special_tokens: tuple[str, ...]) -> PreTrainedTokenizerBase:
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # The full byte alphabet keeps every string encodable, whatever the corpus missed.
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    # The JSON stores merges as [left, right] lists, but the BPE inside Qwen2Tokenizer only accepts tuples.
    merges = [tuple(pair) for pair in trained["merges"]]

    # transformers' own Qwen2Tokenizer rather than a bare PreTrainedTokenizerFast: it adds Qwen's pre-tokenizer
    # and saves with tokenizer_class Qwen2Tokenizer, so AutoProcessor reloads the same class real checkpoints use.
    return Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in special_tokens if t not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=_MAX_POSITIONS,
    )


# Every tag trims the whitespace around it, so the indentation is for reading only: the newlines in a rendered
# prompt are exactly the \n literals. Content may be a plain string or a list of image, video and text parts.
_CHAT_TEMPLATE = r"""
{%- set image_count = namespace(value=0) -%}
{%- set video_count = namespace(value=0) -%}
{%- if messages[0]['role'] != 'system' -%}
    {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {{- '<|im_start|>' + message['role'] + '\n' -}}
    {%- if message['content'] is string -%}
        {{- message['content'] -}}
    {%- else -%}
        {%- for part in message['content'] -%}
            {%- if part['type'] == 'image' -%}
                {%- set image_count.value = image_count.value + 1 -%}
                {%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}
                {{- '@IMAGE@' -}}
            {%- elif part['type'] == 'video' -%}
                {%- set video_count.value = video_count.value + 1 -%}
                {%- if add_vision_id -%}{{- 'Video ' ~ video_count.value ~ ': ' -}}{%- endif -%}
                {{- '@VIDEO@' -}}
            {%- elif part['type'] == 'text' -%}
                {{- part['text'] -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
""".strip()


def _chat_template(image_markup: str, video_markup: str) -> str:
    """A Qwen-style ChatML template; the families differ only in what an image or a video part renders as."""
    return _CHAT_TEMPLATE.replace("@IMAGE@", image_markup).replace("@VIDEO@", video_markup)


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _text_config(tokenizer: PreTrainedTokenizerBase, **extra: Any) -> dict[str, Any]:
    # A vocab that is a multiple of 64 keeps the embedding shapes friendly to kernels and to resize_token_embeddings.
    vocab = -(-len(tokenizer) // 64) * 64
    return {
        **_TEXT,
        "vocab_size": vocab,
        "bos_token_id": None,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        **extra,
    }


# Qwen2-VL and Qwen2.5-VL resize each frame to a per-frame pixel budget. Pinning both ends of it to 56*56 pixels
# makes every frame about 56x56 whatever its size: 4x4 patches of 14 px, merged 2x2 into 4 LLM tokens per 2-frame
# temporal group, so prompts stay short and their length does not depend on the source resolution.
_QWEN2_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}
_QWEN2_PATCHES = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}


def _qwen2_processor(tokenizer: PreTrainedTokenizerBase, chat_template: str, processor_class: type) -> ProcessorMixin:
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(size=_QWEN2_SIZE, **_QWEN2_PATCHES)
    # Frames arrive already sampled by savi's decoder, so the processor must keep them all. Setting
    # cap_pixels_per_frame explicitly also silences the warning about its announced default change.
    video_processor = Qwen2VLVideoProcessor(
        size=_QWEN2_SIZE, do_sample_frames=False, cap_pixels_per_frame=False, **_QWEN2_PATCHES
    )
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template,
    )


def _qwen2_5_vl_processor(tokenizer: PreTrainedTokenizerBase, chat_template: str) -> ProcessorMixin:
    from transformers import Qwen2_5_VLProcessor

    return _qwen2_processor(tokenizer, chat_template, Qwen2_5_VLProcessor)


def _qwen2_vl_processor(tokenizer: PreTrainedTokenizerBase, chat_template: str) -> ProcessorMixin:
    from transformers import Qwen2VLProcessor

    return _qwen2_processor(tokenizer, chat_template, Qwen2VLProcessor)


def _qwen3_vl_processor(tokenizer: PreTrainedTokenizerBase, chat_template: str) -> ProcessorMixin:
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    patches = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2}
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 64 * 64, "longest_edge": 64 * 64}, **patches)
    # Unlike Qwen2's, this budget covers the whole clip (frames x height x width): 64*64*64 pixels keep 64x64 frames
    # intact up to 64 frames, where a per-frame budget would shrink every frame to the 32-px minimum.
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": 64 * 64, "longest_edge": 64 * 64 * 64},
        do_sample_frames=False,
        cap_pixels_per_frame=False,
        **patches,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template,
    )


# LLaVA-OneVision's SigLIP tower sees fixed 32x32 frames as a 4x4 grid of 8-px patches; the model pools each
# frame to 2x2 tokens and appends one newline token per video, so 8 frames cost 33 LLM tokens.
_LLAVA_IMAGE_SIZE = 32
_LLAVA_PATCH = 8
# anyres tiling picks among these resolutions; multiples of the tower size keep the image path consistent.
_LLAVA_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _llava_onevision_processor(tokenizer: PreTrainedTokenizerBase, chat_template: str) -> ProcessorMixin:
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    size = {"height": _LLAVA_IMAGE_SIZE, "width": _LLAVA_IMAGE_SIZE}
    image_processor = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=_LLAVA_PINPOINTS)
    video_processor = LlavaOnevisionVideoProcessor(size=size, do_sample_frames=False)
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template,
        num_image_tokens=(_LLAVA_IMAGE_SIZE // _LLAVA_PATCH) ** 2,
        # The processor counts placeholder tokens with this strategy, so it must match the model config's.
        vision_feature_select_strategy="full",
    )


def _qwen2_5_vl_config(tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    from transformers import Qwen2_5_VLConfig

    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "num_heads": 2,
        "intermediate_size": 64,
        "out_hidden_size": _TEXT["hidden_size"],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        # 56-px windows cover a whole 56x56 frame; block 1 still takes the full-attention path, as the real
        # model's designated blocks do, so both attention paths run.
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=_text_config(tokenizer, rope_parameters=rope),
        vision_config=vision,
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )


def _qwen2_vl_config(tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    from transformers import Qwen2VLConfig

    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}
    # Qwen2-VL names its vision widths differently: embed_dim is the tower's width, hidden_size its output.
    vision = {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": _TEXT["hidden_size"],
        "mlp_ratio": 2,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Qwen2VLConfig(
        text_config=_text_config(tokenizer, rope_parameters=rope),
        vision_config=vision,
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )


def _qwen3_vl_config(tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    from transformers import Qwen3VLConfig

    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": _TEXT["hidden_size"],
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        # A learned 4x4 position grid, interpolated to each frame's patch grid.
        "num_position_embeddings": 16,
        # DeepStack feeds features from these vision blocks into the first text layers; one keeps the path tested.
        "deepstack_visual_indexes": [0],
    }
    return Qwen3VLConfig(
        text_config=_text_config(tokenizer, head_dim=16, rope_parameters=rope),
        vision_config=vision,
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )


def _llava_onevision_config(tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    from transformers import LlavaOnevisionConfig

    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": _LLAVA_IMAGE_SIZE,
        "patch_size": _LLAVA_PATCH,
        "vision_use_head": False,
    }
    text = _text_config(tokenizer, model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        image_grid_pinpoints=_LLAVA_PINPOINTS,
        tie_word_embeddings=False,
    )


_PROCESSORS = {
    "qwen2_5_vl": _qwen2_5_vl_processor,
    "qwen2_vl": _qwen2_vl_processor,
    "qwen3_vl": _qwen3_vl_processor,
    "llava_onevision": _llava_onevision_processor,
}
_CONFIGS = {
    "qwen2_5_vl": _qwen2_5_vl_config,
    "qwen2_vl": _qwen2_vl_config,
    "qwen3_vl": _qwen3_vl_config,
    "llava_onevision": _llava_onevision_config,
}
