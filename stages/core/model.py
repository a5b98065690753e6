"""The model runtime: load a video chat model (optionally 4-bit, optionally with a round's adapter) and generate.

Any video-capable chat VLM that loads through transformers' `AutoModelForImageTextToText` and `AutoProcessor`
should work; Qwen2.5-VL (the default), Qwen2-VL, Qwen3-VL and LLaVA-OneVision are tested. Frames come from the
run's frame store as decoded arrays plus their metadata (source frame count, fps and the sampled indices), so
the processor never decodes a video itself and every stage sees exactly the frames `savi sample` chose.

The policy of round r. Each round's LoRA adapter continues the previous round's (see `stages/dpo.py`), so it
holds the whole change from the base model. The policy of round r is therefore the base model plus one
adapter, that of round r-1, and the policy of round 1 is the base model itself. Compared with stacking one
adapter per round, this costs nothing at inference: one adapter, whatever the round. Compared with merging
into a copy of the base, it needs no extra disk. The price is that the accumulated change stays within one LoRA
rank.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import launch as launches
from stages.core.config import remember_model
from stages.core.errors import SaviError, first_line
from stages.core.hub import hub_host, offline, offline_declared, reachable
from stages.core.packing import pack_replies, takes_a_mask
from stages.core.records import Sample
from stages.core.settings import ModelConfig
from stages.core.store import Run, file_sha256, fingerprint
from stages.core.video import load_frames

log = logging.getLogger("savi")


@dataclass
class Video:
    """A video as the processor takes it: upright RGB frames and where they came from."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    total_frames: int
    fps: float
    indices: list[int]
    order: list[int] = field(default_factory=list)  # positions of the source frames shown ([]: all, in order)

    @classmethod
    def of(cls, frames: np.ndarray, total_frames: int, fps: float, indices: list[int]) -> Video:
        if len(frames) == 1:
            # Video processors group frames in pairs (temporal patches); Qwen3-VL refuses a single frame.
            frames, indices = np.concatenate([frames, frames]), list(indices) * 2
        return cls(frames=frames, total_frames=total_frames, fps=fps, indices=list(indices))

    def reordered(self, order: list[int]) -> Video:
        """The frames at positions `order`, shown in that order at the sampled times: a permutation
        (`temporal.frame_order`) keeps every time and moves the pictures; a subset (keyframes, a cut) keeps the
        times of the frames it keeps. `order` records the positions in the source frames, through every step."""
        times = sorted(self.indices[i] for i in order)
        video = Video.of(self.frames[order], self.total_frames, self.fps, times)
        video.order = [self.order[i] for i in order] if self.order else list(order)
        return video

@dataclass(frozen=True)
class Generation:
    text: str
    num_tokens: int
    finished: bool  # stopped at end-of-sequence, not at max_new_tokens


@dataclass(frozen=True)
class Decoding:
    """Every decoding setting savi uses. A checkpoint ships its own defaults in generation_config.json
    (Qwen2.5-VL-7B-Instruct's are top_k=1, top_p=0.001, temperature=0.1, repetition_penalty=1.05, which make any
    "sampling" greedy), and generate() keeps whatever a caller leaves unset; so savi sets all of these itself and
    drops the shipped defaults when it loads a model."""

    max_new_tokens: int
    temperature: float = 0.0
    """0 decodes greedily."""
    top_p: float = 0.95
    """Nucleus sampling (1: off); used only when sampling."""
    top_k: int = 0
    """Top-k sampling (0: off); used only when sampling."""
    repetition_penalty: float = 1.0

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def record(self) -> dict[str, Any]:
        """The effective settings, as a manifest records them."""
        settings = asdict(self)
        if not self.sampling:
            del settings["top_p"], settings["top_k"]
        return {**settings, "sampler": "seeded per item" if self.sampling else "greedy"}



def load_video(run: Run, sample: Sample) -> Video:
    """A sampled video's stored frames. Frames that are gone or damaged (deleted, cut short by something outside
    savi) are a one-line error naming the video and how to sample it again."""
    if sample.status != "ok" or not sample.frames_dir:
        raise ValueError(f"video {sample.video_id} was not sampled ({sample.error})")
    folder = run.path / sample.frames_dir
    try:
        frames = load_frames(folder)
        if len(frames) != len(sample.frame_indices):
            raise ValueError(f"{len(frames)} frames of {len(sample.frame_indices)}")
    except (OSError, ValueError) as e:
        raise SaviError(f"the frames of {sample.path} in {folder} cannot be read ({first_line(e, 120)}); delete "
                        f"that folder and run `savi sample {sample.path} --run {run.name}` to sample them again"
                        ) from None
    return Video.of(frames, sample.num_frames or len(frames), sample.fps or 1.0, list(sample.frame_indices))


