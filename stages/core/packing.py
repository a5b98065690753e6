"""Several replies to one prompt in one row: the prompt, video tokens and all, runs once instead of once per reply.

A row per reply repeats the prompt, with its thousands of video tokens, for every reply: DPO gives a pair's chosen
and rejected reply a row each, and likelihood scoring gives each option of a question one. `pack_replies` puts a
group of rows that share a prompt into one sequence,

    [prompt | reply 1 | the prompt's last token again | reply 2 | the prompt's last token again | reply 3 ...]

with a mask under which each reply sees the prompt and itself only, and every token at the rotary position it has
in its own row. The repeated last token stands where the prompt's own last token stands in the reply's row (same
token, same position, same view of the prompt), so it predicts the reply's first token as that row does. Each
reply's log-probabilities are then those of its own row, to float tolerance.

Used by `stages.dpo.share_prompts` (a pair per group) and `Policy.score_replies` (a question's options per group).
It needs an attention that takes a mask: sdpa or eager, not flash attention (`takes_a_mask`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any


def takes_a_mask(model: Any) -> bool:
    """Whether the model's attention takes the packed rows' mask (sdpa and eager do; flash attention does not)."""
    return model.config.get_text_config()._attn_implementation in ("sdpa", "eager")


def pack_replies(model: Any, inputs: dict[str, Any], groups: Sequence[Sequence[int]]) -> tuple[dict[str, Any],
                                                                                               Callable]:
    """The model's inputs with one row per group of rows, and the function that puts per-token values of the
    packed rows (`(groups, width - 1)`, as a causal LM's shifted outputs) back in the layout of the rows given.

    `inputs`: the rows, each flushed left, with `labels` (-100 outside the replies) and the video inputs, either
    the processor's (`pixel_values_videos`, a row each) or `stages.dpo.encode_videos_once`'s features
    (`mm_encoder_outputs`). `groups`: row indexes whose rows share the first one's prompt (a group of one keeps its
    row as it is); every row in exactly one group. The packed rows show the video of each group's first row."""
    import torch
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, and_masks, causal_mask_function

    if hasattr(model, "get_base_model"):  # under peft: the model it wraps knows the positions (`row_positions`)
        model = model.get_base_model()
    if not takes_a_mask(model):
        raise ValueError("packing replies needs an attention that takes a mask (sdpa or eager), not "
                         f"{model.config.get_text_config()._attn_implementation}")
    ids, labels, real = inputs["input_ids"], inputs["labels"], inputs["attention_mask"].bool()
    rows = ids.shape[0]
    positions = row_positions(model, inputs)  # (sections, rows, width): each token's position in its own row
    lengths, prompt = real.sum(1).tolist(), (labels != -100).int().argmax(1).tolist()
    # Each packed row, as (row, column) of the tokens it takes, with each token's segment: 0 the prompt, k the k-th
    # reply (with the repeated prompt token before it), -1 padding.
    sources, segments, hidden, repeated_at = [], [], [], []
    for group in groups:
        first, p = group[0], prompt[group[0]]
        source, segment = [(first, c) for c in range(lengths[first])], [0] * p + [1] * (lengths[first] - p)
        for k, r in enumerate(group[1:], start=2):
            if prompt[r] != p or not torch.equal(ids[r, :p], ids[first, :p]):
                raise ValueError(f"rows {first} and {r} do not share their prompt")
            repeated_at.append((len(sources), len(source)))
            source += [(first, p - 1)] + [(r, c) for c in range(p, lengths[r])]
            segment += [k] * (1 + lengths[r] - p)
        sources.append(source)
        segments.append(segment)
        hidden.append(p - 1 if len(group) > 1 else -1)  # the later replies see the repeated token, not this one
    width = max(len(s) for s in sources)
    valid = torch.tensor([[True] * len(s) + [False] * (width - len(s)) for s in sources], device=ids.device)
    src_row = torch.tensor([[r for r, _ in s] + [0] * (width - len(s)) for s in sources], device=ids.device)
    src_col = torch.tensor([[c for _, c in s] + [0] * (width - len(s)) for s in sources], device=ids.device)
    segment = torch.tensor([s + [-1] * (width - len(s)) for s in segments], device=ids.device)
    hidden = torch.tensor(hidden, device=ids.device)
    repeated = torch.zeros_like(valid)  # the repeated prompt tokens: inputs, never labels
    for packed_row, column in repeated_at:
        repeated[packed_row, column] = True

    def sees(batch_idx, head_idx, q_idx, kv_idx):
        query, key = segment[batch_idx, q_idx], segment[batch_idx, kv_idx]
        return ((key == 0) | (key == query)) & ((query < 2) | (kv_idx != hidden[batch_idx]))

    packed = {k: v for k, v in inputs.items() if k not in ("input_ids", "labels", "attention_mask", "position_ids")}
    keep = [group[0] for group in groups]  # the rows whose video the packed rows show
    for key in ("video_grid_thw", "second_per_grid_ts"):
        if packed.get(key) is not None:
            packed[key] = packed[key][keep]
    if packed.get("mm_token_type_ids") is not None:
        packed["mm_token_type_ids"] = packed["mm_token_type_ids"][src_row, src_col].masked_fill(~valid, 0)
    if "mm_encoder_outputs" in packed:
        packed["mm_encoder_outputs"] = {kind: kept_rows(encoded, keep)
                                        for kind, encoded in packed["mm_encoder_outputs"].items()}
    elif packed.get("pixel_values_videos") is not None:
        pixels, grid = packed["pixel_values_videos"], inputs.get("video_grid_thw")
        if grid is None:  # LLaVA-OneVision: a block of frames per row
            packed["pixel_values_videos"] = pixels[keep]
        else:  # Qwen: each row's t * h * w patches in turn
            blocks = pixels.split(grid.prod(-1).tolist())
            packed["pixel_values_videos"] = torch.cat([blocks[k] for k in keep])
    packed_labels = labels[src_row, src_col].masked_fill(~valid | repeated, -100)
    attention = model.config.get_text_config()._attn_implementation
    # The mask of transformers' own interface (booleans for sdpa, a float mask for eager), called directly:
    # create_causal_mask vmaps any extra rule, which at these sizes took longer than the attention it masks, while
    # `sees` only indexes tensors, so it broadcasts over the four index grids as the causal rule does.
    mask = ALL_MASK_ATTENTION_FUNCTIONS[attention](
        batch_size=len(groups), q_length=width, kv_length=width, mask_function=and_masks(causal_mask_function, sees),
        attention_mask=valid, allow_is_causal_skip=False, use_vmap=False,
        dtype=model.get_input_embeddings().weight.dtype, device=ids.device)
    packed_positions = positions[:, src_row, src_col].masked_fill(~valid, 0)
    packed.update(input_ids=ids[src_row, src_col].masked_fill(~valid, 0), attention_mask=mask, labels=packed_labels,
                  position_ids=packed_positions if positions.shape[0] > 1 else packed_positions[0])

    # The packed label at (q, u + 1) is the token at (src_row, src_col) of a row: its value, at (q, u) in the
    # packed output, goes to (src_row, src_col - 1) in the rows' own.
    scored = (packed_labels[:, 1:] != -100).nonzero(as_tuple=True)
    to_row, to_col = src_row[:, 1:][scored], src_col[:, 1:][scored] - 1

    def unpack(values):
        out = values.new_zeros(rows, ids.shape[1] - 1)
        return out.index_put((to_row, to_col), values[scored])

    return packed, unpack


