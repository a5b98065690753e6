"""The tiny-model builder: every family saves a folder that the Auto classes reload and that answers about a video."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.video_utils import VideoMetadata

from stages.offline.tiny_model import DEFAULT_FAMILY, FAMILIES, build_tiny_model

NUM_FRAMES = 8
FPS = 2.0


def moving_square(num_frames: int = NUM_FRAMES, size: int = 64) -> np.ndarray:
    """A dark clip with a 16-px square that drifts down and right and cycles red, green, blue."""
    frames = np.full((num_frames, size, size, 3), 20, dtype=np.uint8)
    free = size - 16
    for i in range(num_frames):
        x, y = (3 * i) % free, (2 * i) % free
        frames[i, y : y + 16, x : x + 16, i % 3] = 255
    return frames


def metadata(num_frames: int = NUM_FRAMES) -> VideoMetadata:
    return VideoMetadata(total_num_frames=num_frames, fps=FPS, frames_indices=list(range(num_frames)))


def video_prompt(processor, question: str = "What moves in the video?") -> str:
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    """One seed-0 build per family, reloaded the way the rest of savi loads models."""
    family = request.param
    folder = build_tiny_model(tmp_path_factory.mktemp(family), family=family, seed=0)
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return family, folder, processor, model


def video_inputs(processor, texts: list[str], **kwargs) -> dict:
    clips = [moving_square() for _ in texts]
    return processor(
        text=texts, videos=clips, video_metadata=[metadata() for _ in texts], return_tensors="pt", **kwargs
    )


@pytest.mark.slow
def test_generates_from_a_video(tiny):
    family, _, processor, model = tiny
    inputs = video_inputs(processor, [video_prompt(processor)])

    video_token_id = processor.video_token_id
    assert (inputs["input_ids"] == video_token_id).sum() > 0, f"{family}: no video placeholders in the prompt"

    torch.manual_seed(0)  # some checkpoints' shipped generation configs sample
    output = model.generate(**inputs, max_new_tokens=8)
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    assert 0 < len(new_tokens) <= 8
    eos = model.generation_config.eos_token_id
    assert len(new_tokens) == 8 or new_tokens[-1] in (eos if isinstance(eos, list) else [eos])
    # The decoded text is made of the generated tokens, in order, with the special ones left out. (A token that is
    # part of a multi-byte character decodes to U+FFFD alone, so only whole tokens are looked for.)
    text = processor.decode(new_tokens, skip_special_tokens=True)
    special = set(processor.tokenizer.all_special_ids)
    found, position = 0, 0
    for token in new_tokens:
        piece = processor.decode([token])
        if token in special:
            assert piece not in text, f"{family}: special token {piece!r} in the decoded text {text!r}"
        elif piece and "\ufffd" not in piece:
            at = text.find(piece, position)
            assert at >= 0, f"{family}: token {piece!r} missing from the decoded text {text!r}"
            found, position = found + 1, at + len(piece)
    assert found > 0


@pytest.mark.slow
def test_video_pixels_condition_the_logits(tiny):
    _, _, processor, model = tiny
    inputs = video_inputs(processor, [video_prompt(processor)])
    blank = {**inputs, "pixel_values_videos": torch.zeros_like(inputs["pixel_values_videos"])}

    with torch.no_grad():
        seen = model(**inputs).logits[:, -1]
        unseen = model(**blank).logits[:, -1]
    assert not torch.allclose(seen, unseen)


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_weights(tiny, tmp_path):
    family, folder, _, _ = tiny
    original = load_file(folder / "model.safetensors")
    again = load_file(build_tiny_model(tmp_path / "again", family=family, seed=0) / "model.safetensors")
    other = load_file(build_tiny_model(tmp_path / "other", family=family, seed=1) / "model.safetensors")

    assert original.keys() == again.keys() == other.keys()
    assert all(torch.equal(original[name], again[name]) for name in original)
    assert not all(torch.equal(original[name], other[name]) for name in original)


@pytest.mark.slow
def test_left_padded_batch_matches_single_prompts(tiny):
    # The model runtime batches prompts of different lengths; greedy answers must not depend on the padding.
    _, _, processor, model = tiny
    texts = [video_prompt(processor, "Why?"), video_prompt(processor, "Describe what happens in the video, please.")]

    batch = video_inputs(processor, texts, padding=True, padding_side="left")
    assert (batch["attention_mask"][:, 0] == 0).any(), "the shorter prompt should be padded on the left"
    # Greedy explicitly: the checkpoints' shipped generation configs sample (Qwen3-VL's with top_k=20).
    batched = model.generate(**batch, max_new_tokens=4, do_sample=False)[:, batch["input_ids"].shape[1] :]
    for row, text in enumerate(texts):
        single = video_inputs(processor, [text])
        alone = model.generate(**single, max_new_tokens=4, do_sample=False)[0, single["input_ids"].shape[1] :]
        assert batched[row].tolist() == alone.tolist()


def test_unknown_family_names_the_known_ones(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(ValueError) as error:
        build_tiny_model(out, family="gpt2")
    assert all(family in str(error.value) for family in FAMILIES)
    assert not out.exists()


@pytest.mark.slow
def test_the_built_folder_is_a_model_of_its_family(tiny):
    family, folder, _, model = tiny
    assert json.loads((folder / "config.json").read_text())["model_type"] == family
    assert model.config.model_type == family


@pytest.mark.slow
def test_without_a_family_the_default_family_is_built(tmp_path):
    assert DEFAULT_FAMILY in FAMILIES
    folder = build_tiny_model(tmp_path / "default")
    assert json.loads((folder / "config.json").read_text())["model_type"] == DEFAULT_FAMILY


def test_importing_the_builder_does_not_import_torch():
    # `savi --help` imports this module; torch and transformers must wait until a model is actually built.
    code = "\n".join(
        [
            "import sys",
            "import stages.offline.tiny_model",
            "print([name for name in ('torch', 'transformers', 'tokenizers') if name in sys.modules])",
        ]
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_settings_name_the_families_the_builder_knows_default_first():
    from stages.core.settings import TINY_FAMILIES

    assert TINY_FAMILIES == tuple(FAMILIES) and TINY_FAMILIES[0] == DEFAULT_FAMILY