def adapter_fingerprint(adapter: Path | None) -> str | None:
    """Identifies an adapter by its weights, so redoing an earlier round's training invalidates later rounds."""
    if adapter is None:
        return None
    weights = sorted(adapter.glob("adapter_model.*"))
    return fingerprint([file_sha256(w) for w in weights])


def adapter_for_round(run: Run, round: int) -> Path | None:
    """The adapter that makes the policy of `round`: none for round 1, round r-1's after that."""
    if round < 1:
        raise SaviError(f"rounds start at 1 (round 0 is the base model, used only by eval); got --round {round}")
    try:
        return trained_adapter(run, round - 1)
    except SaviError as e:
        raise SaviError(f"round {round} starts from the policy trained in round {round - 1}, but {e}") from None


def trained_adapter(run: Run, round: int) -> Path | None:
    """The adapter trained in `round`, which makes the model M(round); none for round 0, the base model."""
    if round == 0:
        return None
    adapter = run.round_dir(round) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        trained = trained_rounds(run)
        have = f"rounds with a trained adapter: {', '.join(map(str, trained))}" if trained else "no round is trained"
        raise SaviError(f"round {round} of run '{run.name}' has no trained adapter ({have}); "
                        f"run `savi dpo --run {run.name} --round {round}` first")
    if not list(adapter.glob("adapter_model.*")):
        raise SaviError(f"the adapter of round {round} in {adapter} has no weights (adapter_model.safetensors); "
                        f"redo it with `savi dpo --run {run.name} --round {round} --force`")
    return adapter


def trained_rounds(run: Run) -> list[int]:
    """The rounds of a run whose training finished with an adapter."""
    return [r for r in run.rounds() if (run.round_dir(r) / "adapter" / "adapter_config.json").is_file()]


