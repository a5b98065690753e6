#!/usr/bin/env bash
# Two self-alignment rounds of Qwen/Qwen2.5-VL-7B-Instruct on a folder of your videos, on one 24 GB GPU,
# evaluated on EgoSchema after each round.
#
#   VIDEOS=~/videos EGOSCHEMA=~/data/egoschema RUN=kitchen examples/round_gpu.sh
#
# What it does: installs savi (if needed), samples the videos into a run, writes the run's settings
# ($SAVI_HOME/$RUN/savi.toml), runs `savi round 1` and `savi round 2` (ask, answer, critique, filter, DPO, then eval
# of the new policy; the base model is evaluated once), and prints `savi report` and a few queries.
#
# Every step is resumable: rerun the script after a crash, Ctrl-C or a lost machine and it goes on where it
# stopped. Finished stages are skipped without loading the model.
#
# About memory. The settings below are the design target for a 24 GB card: 4-bit NF4 weights for generation and
# evaluation, and QLoRA DPO whose peak is meant to stay under 16 GB (docs/PERFORMANCE.md). The 7B GPU memory
# measurement (benchmarks/bench_dpo_memory.py) has not been run yet, so these are not measured figures. If a
# generation batch does not fit, savi halves it and goes on; if DPO does not fit, see the [dpo] notes below.
#
# Hyper-parameters. The VideoSAVi paper (arXiv 2412.00624) does not publish its DPO settings, prompts or
# decoding parameters. Where a value below follows the paper, the comment says so; the DPO values follow the
# LLaVA-NeXT DPO scripts, the codebase VideoSAVi v1 was built on. The markers: [paper] stated in the paper, its
# project page, or its released eval script and the lmms-eval harness that script runs; [inferred] read off the
# paper's figures and numbers; [recommended] a common choice where the paper is silent.

set -euo pipefail

# ---- What to run on ------------------------------------------------------------------------------------------
VIDEOS="${VIDEOS:?set VIDEOS to a folder of videos (searched recursively), a video file or a .txt list of paths}"
EGOSCHEMA="${EGOSCHEMA:?set EGOSCHEMA to the EgoSchema folder as downloaded (questions.json, videos)}"
RUN="${RUN:-videosavi-7b}"
MODEL="${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}"
export SAVI_HOME="${SAVI_HOME:-$PWD/runs}"   # where the runs live; savi's default is ./runs as well
# Videos decoded in parallel when sampling. Decoding is CPU work and does not touch the GPU; workers change
# speed only, not the frames, so this can differ between machines and reruns.
WORKERS="${WORKERS:-$(nproc)}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$SAVI_HOME/$RUN"

# ---- Set up --------------------------------------------------------------------------------------------------
# `make venv` creates .venv with pip and installs the pinned stack (torch, transformers, trl, peft, bitsandbytes,
# open_clip, duckdb). In an environment of your own, `pip install -e .` from the repository does the same.
make -C "$REPO" venv
# shellcheck disable=SC1091
source "$REPO/.venv/bin/activate"
python - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible: this recipe is for a CUDA GPU; "
             "`savi demo` shows the same pipeline offline on a CPU")
props = torch.cuda.get_device_properties(0)
print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB", file=sys.stderr)
PY
# The first command that loads the model downloads it from the Hugging Face Hub (about 16.6 GB of bf16 weights
# for its 8.3 B parameters; quantised to 4 bit as it loads). Set HF_HOME to put the cache on a disk with room.

# ---- The run's settings --------------------------------------------------------------------------------------
# One section per stage (see `savi round --help`). Written once, before the first command, so the run records
# them: later commands (and `savi sample` on more videos) take them as their defaults, and what each round ran
# with is saved to round=R/config.toml. The file is left alone if it exists: edit it there. A stage that has
# finished refuses changed settings, so change settings before a round starts; to change a finished stage,
# `savi round R --redo STAGE` does it again with every later stage of the round.
mkdir -p "$RUN_DIR"
if [[ ! -f "$RUN_DIR/savi.toml" ]]; then
    cat > "$RUN_DIR/savi.toml" <<TOML
[model]
id = "$MODEL"
# 4-bit NF4 weights for every generating stage and for eval: the language model's linear layers take about a
# quarter of their bf16 size, which leaves most of the card for the visual tokens (up to 4,096 per prompt at 32
# frames of 448 px) and their KV cache. The vision tower and output head stay in bf16 (savi's quantisation
# skips them).
load_in_4bit = true
# Prompts generated together (default 4). Each prompt is dominated by its visual tokens, so the batch, not
# the reply length, sets the memory; 8 is the design target with 4-bit weights. On CUDA out-of-memory savi
# halves the batch for the rest of the stage and goes on, so too high costs one retried batch, not the run.
batch_size = 8

[sample]
# 32 frames per video, at segment midpoints: VideoSAVi evaluates with 32 frames [paper] and very likely
# generated its data from 32 as well [inferred].
frames = 32
# Longest side 448 px: the frame size of VideoSAVi's evaluation (lmms-eval, one 448x448 tile per frame) [paper].
max_side = 448

[ask]
# 6 questions per video, 3 spatial and 3 temporal: VideoSAVi v2/v3 asks spatial and temporal questions
# [paper] and made 24,000 pairs from 4,000 videos, 6 per video [inferred]. (Both are savi's defaults; pinned
# here because they define the data.)
per_video = 6
kinds = ["spatial", "temporal"]

