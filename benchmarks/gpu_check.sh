#!/usr/bin/env bash
# Every GPU figure savi reports, in one run meant to finish in under 8 minutes on an H100/H200 (a time budget
# stops it from starting a phase after 470 s), appended to docs/PERFORMANCE.md.
#
#   bash benchmarks/gpu_check.sh --download-wheels   # here, once: the wheels the GPU machine lacks, into .gpu-wheels/
#   bash benchmarks/gpu_check.sh                     # on the GPU machine (no network): measure, append to the docs
#   bash benchmarks/gpu_check.sh --dry-run-cpu       # anywhere: the same code paths on CPU, shrunk; docs untouched
#
# What it measures, on a random-weight Qwen2.5-VL-7B (the published config, benchmarks/qwen_7b.py):
#   1. peak GPU memory (allocated, reserved, device-wide used) and s/step of a 4-bit DPO step at 32 frames of
#      448 px, through stages.dpo.build_trainer, with the frozen vision tower in autograd (trl's input-grad hook
#      put back: "before"), out of it but run on every row of both passes (trl's step), and as savi builds the
#      trainer ("after": each video encoded once), against a 12 GB target (benchmarks/bench_dpo_memory.py);
#   2. generation tokens/s at batch 1, 8 and 16, 32 frames of 448 px, 64 new tokens (benchmarks/bench_generate.py);
#   3. savi eval questions/s in likelihood and generate mode, 32 frames of 448 px (benchmarks/bench_eval.py);
#   4. on a machine with several GPUs only: the scaling of `savi answer` from 1 process to one per GPU under
#      accelerate launch, tiny model (benchmarks/bench_launch.py; it samples synthetic clips, so it needs PyAV or
#      decord there too).
#
# The 7B folder is initialised on the GPU and written once with save_pretrained (16.6 GB); every benchmark then
# loads it with from_pretrained as savi loads a user's model, so the DPO step goes through load_model exactly as
# `savi dpo` does. The section it appends gives the build and load times.
#
# The GPU machine has Python 3.12 with torch, but no network and no trl, bitsandbytes, datasets, tomli-w (and no
# duckdb, PyAV or decord, which this path never imports: its frames are drawn with numpy and stored with PIL).
# The script builds a venv there from the wheels in .gpu-wheels/ (57 MiB), made first with --download-wheels on a
# machine with a network and copied over with the tree. savi itself runs from the tree (PYTHONPATH), so nothing
# needs building. The venv sees the machine's own packages through a .pth file: its python3 is itself a venv,
# whose packages `venv --system-site-packages` would not see.
#
# Options:
#   --dry-run-cpu     run on CPU with the 7B config shrunk and small frames, with .venv/bin/python (or $PYTHON);
#                     hides any GPU, uses one torch thread; writes the section to --out, never to the docs
#   --out FILE        where the section goes (default: appended to docs/PERFORMANCE.md; dry run: WORK/section.md)
#   --work DIR        scratch: venv, model folders, runs, logs, JSON (default /tmp/savi-gpu-check[-dry-run])
#   --copy-to DIR     also copy the section, the JSON files and the end of every log here
#   --budget-s N      stop starting phases after N seconds in all (default 470); each phase has its own limit too
#   --download-wheels pip-download the wheels into .gpu-wheels/ (needs the network) and exit
#
# The commit it reports is $SAVI_COMMIT if set, else git's (the GPU machine's copy of the tree may have no .git).