def load_adapter(model: Any, adapter: Path, *, trainable: bool = False) -> Any:
    """`model` with a saved LoRA adapter on it; a damaged adapter folder is a one-line error, not a traceback."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    except Exception as e:  # peft, safetensors and huggingface_hub each raise their own kinds
        round_dir = adapter.parent  # <run>/round=<r>/adapter
        raise SaviError(f"cannot load the adapter in {adapter} ({type(e).__name__}: {first_line(e)}); it is "
                        f"damaged: redo it with `savi dpo --run {round_dir.parent.name} --round "
                        f"{round_dir.name.removeprefix('round=')} --force`") from None


class Policy:
    """A loaded model and processor that turns (video, prompt) pairs into text, in batches."""

    def __init__(self, model: Any, processor: Any, cfg: ModelConfig, adapter: Path | None):
        self.model, self.processor, self.cfg, self.adapter = model, processor, cfg, adapter
        self.batch_size = cfg.batch_size

    @property
    def name(self) -> str:
        """How rows record the model: the base id, plus the adapter that was on it."""
        return self.cfg.id if self.adapter is None else f"{self.cfg.id}+{self.adapter.parent.name}"

    @classmethod
    def load(cls, cfg: ModelConfig, adapter: Path | None = None, *, run: Run | None = None) -> Policy:
        import torch

        model, processor = load_model(cfg, run=run)
        if adapter is not None:
            model = load_adapter(model, adapter)
        model.eval()
        torch.manual_seed(cfg.seed)
        return cls(model, processor, cfg, adapter)

    def generate(self, videos: Sequence[Video], prompts: Sequence[str], *, keys: Sequence[str],
                 decoding: Decoding, system: str | None = None) -> list[Generation]:
        """Generate one answer per (video, prompt), `batch_size` at a time, after a system turn if given.

        `keys` name the items. When sampling, each item draws from its own random stream, seeded from the run seed
        and its key: an item gets the same sample whatever batch it shares, however large, and wherever it sits in
        it (so a resumed run, a batch halved after out-of-memory, or another process draws the same).
        """
        def generate_batch(videos, prompts, keys):
            return self._generate_batch(videos, prompts, keys, decoding, system)

        return self._in_batches(generate_batch, videos, prompts, keys)

    def score_labels(self, videos: Sequence[Video], prompts: Sequence[str],
                     labels: Sequence[Sequence[Sequence[str]]]) -> list[list[float]]:
        """For each (video, prompt), the log-probability that the reply starts with each option's label.

        `labels[i][k]` holds the spellings of option k of prompt i, e.g. ("A",), ("(A)",) or ("yes", "Yes"); an
        option scores the log of the summed probability of its spellings' first distinct tokens. Tokens that
        every spelling begins with (the "(" of "(A)" in most tokenizers) are given as the reply's start, so the
        label is scored where the options differ, as rendered, not as a bare letter. One forward pass per
        prompt, and no text to parse: the answer is always one of the options.
        """
        token_ids = [self._label_tokens(options) for options in labels]
        return self._in_batches(self._score_batch, videos, prompts, token_ids)

    def score_replies(self, videos: Sequence[Video], prompts: Sequence[str],
                      replies: Sequence[Sequence[str]]) -> list[list[float]]:
        """For each (video, prompt), the log-probability of each whole reply in `replies[i]`, summed over its
        tokens (end of turn included): lmms-eval's log-likelihood scoring of multiple choice, for benchmarks whose
        options are full answers. Where the attention takes a mask, a question's options run in one row after its
        prompt (`pack_replies`): the prompt and its video once, whatever the number of options."""
        return self._in_batches(self._score_replies_batch, videos, prompts, replies)

    def _in_batches(self, run_batch, videos, prompts, per_item) -> list[Any]:
        """Run `run_batch` over the items, `batch_size` at a time; on GPU out-of-memory, halve the batch (and
        every later one) and go on."""
        results: list[Any] = []
        start = 0
        while start < len(prompts):
            end = min(start + self.batch_size, len(prompts))
            done = _unless_out_of_memory(run_batch, videos[start:end], prompts[start:end], per_item[start:end])
            if done is not None:
                results += done
                start = end
                continue
            if end - start == 1:
                raise SaviError("out of GPU memory with one prompt per batch; sample fewer or smaller frames "
                                "(--frames, --max-side) or use --load-in-4bit")
            self.batch_size = max(1, (end - start) // 2)
            log.warning(f"out of GPU memory: batch size lowered to {self.batch_size}")
        return results

    def _inputs(self, videos: Sequence[Video], prompts: Sequence[str],
                reply_starts: Sequence[str] | None = None, system: str | None = None) -> Any:
        """The model's inputs for each (video, prompt), after a system turn if given, the assistant's turn opened
        (and begun with `reply_starts[i]` where given)."""
        texts = [self.processor.apply_chat_template(chat(prompt, system), tokenize=False, add_generation_prompt=True)
                 for prompt in prompts]
        if reply_starts is not None:
            texts = [text + start for text, start in zip(texts, reply_starts, strict=True)]
        return processor_inputs(self.processor, videos, texts).to(self.model.device)

    def _generate_batch(self, videos, prompts, keys, decoding: Decoding, system: str | None = None) -> list[Generation]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        inputs = self._inputs(videos, prompts, system=system)
        # Greedy search over the sampler's perturbed scores: with no sampler it is plain greedy decoding.
        sampler = [SeededSampler([batch_seed(self.cfg.seed, key) for key in keys], decoding, self.model.device)] \
            if decoding.sampling else []
        settings = GenerationConfig(
            do_sample=False, num_beams=1, max_new_tokens=decoding.max_new_tokens,
            repetition_penalty=decoding.repetition_penalty, bos_token_id=self.model.generation_config.bos_token_id,
            eos_token_id=self.model.generation_config.eos_token_id,
            pad_token_id=self.model.generation_config.pad_token_id)
        with torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=settings,
                                         logits_processor=LogitsProcessorList(sampler))
        new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
        stops = _stop_ids(self.model, self.processor)
        results = []
        for row in new_tokens:
            stop_at = next((i for i, t in enumerate(row) if t in stops), None)
            kept = row if stop_at is None else row[:stop_at]
            text = self.processor.tokenizer.decode(kept, skip_special_tokens=True).strip()
            results.append(Generation(text=text, num_tokens=len(kept), finished=stop_at is not None))
        return results

    def _score_batch(self, videos, prompts, label_tokens) -> list[list[float]]:
        import torch

        inputs = self._inputs(videos, prompts, [start for start, _ in label_tokens])
        with torch.inference_mode():
            # Left padding puts every prompt's last token at the end; only its logits are needed.
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1, :].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        return [[torch.logsumexp(row[list(ids)], dim=0).item() for ids in options]
                for row, (_, options) in zip(logprobs, label_tokens)]

    def _score_replies_batch(self, videos, prompts, replies) -> list[list[float]]:
        import torch

        flat = [(video, prompt, reply) for video, prompt, options in zip(videos, prompts, replies)
                for reply in options]
        batch = reply_batch(self.processor, [f[0] for f in flat], [chat(f[1]) for f in flat], [f[2] for f in flat])
        batch = {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in batch.items()}
        batch["labels"] = batch["input_ids"].masked_fill(batch.pop("completion_mask") == 0, -100)
        groups, at = [], 0  # a question's options share its prompt
        for options in replies:
            groups.append(list(range(at, at + len(options))))
            at += len(options)
        if takes_a_mask(self.model):  # one row per question: its prompt and video once, then every option
            inputs, unpack = pack_replies(self.model, batch, groups)
        else:
            inputs, unpack = batch, lambda values: values
        labels = inputs.pop("labels")[:, 1:]
        # Only the logits that predict reply tokens (the columns where some row has one): never the whole vocabulary
        # at every video token, nor at the columns between one row's replies and another's.
        columns = (labels != -100).any(dim=0).nonzero()[:, 0]
        with torch.inference_mode():
            logits = self.model(**inputs, use_cache=False, logits_to_keep=columns).logits
        targets = labels[:, columns]
        taken = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        per_token = taken.new_zeros(labels.shape)
        per_token[:, columns] = taken.masked_fill(targets == -100, 0.0)
        totals = unpack(per_token).sum(dim=1).tolist()
        return [[totals[row] for row in group] for group in groups]

    def _label_tokens(self, options: Sequence[Sequence[str]]) -> tuple[str, list[set[int]]]:
        """The text every label begins with, and each option's first tokens after it."""
        tokenizer = self.processor.tokenizer
        spelled = [[tokenizer.encode(spelling, add_special_tokens=False) for spelling in spellings]
                   for spellings in options]
        every = [ids for spellings in spelled for ids in spellings]
        shared = 0
        while all(len(ids) > shared + 1 and ids[shared] == every[0][shared] for ids in every):
            shared += 1
        firsts = [{ids[shared] for ids in spellings} for spellings in spelled]
        for k, ids in enumerate(firsts):
            if any(ids & other for j, other in enumerate(firsts) if j != k):
                raise SaviError(f"the labels {[s for o in options for s in o]} share first tokens in this model's "
                                "tokenizer, so likelihood scoring cannot tell them apart; use --protocol "
                                "lmms-eval")
        return tokenizer.decode(every[0][:shared]), firsts