[answer]
# One initial answer per question, to be critiqued and revised: the v2/v3 pipeline [inferred]. It is sampled
# at the first of answer.temperatures (0.3), a low temperature [recommended].
candidates = 1
# Longer than the default 256: a 7B model's answers, with their reasoning, can run past 256 tokens, and a
# cut-off answer makes a pair that teaches "finished beats truncated". Check with examples/queries/answers_cut_off.sql.
max_new_tokens = 384
# Temporal negatives (TimeWarp, TPO, TEMPLE) are not part of VideoSAVi, so they are off here. Uncommented, a
# quarter of the questions is also answered from its frames reversed, and the true-order answer is preferred
# (temporal:reverse pairs, never CLIP-scored): they teach order, which self-critique rarely fixes [recommended].
# examples/queries/pairs_by_source.sql shows how many survive the filter.
# temporal = ["reverse"]
# temporal_share = 0.25

[critique]
# Critique, then revise; (revision > answer) is the pair: VideoSAVi v2/v3 [paper].
mode = "critique"
# This limit caps both the critique and the revision, so it is above answer.max_new_tokens: a revision must be
# able to be as long as the answer it corrects.
max_new_tokens = 512

[filter]
# CLIP swaps chosen and rejected only in judge mode, as in the VideoSAVi v1 figure [paper]; it never overturns a
# critique's revision, since revisions fix order and spatial relations, which CLIP barely sees [recommended].
# No CLIP margin drops pairs; the scores are kept for inspection (examples/queries/clip_swaps_and_margins.sql).
# Pairs whose text was cut off at max_new_tokens are dropped; near-duplicates (similarity 0.9) and length
# ratios above 3 too [recommended]. All are savi's defaults, pinned.
swap = "auto"
drop_cut_off = true
near_duplicate = 0.9
max_length_ratio = 3.0

[clip]
# ViT-L-14 with OpenAI's weights instead of the default ViT-B-32: the larger CLIP, with 14-px patches (256 per
# 224-px frame, against 49 for B-32), matches text to images markedly better, and this score decides which text
# of a pair is chosen. The paper does not name its CLIP [recommended: ViT-L-14 or larger]. CLIP runs
# in the filter stage, when the policy is not loaded, and each video's frame embeddings are cached in the run,
# so the larger model costs little after the first round.
model = "ViT-L-14"
weights = "openai"

[dpo]
# Standard DPO (sigmoid): VideoSAVi v2/v3 applies DPO with no modified loss [inferred].
loss = "sigmoid"
# beta 0.1, batch 1 x gradient accumulation 8, 1 epoch per round: LLaVA-NeXT's DPO script for the 7B
# LLaVA-OneVision (scripts/train/dpo_ov7b.sh) [recommended]; the paper does not publish its values.
beta = 0.1
batch_size = 1
grad_accum = 8
epochs = 1.0
# 5e-6 for LoRA: that script fine-tunes every weight at 5e-7, and a LoRA adapter needs a larger rate
# [recommended].
learning_rate = 5e-6
# LoRA rank 16 on the language model, alpha 32 [recommended: rank 16 to 64]. Round 2 continues this adapter.
lora_r = 16
lora_alpha = 32
# QLoRA: the frozen base in 4-bit NF4, gradient checkpointing on (paged 8-bit AdamW on CUDA). This is what
# makes DPO on a 7B model with 32-frame videos a 24 GB design at all: bf16 weights alone are 16.6 GB. One
# pair per step is the smallest batch; if a step still runs out of memory, sample fewer frames
# (--frames 16 in a new run) rather than shortening the answers.
four_bit = true
gradient_checkpointing = true

[eval]
# lmms-eval's protocol (savi's default), as VideoSAVi's Table 1 and the model cards report: a greedy reply to
# each task's prompt, read by the task's answer extractor, with savi's strict reading of the same replies
# beside it. "likelihood" scores each option's letter in one forward pass instead: a fast diagnostic that no
# published figure uses. VideoSAVi samples 32 frames per question at 448 px [paper].
protocol = "lmms-eval"
frames = 32
max_side = 448
TOML
else
    echo "keeping the settings in $RUN_DIR/savi.toml" >&2
fi

# ---- Sample --------------------------------------------------------------------------------------------------
# Frames are decoded once (32 per video, from [sample]) and reused by every stage and round. Broken files become
# error rows with their reason; the run goes on. Adding videos later samples only the new ones.
savi sample "$VIDEOS" --run "$RUN" --workers "$WORKERS"
savi status --run "$RUN"

# ---- Round 1 -------------------------------------------------------------------------------------------------
# The base model asks, answers and critiques itself; CLIP filters; QLoRA DPO trains round 1's adapter; then the
# base model (once) and round 1's policy are evaluated on EgoSchema's subset (500 questions with public answers,
# the split VideoSAVi reports [paper]).
savi round 1 --run "$RUN" --eval "egoschema=$EGOSCHEMA"

# ---- Round 2 -------------------------------------------------------------------------------------------------
# Round 2's data comes from round 1's policy, and its DPO continues round 1's adapter with it as the reference.
# VideoSAVi ran 4 iterations [inferred]: `savi round 3` and `savi round 4` go the same way.
savi round 2 --run "$RUN" --eval "egoschema=$EGOSCHEMA"

# ---- Results -------------------------------------------------------------------------------------------------
# Accuracy per round against the base model, and a chart ($SAVI_HOME/$RUN/report.png).
savi report --run "$RUN"
# What each round kept and why, and how training went (more in examples/queries/).
savi query - --run "$RUN" < "$REPO/examples/queries/drop_reasons_per_round.sql"
savi query - --run "$RUN" < "$REPO/examples/queries/reward_margins.sql"
savi query - --run "$RUN" < "$REPO/examples/queries/answers_cut_off.sql"