def row_positions(model: Any, inputs: dict[str, Any]) -> Any:
    """Each token's rotary position in its own row, as the model would compute it: (3, rows, width) for the
    Qwen-VL families' 3-D positions, (1, rows, width) for a plain count from the row's first token."""
    import torch

    core = model.model
    if hasattr(core, "compute_3d_position_ids"):
        given = {"input_ids": inputs["input_ids"], "image_grid_thw": inputs.get("image_grid_thw"),
                 "video_grid_thw": inputs.get("video_grid_thw"), "inputs_embeds": None,
                 "attention_mask": inputs["attention_mask"], "past_key_values": None,
                 "second_per_grid_ts": inputs.get("second_per_grid_ts"),
                 "mm_token_type_ids": inputs.get("mm_token_type_ids")}
        accepted = inspect.signature(core.compute_3d_position_ids).parameters
        positions = core.compute_3d_position_ids(**{k: v for k, v in given.items() if k in accepted})
        if positions is not None:
            return positions
    ids = inputs["input_ids"]
    return torch.arange(ids.shape[1], device=ids.device).expand(1, *ids.shape)


def kept_rows(encoded: Any, keep: list[int]) -> Any:
    """Per-row encoder outputs (`stages.dpo.encode_videos_once`) for the rows in `keep` only (a copy: DPO's two
    passes pack the same)."""
    def select(rows):
        return tuple(rows[k] for k in keep) if isinstance(rows, tuple) else rows[keep]

    changes = {"pooler_output": select(encoded.pooler_output)}
    if getattr(encoded, "deepstack_features", None) is not None:  # Qwen3-VL's features of earlier layers
        changes["deepstack_features"] = [select(layer) for layer in encoded.deepstack_features]
    return replace(encoded, **changes)