class SeededSampler:
    """A logits processor that turns greedy search into sampling, each row from its own random stream.

    Gumbel-max: the argmax of the warped log-probabilities plus independent Gumbel noise is an exact sample from
    the warped distribution. Drawing each row's noise from a generator seeded by that row alone makes its sample
    independent of the batch it is in, unlike generate()'s own sampling, which draws the whole batch from one
    stream. Temperature, top-k and top-p are transformers' own warpers, in generate()'s order.
    """

    def __init__(self, seeds: Sequence[int], decoding: Decoding, device: Any):
        import torch
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        self.warpers = [TemperatureLogitsWarper(decoding.temperature)]
        if decoding.top_k > 0:
            self.warpers.append(TopKLogitsWarper(decoding.top_k))
        if decoding.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(decoding.top_p))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for warper in self.warpers:
            scores = warper(input_ids, scores)
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device, dtype=torch.float32)
                               for g in self.generators])
        return scores.float() - torch.log(-torch.log(uniform))


def is_out_of_memory(error: BaseException) -> bool:
    """GPU out-of-memory, as torch raises it, or as cuBLAS and bitsandbytes do (a RuntimeError)."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and any(
        sign in message for sign in ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation"))


def _unless_out_of_memory(run_batch: Callable[..., list[Any]], *args: Any) -> list[Any] | None:
    """`run_batch(*args)`, or None when the GPU ran out of memory, with that attempt's memory released.

    The retry must not happen inside the `except` block: there the exception's traceback still holds the failed
    call's frames, and with them its inputs and activations, so a halved batch would run beside the failed one.
    """
    import torch

    try:
        return run_batch(*args)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


def load_model(cfg: ModelConfig, *, training: bool = False, run: Run | None = None) -> tuple[Any, Any]:
    """The model and processor of `cfg`, loaded once for inference and training alike; `run`, if given, then
    records it as its model.

    In 4-bit, only the language model's linear layers are quantised (`quantization_config`). The checkpoint's shipped
    decoding defaults are dropped (see `Decoding`). Reasoning ("Thinking") checkpoints are refused.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    quiet_transformers()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.load_in_4bit:
        if not device.startswith("cuda"):
            what = "4-bit training" if training else "4-bit"
            log.warning(f"{what} without CUDA runs on bitsandbytes' CPU kernels: correct, but slow")
        kwargs["quantization_config"] = quantization_config(dtype)
    if device.startswith("cuda"):
        kwargs["device_map"] = {"": device}
    try:
        with offline(_from_cache_only(cfg.id)):
            processor = AutoProcessor.from_pretrained(cfg.id)
            refuse_reasoning_checkpoint(processor, cfg.id)
            model = AutoModelForImageTextToText.from_pretrained(cfg.id, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise SaviError(f"cannot load model {cfg.id!r}: {first_line(e)}. Pass a local model folder "
                        "(`savi tiny-model DIR` makes one) or a Hub id of a video chat model") from None
    if not device.startswith("cuda") and not cfg.load_in_4bit:
        model = model.to(device)
    drop_shipped_decoding(model)
    if run is not None:
        remember_model(run, cfg.id)
    return model, processor


def checkpoint_facts(model_id: str) -> tuple[str, float]:
    """A checkpoint's model type and the repetition penalty its generation_config.json ships (1.0 without one),
    from its configuration files alone: what an evaluation protocol must know before the weights load."""
    from transformers import AutoConfig, GenerationConfig

    try:
        with offline(_from_cache_only(model_id)):
            model_type = AutoConfig.from_pretrained(model_id).model_type
            try:
                penalty = GenerationConfig.from_pretrained(model_id).repetition_penalty
            except OSError:  # no generation_config.json: generate()'s own default
                penalty = None
    except (OSError, ValueError) as e:
        raise SaviError(f"cannot load model {model_id!r}: {first_line(e)}. Pass a local model folder "
                        "(`savi tiny-model DIR` makes one) or a Hub id of a video chat model") from None
    return model_type, float(penalty or 1.0)


def _from_cache_only(model_id: str) -> bool:
    """Whether a hub model must load from this machine's Hugging Face cache: the hub cannot be reached (or offline
    mode is declared). Then a model that is not in the cache is a one-line error at once, instead of minutes of
    retried requests."""
    if Path(model_id).exists() or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model_id):
        return False  # a local folder (or a path that is not one: from_pretrained says so)
    host = hub_host()
    if not offline_declared() and host is not None and reachable(host):
        return False
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except ValueError:  # not a valid hub id either (a folder that does not exist, say)
        cached = False
    if not cached:
        raise SaviError(f"model {model_id!r} is neither a local folder nor in this machine's Hugging Face cache, and "
                        "the model hub cannot be reached from here: pass a local model folder, or download it where "
                        f"there is a network (`hf download {model_id}`) and copy ~/.cache/huggingface here")
    return True