set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY_RUN=0
OUT_FILE=""
WORK=""
COPY_TO=""
BUDGET_S=470
WHEELS="$ROOT/.gpu-wheels"
# Pinned as in pyproject.toml; datasets, dill and multiprocess are trl's dependencies the GPU machine lacks.
WHEEL_PINS=(bitsandbytes==0.50.2 trl==1.16.0 transformers==5.23.0 peft==0.21.2 tomli-w==1.2.0
            datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run-cpu) DRY_RUN=1 ;;
    --out) OUT_FILE="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    --copy-to) COPY_TO="$2"; shift ;;
    --budget-s) BUDGET_S="$2"; shift ;;
    --download-wheels)
      mkdir -p "$WHEELS"
      "${PYTHON:-$ROOT/.venv/bin/python}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "${WHEEL_PINS[@]}" || exit 1
      # .gitignore keeps the wheels out of the repository: they are build inputs of the GPU machine only.
      du -ch "$WHEELS"/*.whl | tail -1
      echo "copy .gpu-wheels/ with the tree to the GPU machine, then run: bash benchmarks/gpu_check.sh"
      exit 0 ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

START=$(date +%s)
if [ "$DRY_RUN" = 1 ]; then
  WORK="${WORK:-/tmp/savi-gpu-check-dry-run}"
  OUT_FILE="${OUT_FILE:-$WORK/section.md}"
  DRY=(--dry-run-cpu)
  SHRUNK=(--shrunk)
  # The same code on CPU: hide any GPU (bitsandbytes would put a 4-bit model on it whatever savi asks), and one
  # torch thread, which a busy machine cannot stall at every operator.
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
else
  WORK="${WORK:-/tmp/savi-gpu-check}"
  OUT_FILE="${OUT_FILE:-$ROOT/docs/PERFORMANCE.md}"
  DRY=()
  SHRUNK=()
fi
mkdir -p "$WORK"
PHASES="$WORK/phases.tsv"
: > "$PHASES"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

say() { echo "[gpu-check $(( $(date +%s) - START ))s] $*"; }

# phase NAME LIMIT_S COMMAND...: run it under the smaller of its limit and what is left of the budget, with its
# output in WORK/NAME.out and WORK/NAME.err; one line in phases.tsv says how it ended.
phase() {
  local name="$1" limit="$2"; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$left" -lt 30 ]; then
    say "$name: not run, $left s of the budget left"
    printf '%s\t%s\t%s\n' "$name" "skipped" 0 >> "$PHASES"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "$name: started (limit $limit s)"
  local t0=$(date +%s) status
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  status=$?
  local took=$(( $(date +%s) - t0 ))
  if [ "$status" = 0 ]; then
    printf '%s\t%s\t%s\n' "$name" "ok" "$took" >> "$PHASES"
    say "$name: done in $took s"
  else
    [ "$status" = 124 ] && status="timed out after $limit s" || status="exit status $status"
    printf '%s\t%s\t%s\n' "$name" "$status" "$took" >> "$PHASES"
    say "$name: FAILED ($status); the end of its log:"
    tail -n 15 "$WORK/$name.err"
  fi
  cat "$WORK/$name.out"
  [ "$status" = 0 ]
}

# --- Python ----------------------------------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  PY="${PYTHON:-$ROOT/.venv/bin/python}"
else
  ls "$WHEELS"/*.whl > /dev/null 2>&1 || {
    echo "gpu_check: no wheels in $WHEELS; run 'bash benchmarks/gpu_check.sh --download-wheels' where there is a" \
         "network, and copy .gpu-wheels/ over with the tree" >&2; exit 2; }
  BASE="${PYTHON:-python3}"
  VENV="$WORK/venv"
  build_venv() {
    rm -rf "$VENV" && "$BASE" -m venv "$VENV" || return 1
    local site
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    # The machine's packages (torch among them) after the venv's own, so the carried wheels win.
    "$BASE" -c 'import site; print("\n".join(site.getsitepackages()))' > "$site/_gpu_machine_packages.pth" || return 1
    "$VENV/bin/python" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
      "$WHEELS"/*.whl
  }
  export -f build_venv && export BASE VENV WHEELS  # `timeout` runs programs, not functions: a child bash runs it
  phase venv 120 bash -c build_venv || exit 1
  PY="$VENV/bin/python"
fi
# Fail in seconds, not minutes, if something the benchmarks import is missing.
phase preflight 60 "$PY" -c '
import importlib.util, sys
need = ["torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "psutil", "PIL", "pyarrow",
        "tomli_w", "numpy", "safetensors", "tokenizers", "torchvision"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing: {missing}")
import torch, transformers, trl, peft, bitsandbytes
import stages.dpo, stages.eval  # what the benchmarks import: the trainer, datasets, savi itself
if "--gpu" in sys.argv:
    if not torch.cuda.is_available():
        sys.exit("torch sees no CUDA GPU")
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit
    weight = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    packed, state = quantize_4bit(weight, quant_type="nf4")  # loads the CUDA library of bitsandbytes, or fails here
    assert (dequantize_4bit(packed, state) - weight).abs().mean() < 0.25  # NF4 of randn: about 0.07
print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"trl {trl.__version__}, peft {peft.__version__}, bitsandbytes {bitsandbytes.__version__}")
' $([ "$DRY_RUN" = 1 ] || echo --gpu) || exit 1

# --- The measurements ------------------------------------------------------------------------------------------
phase model 150 "$PY" benchmarks/qwen_7b.py --cache "$WORK/models" "${SHRUNK[@]}"
phase dpo 300 "$PY" benchmarks/bench_dpo_memory.py "${DRY[@]}" --modes qlora --vision-in-autograd all --steps 2 \
  --target-gb 12 --cache "$WORK/models" --work "$WORK/dpo" --json "$WORK/dpo.json"
phase generate 150 "$PY" benchmarks/bench_generate.py "${DRY[@]}" --preset qwen2.5-vl-7b --prompts 16 --repeats 1 \
  --threads 0 --cache "$WORK/models" --json "$WORK/generate.json"
phase eval 120 "$PY" benchmarks/bench_eval.py "${DRY[@]}" --preset qwen2.5-vl-7b --questions 32 --repeats 1 \
  --threads 0 --cache "$WORK/models" --dir "$WORK/eval" --json "$WORK/eval.json"
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$DRY_RUN" = 0 ] && [ "$GPUS" -ge 2 ]; then
  phase launch 150 "$PY" benchmarks/bench_launch.py --device cuda --processes "$GPUS" --repeats 1 \
    --json "$WORK/launch.json"
fi

# --- The section -----------------------------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  MACHINE="CPU dry run (shrunk config, not a measurement): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(getconf _NPROCESSORS_ONLN) CPUs"
else
  MACHINE="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  MACHINE="${MACHINE:-unknown GPU (nvidia-smi gave nothing)}, $(getconf _NPROCESSORS_ONLN) CPUs"
fi
COMMIT="${SAVI_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
if [ -z "${SAVI_COMMIT:-}" ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  COMMIT="$COMMIT plus uncommitted changes"
fi
SECTION="$WORK/section.new.md"
"$PY" - "$WORK" "$MACHINE" "$COMMIT" "$(( $(date +%s) - START ))" "$DRY_RUN" > "$SECTION" <<'PYTHON'
import json, sys
from datetime import UTC, datetime
from pathlib import Path

work, machine, commit, total, dry = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
started = datetime.now(UTC).timestamp() - total
phases = {name: (status, int(took)) for name, status, took in
          (line.split("\t") for line in (work / "phases.tsv").read_text().splitlines())}

def result(name):
    path = work / f"{name}.json"
    status = phases.get(name, ("not run", 0))[0]
    if status == "ok" and path.is_file():
        return json.loads(path.read_text())
    print(f"**Not measured: this phase ended with {status}; its log is {work / name}.err.**\n")

versions = (work / "preflight.out").read_text().strip() if (work / "preflight.out").is_file() else "versions unknown"
timing = ", ".join(f"{name} {took} s" + ("" if status == "ok" else f" ({status})")
                   for name, (status, took) in phases.items() if name != "preflight")
date = datetime.now(UTC).strftime("%Y-%m-%d")
print(f"## GPU check{' (DRY RUN)' if dry else ''}: {date}, {machine}\n")
print(f"`bash benchmarks/gpu_check.sh{' --dry-run-cpu' if dry else ''}` at commit {commit}; {versions}. "
      f"{total} s in all ({timing}).\n")
model = work / "model.out"
folder = Path(model.read_text().strip().splitlines()[-1]) if model.is_file() and model.read_text().strip() else None
if folder and (folder / "bench-model.json").is_file():
    m = json.loads((folder / "bench-model.json").read_text())
    print(f"Model folder ({'built by this run' if m['built'] >= started else 'built earlier, reused'}): "
          f"{m['params']:,} parameters, random bf16 weights initialised on {m['device']} in {m['init_s']} s and "
          f"written with save_pretrained in {m['save_s']} s ({m['weights_bytes'] / 1e9:.1f} GB); every benchmark "
          f"loads it with from_pretrained.\n")

print("### DPO step: peak memory, vision tower in and out of autograd\n")
if (dpo := result("dpo")):
    loads = ", ".join(f"{r['label']} {r['load_s']} s" for r in dpo["results"] if "load_s" in r)
    print(f"{dpo['described']}. Loading through build_trainer: {loads}.\n\n{dpo['table']}\n")
print("### Generation: tokens/s by batch size\n")
if (gen := result("generate")):
    p = gen["preset"]
    print(f"{gen['model']['params']:,} parameters, {gen['model']['dtype']} on {gen['model']['device']} (loaded in "
          f"{gen['model']['load_s']} s); {p['prompts']} prompts, {p['frames']} frames of {p['size']} px "
          f"({gen['inputs']['visual_tokens_per_video']:,} visual tokens), {p['max_new_tokens']} new tokens, greedy, "
          f"{p['repeats']} repeat(s).\n\n{gen['table']}\n")
print("### savi eval: questions/s, likelihood and generate\n")
if (ev := result("eval")):
    print(f"{ev['setup']}.\n\n{ev['table']}\n")
print("### savi answer on every GPU: scaling under accelerate launch\n")
if "launch" not in phases:
    print("One GPU here (or a dry run): this phase runs where there are several.\n")
elif (la := result("launch")):
    print(f"{la['answers']} answers, tiny model: 1 process {min(la['seconds']['1']):.1f} s, {la['processes']} "
          f"processes {min(la['seconds'][str(la['processes'])]):.1f} s: speedup {la['speedup']:.2f}x, efficiency "
          f"{la['efficiency']:.2f}; tables equal row for row: {la['tables_equal']}.\n")
PYTHON

if [ "$DRY_RUN" = 1 ] || [ "$OUT_FILE" != "$ROOT/docs/PERFORMANCE.md" ]; then
  cp "$SECTION" "$OUT_FILE"
else
  { echo; cat "$SECTION"; } >> "$OUT_FILE"
fi
if [ -n "$COPY_TO" ]; then
  mkdir -p "$COPY_TO" && cp "$SECTION" "$COPY_TO/gpu-check-section.md"
  for f in dpo generate eval launch; do [ -f "$WORK/$f.json" ] && cp "$WORK/$f.json" "$COPY_TO/gpu-check-$f.json"; done
  # The end of every phase's log, in one file: what a failed run leaves to go on.
  for f in "$WORK"/*.err; do echo "=== $(basename "$f")"; tail -n 60 "$f"; done > "$COPY_TO/gpu-check-logs.txt"
fi
echo
cat "$SECTION"
say "section written to $OUT_FILE"
# The exit status says whether every phase measured what it should.
awk -F'\t' '$2 != "ok" { failed = 1 } END { exit failed }' "$PHASES"
