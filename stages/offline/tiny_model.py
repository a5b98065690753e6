"""Tiny, randomly initialised video chat models of real Hugging Face families, built offline from the real
checkpoints' own configuration.

No model hub is reachable in CI or in `make demo`, so tests and demos need a model they can make on the spot. A toy
config would hide exactly the defects real users hit (module names that a quantisation skip list must match, a
shipped generation_config.json that changes sampling, pixel budgets, a chat template that renders the answer turn
differently from the generation prompt). So each family starts from the published files of its reference checkpoint,
kept as data in `checkpoints/<family>/` (see `checkpoints/SOURCES.md`), and changes only three things:

- widths and depths (`_SHRINK`): every width a multiple of 64, so that every bitsandbytes 4-bit CPU path, including
  the AVX-512 BF16 one that repacks weights in blocks of 64 inputs, accepts the layers;
- the vocabulary: a byte-level BPE trained on a few sentences (plus any corpus the caller gives), with the
  checkpoint's special tokens after it;
- token ids, which follow the new vocabulary: every id in config.json and generation_config.json is mapped through
  the token it names.

The weights are transformers' own random init, except that `vision_init="fan_in"` draws the vision tower's
linear and convolution weights with std 1/sqrt(fan_in) instead of 0.02 (see `VISION_INITS`).

Everything else is written as published: config.json in its original layout (so transformers' own compatibility
code runs on it, as on the real one), generation_config.json, the image and video processor files, and the chat
template. The folder then loads through `AutoProcessor` and `AutoModelForImageTextToText` exactly as a real
checkpoint does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.core.store import check_output_folder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHECKPOINTS = Path(__file__).parent / "checkpoints"
# Family -> the published checkpoint whose files it carries.
FAMILIES: dict[str, str] = {
    "qwen2_5_vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen3_vl": "Qwen/Qwen3-VL-8B-Instruct",
    "llava_onevision": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
}
DEFAULT_FAMILY = "qwen2_5_vl"

# The published files copied as they are (those a family ships; tokenizer files are made here).
_AS_PUBLISHED = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
                 "chat_template.json")

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
_BPE_VOCAB = 384  # the trained part; the checkpoint's special tokens follow it
# With a caller's corpus, 64 more merges: enough for each word of the world's questions, replies and answer prompt
# (about 60 words) to become one token, so its sequences stay short.
_BPE_VOCAB_WITH_CORPUS = _BPE_VOCAB + 64

# How the vision path's weights are drawn. "transformers": the library's init, std 0.02 whatever a layer's width,
# fine for a model that only has to run. A model trained on the world from it stayed at chance (val 0.25 after
# 1,300 steps, where "fan_in" reached 0.61): in a tower this narrow, the visual tokens of two clips differ by about
# twice the size of a text embedding, against about 20 times with "fan_in". "fan_in": every linear and
# convolution weight with std 1/sqrt(fan_in), which keeps each layer's outputs at the scale of its inputs.
VISION_INITS: tuple[str, ...] = ("transformers", "fan_in")
# Where each family keeps what carries the pixels to the language model (LLaVA's projector is outside its tower).
_VISION_MODULES = ("visual", "vision_tower", "multi_modal_projector")

# The text tower of every family: 2 layers of width 128, four 32-wide heads sharing two key/value heads.
_TEXT = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}
_HEAD_DIM = _TEXT["hidden_size"] // _TEXT["num_attention_heads"]

# What each family changes in its published config: widths (multiples of 64) and depths, nothing else. Lists of
# block indexes shrink with the depth: the last block stays a full-attention one, as in the real tower.
_SHRINK: dict[str, dict[str, dict[str, Any]]] = {
    "qwen2_5_vl": {
        "text": {**_TEXT, "max_window_layers": 2},
        "vision": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                   "out_hidden_size": _TEXT["hidden_size"], "fullatt_block_indexes": [1]},
    },
    "qwen2_vl": {
        "text": {**_TEXT, "max_window_layers": 2},
        # Qwen2-VL names its vision widths differently: embed_dim is the tower's width, hidden_size its output.
        "vision": {"depth": 2, "embed_dim": 64, "num_heads": 2, "hidden_size": _TEXT["hidden_size"]},
    },
    "qwen3_vl": {
        "text": {**_TEXT, "head_dim": _HEAD_DIM},
        # DeepStack feeds features of these vision blocks into the first text layers; one keeps the path tested.
        "vision": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                   "out_hidden_size": _TEXT["hidden_size"], "deepstack_visual_indexes": [0]},
    },
    "llava_onevision": {
        "text": {**_TEXT},
        "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
    },
}


def build_tiny_model(out_dir: str | Path, family: str = DEFAULT_FAMILY, seed: int = 0, *,
                     corpus: Sequence[str] = (), vision_init: str = "transformers") -> Path:
    """Build a tiny random model of `family`, save it to `out_dir` as its checkpoint is laid out, and return the folder.

    `corpus`: more sentences for the BPE to learn (with a larger vocabulary), so that text a model will be trained
    on tokenizes compactly. `vision_init`: one of `VISION_INITS`. The same `seed` gives identical weights; the
    tokenizer and processor do not depend on it (only on `corpus`).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")
    if vision_init not in VISION_INITS:
        raise ValueError(f"unknown vision init {vision_init!r}; known inits: {', '.join(VISION_INITS)}")

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    check_output_folder(Path(out_dir), ("model.safetensors",), "a tiny model")
    published = CHECKPOINTS / family
    tokenizer_config = _read_json(published / "tokenizer_config.json")
    tokenizer = _train_tokenizer(tokenizer_config, tuple(corpus))
    new_id = _id_mapping(tokenizer_config, tokenizer)

    config = _shrunk_config(family, _read_json(published / "config.json"), len(tokenizer), new_id)
    generation_config = _remap_ids(_read_json(published / "generation_config.json"), new_id)

    # A private RNG stream: building a model must not shift the caller's own random numbers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(AutoConfig.for_model(**config))
        if vision_init == "fan_in":
            _fan_in_init(model)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    # A one-shard "Writing model shards" bar is noise for a sub-megabyte model; restore the setting afterwards.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    # save_pretrained wrote both configs in transformers' current layout; a real checkpoint has the published one.
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", generation_config)
    for name in _AS_PUBLISHED:
        if (published / name).is_file():
            (out / name).write_bytes((published / name).read_bytes())
    return out