def drop_shipped_decoding(model: Any) -> None:
    """Replace the checkpoint's generation_config.json by one that keeps only its special token ids."""
    from transformers import GenerationConfig

    shipped = model.generation_config
    model.generation_config = GenerationConfig(bos_token_id=shipped.bos_token_id, eos_token_id=shipped.eos_token_id,
                                               pad_token_id=shipped.pad_token_id)


def refuse_reasoning_checkpoint(processor: Any, model_id: str) -> None:
    """Reasoning checkpoints (Qwen3-VL-*-Thinking) open every reply with a hidden chain of thought (their
    generation prompt ends in `<think>`): a short generation never reaches the answer, likelihood scoring would read
    the token after `<think>`, and DPO would compare thoughts. savi supports the instruct variants only."""
    prompt = processor.apply_chat_template(chat("?"), tokenize=False, add_generation_prompt=True)
    turn = prompt[len(processor.apply_chat_template(chat("?"), tokenize=False)):]
    if "<think>" in turn or "thinking" in Path(model_id).name.lower():
        raise SaviError(f"{model_id} is a reasoning ('Thinking') checkpoint: its replies start with a hidden chain "
                        "of thought, which savi's stages, scoring and DPO do not handle; use its Instruct variant "
                        "(for example Qwen/Qwen3-VL-8B-Instruct)")


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # generation-config chatter; real problems still raise
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()  # a weight-loading bar is for people watching, not for logs


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def pending_batches(items: Sequence[Any], size: int, done: Callable[[Any], bool],
                    launch: launches.Launch = launches.Launch()) -> Iterator[Sequence[Any]]:
    """This process's batches of `items` that still hold work, cut from the whole list rather than from what is
    left.

    So a resumed run forms the same batches as an uninterrupted one and, with per-batch seeds, draws the same
    samples: a half-done batch is generated again whole, and only its missing items are kept. In a launch of n
    processes (`stages/core/launch.py`) the process of rank r takes batches r, r + n, ... of that same list, so the
    launch writes what one process would.
    """
    for index, batch in enumerate(chunks(items, size)):
        if launch.takes(index) and not all(done(item) for item in batch):
            yield batch


