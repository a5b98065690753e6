"""The model runtime on tiny real models: batching, the round-r policy, 4-bit, OOM halving, clear errors."""

import logging

import pytest
import torch

from stages.core.config import read_config, resolve_model
from stages.core.errors import SaviError
from stages.core.model import Decoding, ModelConfig, Policy, adapter_for_round, load_video

pytestmark = pytest.mark.slow

PROMPTS = ["What moves in the video?", "Which colour is the square?", "Where does the shape go at the end?"]


def videos_of(run):
    return [load_video(run, s) for s in run.artifact("samples").read()]


def generate(policy, videos, temperature=0.0, max_new_tokens=12):
    return policy.generate(videos, PROMPTS, keys=[f"k{i}" for i in range(3)],
                           decoding=Decoding(max_new_tokens=max_new_tokens, temperature=temperature))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_batched_generation_with_left_padding_equals_one_at_a_time(family, tiny_model, sampled_run):
    videos = videos_of(sampled_run)
    batched = generate(Policy.load(ModelConfig(id=str(tiny_model(family)), batch_size=3)), videos)
    single = generate(Policy.load(ModelConfig(id=str(tiny_model(family)), batch_size=1)), videos)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.num_tokens for g in batched] == [g.num_tokens for g in single]
    assert all(0 < g.num_tokens <= 12 for g in batched)


def test_sampling_is_reproducible_per_item_key(tiny_model, sampled_run):
    policy = Policy.load(ModelConfig(id=str(tiny_model()), batch_size=3))
    videos = videos_of(sampled_run)
    first = generate(policy, videos, temperature=1.0)
    again = generate(policy, videos, temperature=1.0)
    assert first == again
    other_keys = policy.generate(videos, PROMPTS, keys=["x0", "x1", "x2"],
                                 decoding=Decoding(max_new_tokens=12, temperature=1.0))
    assert other_keys != first


def test_the_round_2_policy_is_the_base_plus_round_1s_adapter(tiny_model, sampled_run):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    with pytest.raises(SaviError, match=r"round 2 starts from the policy trained in round 1.*savi dpo --run t "
                                        r"--round 1"):
        adapter_for_round(sampled_run, 2)
    assert adapter_for_round(sampled_run, 1) is None

    # A round-1 adapter with non-zero weights, saved where `savi dpo --round 1` puts it.
    base = AutoModelForImageTextToText.from_pretrained(tiny_model())
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, init_lora_weights=False,
                                           target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    lora.save_pretrained(sampled_run.round_dir(1) / "adapter")

    adapter = adapter_for_round(sampled_run, 2)
    assert adapter == sampled_run.round_dir(1) / "adapter"
    videos = videos_of(sampled_run)
    base_out = generate(Policy.load(ModelConfig(id=str(tiny_model()))), videos)
    policy = Policy.load(ModelConfig(id=str(tiny_model())), adapter)
    assert policy.name.endswith("+round=1")
    assert [g.text for g in generate(policy, videos)] != [g.text for g in base_out]


def test_sampling_ignores_the_decoding_defaults_a_checkpoint_ships(tiny_model, sampled_run):
    import json

    # The tiny model carries Qwen2.5-VL-7B-Instruct's generation_config.json: top_k=1 and top_p=0.001 would make
    # every sample the greedy reply, and its repetition penalty would apply everywhere.
    shipped = json.loads((tiny_model() / "generation_config.json").read_text())
    assert (shipped["top_k"], shipped["top_p"], shipped["repetition_penalty"]) == (1, 0.001, 1.05)
    policy = Policy.load(ModelConfig(id=str(tiny_model()), batch_size=5))
    video = videos_of(sampled_run)[0]
    samples = policy.generate([video] * 5, [PROMPTS[0]] * 5, keys=[f"s{k}" for k in range(5)],
                              decoding=Decoding(max_new_tokens=12, temperature=1.0))
    assert len({g.text for g in samples}) == 5
    config = policy.model.generation_config
    assert (config.top_k, config.top_p, config.repetition_penalty, config.do_sample) != (1, 0.001, 1.05, True)


def test_an_items_sample_does_not_depend_on_its_batch(tiny_model, sampled_run):
    videos = videos_of(sampled_run)
    together = generate(Policy.load(ModelConfig(id=str(tiny_model()), batch_size=3)), videos, temperature=1.0)
    alone = generate(Policy.load(ModelConfig(id=str(tiny_model()), batch_size=1)), videos, temperature=1.0)
    assert together == alone


