#!/usr/bin/env bash
# One-GPU check, about 10 minutes: random-weight SDXL-, SD3-Medium- and SD3.5-Large-sized models (bf16, no
# text encoders), the project's own generator update with and without ReFL (s/step, peak GiB, ratio to
# the sum of its plain passes), and the peer-layout reference (../shared/bench/ref_dmdr_step.py, copied
# into the git-ignored .devbench/) on the same machine for the time ratio; the step of the two 24 GB recipes
# (recipes/sdxl/4step-refl-lora-24gb.yaml, recipes/sd3-medium/4step-refl-24gb.yaml); then the evaluation
# throughput of the four score models at real size, batch 64 (target: >= 50 images/s together). On a machine
# with 2 or more GPUs, the SDXL full fine-tune with train.sharding: optimizer over all of them as well. Last,
# the memory planner's figure (traced on the CPU, per step) against each measured peak: the first run on a GPU
# is what calibrates the planner (README, "What fits where").
# Usage (device machine, repo root): bash bench/gpu_check.sh [OUT_DIR]
#        (any machine, no GPU: same sequence on small models): bash bench/gpu_check.sh OUT_DIR --tiny
# Needs diffusers, pydantic, open_clip_torch, ftfy and bitsandbytes there: carry them as wheels in .whl/ (README,
# Benchmarks).
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu_check}}
tiny=${2:-}
mkdir -p "$out" && out=$(cd "$out" && pwd)  # absolute: the peer runs cd into .devbench
if [ "$tiny" != "--tiny" ] && ls .whl/*.whl >/dev/null 2>&1; then  # Python 3.12 wheels for the device machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
[ "$tiny" = "--tiny" ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
run() {  # label, command...; each JSON line goes to results.jsonl; a failure (e.g. OOM) is recorded, not fatal
  local label=$1; shift
  echo "== $label"
  if ! timeout "$limit" "$@" 2>"$out/$label.err" | tee -a "$out/results.jsonl"; then
    echo "{\"label\": \"$label\", \"failed\": true, \"error\": \"$(tail -1 "$out/$label.err" | tr -d '"\\' | cut -c1-300)\"}" | tee -a "$out/results.jsonl"
  fi
}
S=bench/step_overhead.py
# --tiny: the same runs on the CPU-sized UNet / MMDiT of step_overhead.py and tiny score models
if [ "$tiny" = "--tiny" ]; then unet=(--model cpu --resolution 64); mmdit=(--model cpu-mmdit --resolution 64); mmdit_m=("${mmdit[@]}")
  peer=--tiny; eval=(--threads 2); limit=900
else unet=(--model sdxl); mmdit=(--model sd35l); mmdit_m=(--model sd3m); peer=; eval=(--device cuda --real-size --threads 8); limit=240; fi
run sdxl_b4_full_gc      python3 $S "${unet[@]}" --batch 4 --finetune full --gc 1 --refl 0
run sdxl_b4_full_gc_refl python3 $S "${unet[@]}" --batch 4 --finetune full --gc 1 --refl 1 --tiny-decoder 1
if [ -f .devbench/ref_dmdr_step.py ]; then
  (cd .devbench && run peer_sdxl_b4_gc python3 ref_dmdr_step.py $peer --batch 4 --refl 0 --gc 1 --steps 2)
  (cd .devbench && run peer_sdxl_b4_gc_refl python3 ref_dmdr_step.py $peer --batch 4 --refl 1 --gc 1 --steps 2)
fi
# SDXL full fine-tune sharded (train.sharding: optimizer, ZeroRedundancyOptimizer) over every GPU of the machine:
# peak GiB of the largest rank against sdxl_b4_full_gc above (dmdr distill --dry-run --processes N predicts it);
# needs 2 GPUs (--tiny: 2 CPU processes, gloo)
if [ "$tiny" = "--tiny" ]; then ngpu=2; else ngpu=$(nvidia-smi -L | wc -l); fi
if [ "$ngpu" -ge 2 ]; then
  run sdxl_b4_full_gc_sharded python3 -m torch.distributed.run --nproc_per_node "$ngpu" --master_port 29561 $S "${unet[@]}" --batch 4 --finetune full --gc 1 --refl 0 --sharding optimizer
  # train.sharding: full (FSDP2): every weight, gradient and AdamW state 1/N per rank, blocks gathered in bf16
  run sdxl_b4_full_gc_fsdp python3 -m torch.distributed.run --nproc_per_node "$ngpu" --master_port 29562 $S "${unet[@]}" --batch 4 --finetune full --gc 1 --refl 0 --sharding full
else
  for label in sdxl_b4_full_gc_sharded sdxl_b4_full_gc_fsdp; do
    echo "{\"label\": \"$label\", \"skipped\": \"one GPU: sharding needs 2 or more\"}" | tee -a "$out/results.jsonl"
  done
fi
run sd35l_b2_lora_gc_refl python3 $S "${mmdit[@]}" --batch 2 --finetune lora --gc 1 --refl 1 --steps 1
run sd3m_b4_lora_gc_refl python3 $S "${mmdit_m[@]}" --batch 4 --finetune lora --gc 1 --refl 1
# the one-GPU 24 GB recipes' own step (8-bit AdamW needs bitsandbytes: carry its wheel); peak must stay under 24
run sdxl_24gb_recipe python3 $S "${unet[@]}" --recipe recipes/sdxl/4step-refl-lora-24gb.yaml
run sd3m_24gb_recipe python3 $S "${mmdit_m[@]}" --recipe recipes/sd3-medium/4step-refl-24gb.yaml
run eval_scores_b64 python3 bench/eval_throughput.py "${eval[@]}"
# the memory planner against the measured peaks (max_memory_allocated), one line per configuration
python3 - "$out/results.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:  # the throughput lines are text
        continue
    if isinstance(r, dict) and r.get("bench") == "dmdr-step" and r.get("peak_GiB") and r.get("planned_GiB"):
        what = r.get("recipe") or f"{r['model']} b{r['batch']} {r['finetune']} gc{r['gc']} refl{r['refl']} {r['decoder']}"
        print(f"planner vs measured: {what} x{r['processes']} {r['sharding']}: planned {r['planned_GiB']} GiB, "
              f"measured {r['peak_GiB']} GiB ({r['planned_GiB'] / r['peak_GiB'] - 1:+.1%})")
PY