def processor_inputs(processor: Any, videos: Sequence[Video], texts: Sequence[str]) -> Any:
    """The processor's tensors for rendered chat texts and their videos, left-padded: one call for generation,
    scoring and training alike."""
    from transformers.video_utils import VideoMetadata

    return processor(
        text=list(texts),
        videos=[v.frames for v in videos],
        video_metadata=[VideoMetadata(total_num_frames=v.total_frames, fps=v.fps, frames_indices=v.indices)
                        for v in videos],
        do_sample_frames=False,  # the frames were chosen by `savi sample`; the processor must not resample
        padding=True,
        padding_side="left",
        add_special_tokens=False,  # the chat template already has them
        return_tensors="pt",
    )


def reply_batch(processor: Any, videos: Sequence[Video], prompts: Sequence[list[dict[str, Any]]],
                replies: Sequence[str]) -> dict[str, Any]:
    """Tensors that put each reply after its prompt, for scoring or training on the reply's tokens alone.

    It does for videos what trl's vision collator does for images. Each prompt (a chat with its video) is
    rendered with the generation prompt and processed, left-padded; each reply, as the model writes it (see
    `completion_text`), is tokenized alone, right-padded and appended. `completion_mask` marks the reply tokens.
    Every row is then moved to start at column 0, as trl's trainers (and `pack_replies`) expect.
    """
    import torch
    from trl.trainer.utils import flush_left

    rendered = [processor.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    completions = [completion_text(processor, p, r) for p, r in zip(prompts, replies)]
    # Rows often repeat a prompt with its video (a pair's chosen and rejected rows, a question's options): the
    # processor, whose video preprocessing is most of a batch's cost, sees each once, and its rows are repeated.
    distinct: dict[tuple[int, str], int] = {}
    rows, firsts = [], []  # each row's distinct prompt, and the first row of each
    for row, key in enumerate(zip(map(id, videos), rendered)):
        if key not in distinct:
            distinct[key] = len(firsts)
            firsts.append(row)
        rows.append(distinct[key])
    processed = processor_inputs(processor, [videos[r] for r in firsts], [rendered[r] for r in firsts])
    if len(firsts) < len(rows):
        processed = repeated_rows(processed, rows)
    tokenizer = processor.tokenizer
    tokens = tokenizer(completions, padding=True, padding_side="right", add_special_tokens=False,
                       return_tensors="pt")
    completion_ids, completion_mask = tokens["input_ids"], tokens["attention_mask"]

    prompt_ids, prompt_mask = processed.pop("input_ids"), processed.pop("attention_mask")
    batch = dict(processed)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    completion_mask = torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1)
    # Qwen-VL models need mm_token_type_ids for their 3-D positions (without it they fall back to 1-D ones,
    # silently), so it is padded and flushed with the rest.
    if "mm_token_type_ids" in processed:
        mm = torch.cat([processed["mm_token_type_ids"], torch.zeros_like(completion_ids)], dim=1)
        attention_mask, input_ids, completion_mask, mm = flush_left(attention_mask, input_ids, completion_mask, mm)
        batch["mm_token_type_ids"] = mm
    else:
        attention_mask, input_ids, completion_mask = flush_left(attention_mask, input_ids, completion_mask)
    batch.update(input_ids=input_ids, attention_mask=attention_mask, completion_mask=completion_mask)
    return batch