def test_out_of_memory_halves_the_batch_after_freeing_the_failed_one_and_samples_the_same(
        tiny_model, sampled_run, monkeypatch):
    import weakref

    policy = Policy.load(ModelConfig(id=str(tiny_model()), batch_size=3))
    videos = videos_of(sampled_run)
    expected = generate(policy, videos, temperature=1.0)
    real = Policy._generate_batch
    failed_batches = []

    def tight_memory(error):
        def run_batch(self, videos, prompts, *args):
            if len(prompts) > 1:  # a GPU that only fits one prompt at a time
                activations = torch.ones(1024)  # what the failed attempt had on the GPU
                failed_batches.append(weakref.ref(activations))
                raise error("CUDA out of memory. Tried to allocate 2.00 GiB")
            assert all(ref() is None for ref in failed_batches), "the failed batch is still in memory"
            return real(self, videos, prompts, *args)
        return run_batch

    # torch raises OutOfMemoryError; bitsandbytes and cuBLAS raise a RuntimeError that says so.
    for error in (torch.OutOfMemoryError, RuntimeError):
        policy.batch_size = 3
        monkeypatch.setattr(Policy, "_generate_batch", tight_memory(error))
        assert generate(policy, videos, temperature=1.0) == expected
        assert policy.batch_size == 1
    assert len(failed_batches) == 2

    monkeypatch.setattr(Policy, "_generate_batch", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError()))
    with pytest.raises(SaviError, match="out of GPU memory with one prompt per batch"):
        generate(policy, videos)
    monkeypatch.setattr(Policy, "_generate_batch", lambda *a: (_ for _ in ()).throw(RuntimeError("shape bug")))
    with pytest.raises(RuntimeError, match="shape bug"):  # other errors are not mistaken for out-of-memory
        generate(policy, videos)


def test_4bit_loads_and_generates_on_cpu_with_a_warning(tiny_model, sampled_run, caplog):
    import bitsandbytes as bnb

    with caplog.at_level(logging.WARNING, logger="savi"):
        policy = Policy.load(ModelConfig(id=str(tiny_model()), load_in_4bit=True, device="cpu"))
    assert "4-bit without CUDA runs on bitsandbytes' CPU kernels" in caplog.text
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.model.modules())
    outputs = generate(policy, videos_of(sampled_run))
    assert all(g.num_tokens > 0 for g in outputs)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava_onevision"])