def _fan_in_init(model: Any) -> None:
    """Redraw the weights of every linear and convolution layer of the vision path with std 1/sqrt(fan_in)."""
    import torch

    vision = [module for name, module in model.model.named_children() if name in _VISION_MODULES]
    with torch.no_grad():
        for part in vision:
            for layer in part.modules():
                if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
                    fan_in = layer.weight[0].numel()  # inputs (times kernel size) that feed one output
                    layer.weight.normal_(0.0, fan_in ** -0.5)


def _train_tokenizer(tokenizer_config: dict[str, Any], corpus: tuple[str, ...] = ()) -> PreTrainedTokenizerBase:
    """A small byte-level BPE with the checkpoint's added tokens, in the checkpoint's order, after the vocabulary."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # The full byte alphabet keeps every string encodable, whatever the corpus missed.
    trainer = trainers.BpeTrainer(vocab_size=_BPE_VOCAB_WITH_CORPUS if corpus else _BPE_VOCAB,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_CORPUS + corpus, trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    # The JSON stores merges as [left, right] lists, but the BPE inside Qwen2Tokenizer only accepts tuples.
    merges = [tuple(pair) for pair in trained["merges"]]

    # transformers' own Qwen2Tokenizer (every supported family ships one): it adds Qwen's pre-tokenizer and saves
    # with tokenizer_class Qwen2Tokenizer, so AutoProcessor reloads the class the real checkpoints use.
    tokenizer = Qwen2Tokenizer(vocab=trained["vocab"], merges=merges, unk_token=None, bos_token=None,
                               eos_token=None, pad_token=None,
                               model_max_length=tokenizer_config.get("model_max_length", 32768))
    # Added first, in the published order, so that the special tokens take the published order of ids too.
    added = sorted(tokenizer_config["added_tokens_decoder"].items(), key=lambda item: int(item[0]))
    for _, token in added:
        tokenizer.add_tokens([AddedToken(token["content"], special=token["special"], normalized=False)],
                             special_tokens=token["special"])
    tokenizer.add_special_tokens({
        "eos_token": tokenizer_config["eos_token"],
        "pad_token": tokenizer_config["pad_token"],
        "additional_special_tokens": tokenizer_config.get("additional_special_tokens", []),
    })
    return tokenizer


def _id_mapping(tokenizer_config: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[int, int]:
    """Published id -> id of the same token in the tiny vocabulary."""
    return {int(old): tokenizer.convert_tokens_to_ids(token["content"])
            for old, token in tokenizer_config["added_tokens_decoder"].items()}


def _remap_ids(section: dict[str, Any], new_id: dict[int, int]) -> dict[str, Any]:
    """Every *_token_id / *_token_index field (a single id or a list) mapped to the tiny vocabulary."""
    def remap(value: Any) -> Any:
        return [remap(v) for v in value] if isinstance(value, list) else new_id.get(value, value)

    return {key: remap(value) if key.endswith(("_token_id", "_token_index")) and value is not None else value
            for key, value in section.items()}


def _shrunk_config(family: str, published: dict[str, Any], tokenizer_size: int,
                   new_id: dict[int, int]) -> dict[str, Any]:
    """The published config with the family's widths and depths, the tiny vocabulary and its token ids."""
    config = _remap_ids(json.loads(json.dumps(published)), new_id)
    shrink = _SHRINK[family]
    # Qwen2-VL and Qwen2.5-VL publish their text settings at the top level; the others nest them in text_config.
    text = config.get("text_config", config)
    old_head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    text.update(shrink["text"])
    # A vocabulary that is a multiple of 64 keeps the embedding shapes friendly to kernels.
    text["vocab_size"] = -(-tokenizer_size // 64) * 64
    if text is not config:
        text.update(_remap_ids(text, new_id))
    if "num_hidden_layers" in text and "layer_types" in text:
        text["layer_types"] = text["layer_types"][: text["num_hidden_layers"]]
    # M-RoPE splits each head's rotary frequency pairs into time, height and width sections; they shrink with the
    # head, in the same proportions.
    rope = text.get("rope_scaling") or config.get("rope_scaling")
    if rope and "mrope_section" in rope:
        rope["mrope_section"] = _shrink_sections(rope["mrope_section"], old_head_dim // 2, _HEAD_DIM // 2)
    config["vision_config"].update(shrink["vision"])
    return config


def _shrink_sections(sections: list[int], old_total: int, new_total: int) -> list[int]:
    scaled = [s * new_total // old_total for s in sections]
    if sum(scaled) != new_total or any(s * new_total % old_total for s in sections):
        raise ValueError(f"mrope sections {sections} do not scale from {old_total} to {new_total} pairs")
    return scaled


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