def repeated_rows(processed: Any, rows: list[int]) -> dict[str, Any]:
    """The processor's outputs for rows `rows` of the rows it processed (each may come several times). Every output
    has a row per video along its first dimension, but Qwen's pixels, which are each video's t * h * w patches in
    turn (`video_grid_thw`)."""
    import torch

    out = {}
    for key, value in processed.items():
        if key == "pixel_values_videos" and processed.get("video_grid_thw") is not None:
            blocks = value.split(processed["video_grid_thw"].prod(-1).tolist())
            out[key] = torch.cat([blocks[r] for r in rows])
        elif isinstance(value, torch.Tensor):
            out[key] = value[rows]
        else:
            out[key] = [value[r] for r in rows]
    return out


def completion_text(processor: Any, prompt: list[dict[str, Any]], reply: str) -> str:
    """The reply as the model writes it after the generation prompt: the text, then the end-of-turn text that
    the chat template puts after an assistant message.

    Not "the whole conversation minus the prompt": some templates render an assistant turn differently from
    their generation prompt (LLaVA-OneVision writes `<|im_start|>assistant \n` in the one and
    `<|im_start|>assistant\n` in the other), and the model only ever continues the generation prompt.
    """
    turn = [{"role": "assistant", "content": [{"type": "text", "text": reply}]}]
    full = processor.apply_chat_template(prompt + turn, tokenize=False)
    at = full.rfind(reply)
    if at < 0:
        raise SaviError("this model's chat template does not write an assistant message's text as given, so "
                        "savi cannot tell where the answer ends")
    return reply + full[at + len(reply):]


def chat(prompt: str, system: str | None = None) -> list[dict[str, Any]]:
    """One user turn: the video, then the prompt (the order VideoSAVi and the model cards use); after a system turn
    where one is given (else the chat template's own default, if it has one)."""
    turn = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    return ([{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []) + turn


def preference_row(pair: Any) -> dict[str, Any]:
    """A pair in trl's conversational preference form: the user turn it was sampled from (with the video), and the
    chosen and rejected replies. Pairs from before savi recorded that turn fall back to the bare question."""
    return {
        "prompt": chat(pair.prompt or pair.question),
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": pair.chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": pair.rejected}]}],
    }


def batch_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little")


def resolve_device(device: str) -> str:
    """auto: cuda if available, else cpu. Any other device torch knows (cpu, cuda, cuda:N, mps), if it is here."""
    import torch

    launch = launches.current()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and launch.parallel:  # in a launch each process takes the GPU of its local rank
        device = f"cuda:{launch.local_rank}"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise SaviError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SaviError(f"--device {device} asked for a GPU, but CUDA is not available here; use --device cpu")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    except KeyError:
        raise SaviError(f"unknown --dtype {dtype!r}: use auto, bfloat16, float16 or float32") from None


# Modules kept out of 4-bit, by their full names in transformers 5: the vision tower (Qwen's `visual`, LLaVA's
# `vision_tower`), LLaVA's projector, and the output head. transformers matches a pattern from the start of the
# module's full name (or as its end), so a bare "visual" would match nothing under `model.visual`.
NOT_QUANTIZED = ["model.visual", "model.vision_tower", "model.multi_modal_projector", "lm_head"]


def quantization_config(compute_dtype: Any) -> Any:
    """NF4 with double quantisation for the language model; the vision tower, projector and output head stay in
    the compute dtype (they are small, and quantising them hurts more than it saves).

    Under FSDP or DeepSpeed ZeRO-3 the 4-bit weights are also stored in the compute dtype: those engines shard and
    gather every weight as one flat tensor of one dtype, and bitsandbytes' default uint8 storage cannot join it.
    """
    from transformers import BitsAndBytesConfig

    storage = {"bnb_4bit_quant_storage": compute_dtype} if launches.shards_parameters() else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=NOT_QUANTIZED, **storage)


def _stop_ids(model: Any, processor: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    for token_id in (processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id):
        if token_id is not None:
            ids.add(token_id)
    return ids