def test_4bit_quantises_the_language_model_only(family, tiny_model):
    import bitsandbytes as bnb

    model = Policy.load(ModelConfig(id=str(tiny_model(family)), load_in_4bit=True, device="cpu")).model
    quantised = [name for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised and all(".language_model." in name for name in quantised)
    vision = [m for name, m in model.named_modules()
              if name.startswith(("model.visual", "model.vision_tower", "model.multi_modal_projector"))]
    assert vision and not any(isinstance(m, bnb.nn.Linear4bit) for m in vision)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava_onevision"])
def test_every_4bit_layer_fits_the_avx512_bf16_repacking_of_bitsandbytes(family, tiny_model):
    """On CPUs with AVX-512 BF16, bitsandbytes repacks 4-bit weights for inference in blocks of 64 inputs. This
    drives that repacking on every layer whatever this machine's CPU (a private function of the pinned version)."""
    import copy

    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    model = Policy.load(ModelConfig(id=str(tiny_model(family)), load_in_4bit=True, device="cpu")).model
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        packed, state = _convert_weight_packed_for_cpu(layer.weight.data.clone(),
                                                       copy.deepcopy(layer.weight.quant_state))
        assert packed.shape == (layer.out_features, layer.in_features // 2) and state.packing_format_for_cpu


def test_a_reasoning_checkpoint_is_refused(tiny_model, tmp_path):
    import json
    import shutil

    # Qwen3-VL's Thinking checkpoints open the assistant turn with <think> in their generation prompt.
    folder = shutil.copytree(tiny_model("qwen3_vl"), tmp_path / "thinking")
    template = json.loads((folder / "chat_template.json").read_text())
    generation_prompt = "{{- '<|im_start|>assistant\\n' }}"
    assert generation_prompt in template["chat_template"]
    template["chat_template"] = template["chat_template"].replace(
        generation_prompt, "{{- '<|im_start|>assistant\\n<think>\\n' }}")
    (folder / "chat_template.json").write_text(json.dumps(template))
    with pytest.raises(SaviError, match=r"reasoning \('Thinking'\) checkpoint.*Instruct variant"):
        Policy.load(ModelConfig(id=str(folder)))


def test_an_unknown_model_is_one_clear_error(tmp_path):
    with pytest.raises(SaviError, match=r"cannot load model '.*nowhere'.*savi tiny-model DIR"):
        Policy.load(ModelConfig(id=str(tmp_path / "nowhere")))


def test_asking_for_a_gpu_without_one_is_a_clear_error(tiny_model):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SaviError, match="CUDA is not available here; use --device cpu"):
        Policy.load(ModelConfig(id=str(tiny_model()), device="cuda"))


def test_a_run_keeps_one_model(sampled_run, tiny_model):
    folder = str(tiny_model())
    cfg = resolve_model(sampled_run, {"id": folder})
    assert cfg.id == folder and "model" not in read_config(sampled_run)  # recorded once it has loaded
    Policy.load(cfg, run=sampled_run)
    assert read_config(sampled_run)["model"]["id"] == folder
    assert resolve_model(sampled_run, {"id": None}).id == folder
    with pytest.raises(SaviError, match=r"run 't' aligns .* start a new run for 'other/model'"):
        resolve_model(sampled_run, {"id": "other/model"})


def test_score_labels_is_the_log_probability_of_each_labels_first_token(tiny_model, sampled_run):
    videos = videos_of(sampled_run)
    labels = [[("A",), ("B",), ("C",)], [("yes", "Yes"), ("no", "No")], [("A",), ("B",)]]
    batched = Policy.load(ModelConfig(id=str(tiny_model()), batch_size=3)).score_labels(videos, PROMPTS, labels)
    policy = Policy.load(ModelConfig(id=str(tiny_model()), batch_size=1))
    single = policy.score_labels(videos, PROMPTS, labels)
    assert [len(s) for s in batched] == [3, 2, 2]
    assert torch.allclose(torch.tensor(sum(batched, [])), torch.tensor(sum(single, [])), atol=1e-4)

    # The same number from a plain forward pass over the whole sequence, read at the last position.
    tokenizer = policy.processor.tokenizer
    inputs = policy._inputs(videos[1:2], PROMPTS[1:2])
    with torch.inference_mode():
        logprobs = torch.log_softmax(policy.model(**inputs).logits[0, -1].float(), dim=-1)
    for option, spellings in enumerate(labels[1]):
        ids = sorted({tokenizer.encode(s, add_special_tokens=False)[0] for s in spellings})
        assert single[1][option] == pytest.approx(torch.logsumexp(logprobs[ids], 0).item(), abs=1e-4)
    assert all(s < 0 for row in single for s in row)


def test_rendered_labels_are_scored_where_they_differ_after_the_tokens_they_share(tiny_model, sampled_run):
    policy = Policy.load(ModelConfig(id=str(tiny_model()), batch_size=1))
    tokenizer = policy.processor.tokenizer
    rendered = [("(A)",), ("(B)",), ("(C)",)]
    spelled = [tokenizer.encode(label, add_special_tokens=False) for (label,) in rendered]
    # Qwen's pre-tokenizer splits punctuation from letters: "(", "A", ")".
    shared = 1
    start = tokenizer.decode(spelled[0][:shared])
    assert start == "(" and len({ids[shared] for ids in spelled}) == 3
    scores = policy.score_labels(videos_of(sampled_run)[:1], PROMPTS[:1], [rendered])[0]
    # The same numbers from a plain forward pass over the prompt followed by the shared start of the labels.
    inputs = policy._inputs(videos_of(sampled_run)[:1], PROMPTS[:1], [start])
    with torch.inference_mode():
        logprobs = torch.log_softmax(policy.model(**inputs).logits[0, -1].float(), dim=-1)
    assert scores == pytest.approx([logprobs[ids[shared]].item() for ids in spelled], abs=1e-4)


def test_a_system_turn_given_comes_before_the_user_turn_in_the_models_input(tiny_model, sampled_run):
    policy = Policy.load(ModelConfig(id=str(tiny_model("qwen3_vl"))))
    tokenizer = policy.processor.tokenizer
    plain, told = (tokenizer.decode(policy._inputs(videos_of(sampled_run)[:1], PROMPTS[:1], system=system)
                                    ["input_ids"][0]) for system in (None, "You are a helpful assistant."))
    assert "You are a helpful assistant." not in plain   # Qwen3-VL's template has no default system turn
    assert told.index("system\nYou are a helpful assistant.") < told.index("user\n")


def test_labels_that_share_a_first_token_are_refused(tiny_model, sampled_run):
    policy = Policy.load(ModelConfig(id=str(tiny_model())))
    with pytest.raises(SaviError, match="share first tokens.*--protocol lmms-eval"):
        policy.score_labels(videos_of(sampled_run)[:1], PROMPTS[:1], [[("A",), ("A",)]])


@pytest.mark.parametrize("family,attention", [("qwen2_5_vl", "sdpa"), ("qwen2_vl", "sdpa"), ("qwen3_vl", "sdpa"),
                                              ("llava_onevision", "sdpa"), ("qwen2_5_vl", "eager")])
def test_score_replies_sums_each_whole_reply_as_the_model_writes_it_with_one_row_per_question(
        family, attention, tiny_model, sampled_run):
    from stages.core.model import chat, completion_text, reply_batch

    policy = Policy.load(ModelConfig(id=str(tiny_model(family)), device="cpu", batch_size=2))
    policy.model.set_attn_implementation(attention)  # sdpa takes the packed rows' mask as booleans, eager as floats
    rows = []
    language_model = policy.model.model.language_model
    language_model.register_forward_pre_hook(lambda module, args, kwargs: rows.append(len(kwargs["inputs_embeds"])),
                                             with_kwargs=True)
    first, second = videos_of(sampled_run)[:2]
    prompts = ["Which way does the square move?", "What colour is the shape?"]
    replies = [["It moves left.", "It moves right, to the edge."], ["Red.", "Blue, mostly.", "Green"]]
    scores = policy.score_replies([first, second], prompts, replies)
    assert rows == [2]  # both questions in one batch, each in one row with all its options

    # Each reply alone, unpadded, through a plain forward pass over every position.
    for video, prompt, options, got in zip([first, second], prompts, replies, scores):
        assert len(got) == len(options)
        for reply, score in zip(options, got):
            batch = reply_batch(policy.processor, [video], [chat(prompt)], [reply])
            mask = batch.pop("completion_mask")[0].bool()
            ids = batch["input_ids"][0]
            # The reply is scored as the model writes it: its text, then the template's end of turn.
            written = policy.processor.tokenizer.decode(ids[mask])
            assert written == completion_text(policy.processor, chat(prompt), reply) and written != reply
            with torch.inference_mode():
                logits = policy.model(**batch).logits[0, :-1].float()
            taken = torch.log_softmax(logits, dim=-1).gather(-1, ids[1:, None])[:, 0]
            assert score == pytest.approx(taken[mask[1:]].sum().item(), abs=2e-3)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava_onevision"])
def test_reply_batch_processes_a_repeated_prompt_and_video_once_for_the_same_tensors(family, tiny_model,
                                                                                      sampled_run, monkeypatch):
    """A pair's rows and a question's options repeat one prompt and video; the processor sees each once, and the
    batch is the one of processing every row."""
    import copy

    from stages.core import model as runtime
    from stages.core.model import chat, reply_batch

    processor = Policy.load(ModelConfig(id=str(tiny_model(family)), device="cpu")).processor
    first, second = videos_of(sampled_run)[:2]
    long, short = chat("Which way does the square move, and how fast?"), chat("What colour?")
    rows = [(first, long, "Left."), (second, short, "Red, mostly."), (first, long, "Right, to the edge."),
            (first, short, "Blue."), (second, short, "Green.")]
    processed = []
    real_inputs = runtime.processor_inputs
    monkeypatch.setattr(runtime, "processor_inputs",
                        lambda p, videos, texts: processed.append(len(videos)) or real_inputs(p, videos, texts))

    shared = reply_batch(processor, *zip(*rows))
    # Copies of the videos are other videos to it: every row is processed.
    every = reply_batch(processor, [copy.copy(video) for video, _, _ in rows], *list(zip(*rows))[1:])
    assert processed == [3, 5]
    assert shared.keys() == every.keys() and "pixel_values_videos" in shared
    for key in shared:
        assert torch.equal(shared[key], every[key]), key


def test_score_replies_gives_each_option_a_row_where_the_attention_takes_no_mask(tiny_model, sampled_run,
                                                                               monkeypatch):
    """The same scores either way, under an adapter too (peft wraps the model whose positions the rows keep)."""
    from builders import save_random_adapter

    from stages.core import model as runtime

    save_random_adapter(sampled_run, 1, tiny_model)
    policy = Policy.load(ModelConfig(id=str(tiny_model()), device="cpu", batch_size=2),
                         sampled_run.round_dir(1) / "adapter")
    rows = []
    policy.model.get_base_model().model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(len(kwargs["inputs_embeds"])), with_kwargs=True)
    videos, prompts = videos_of(sampled_run)[:2], ["Which way does it move?", "What colour is it?"]
    replies = [["Left.", "Right, to the edge."], ["Red.", "Blue, mostly.", "Green"]]
    packed = policy.score_replies(videos, prompts, replies)
    monkeypatch.setattr(runtime, "takes_a_mask", lambda model: False)  # as under flash attention
    alone = policy.score_replies(videos, prompts, replies)
    assert rows == [2, 5]
    for got, expected in zip(alone, packed):
        assert got == pytest.approx(expected, abs=2e-3)
