#!/usr/bin/env bash
# One-GPU check, under 8 minutes: random-weight SDXL-, SD3-Medium- and SD3.5-Large-sized models (bf16, no
# text encoders), the project's own generator update with and without ReFL (s/step, peak GiB, ratio to
# the sum of its plain passes), and the peer-layout reference (../shared/bench/ref_dmdr_step.py, copied
# into the git-ignored .devbench/) on the same machine for the time ratio.
# Usage (device machine, repo root): bash bench/gpu_check.sh [OUT_DIR]
# Needs diffusers and pydantic there: carry them as wheels in .whl/ (see README "GPU check").
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
run() {  # label, command...; each JSON line goes to results.jsonl; a failure (e.g. OOM) is recorded, not fatal
  local label=$1; shift
  echo "== $label"
  if ! timeout 240 "$@" 2>"$out/$label.err" | tee -a "$out/results.jsonl"; then
    echo "{\"label\": \"$label\", \"failed\": true, \"error\": \"$(tail -1 "$out/$label.err" | tr -d '"\\' | cut -c1-300)\"}" | tee -a "$out/results.jsonl"
  fi
}
S=bench/step_overhead.py
run sdxl_b4_full_gc      python3 $S --model sdxl  --batch 4 --finetune full --gc 1 --refl 0
run sdxl_b4_full_gc_refl python3 $S --model sdxl  --batch 4 --finetune full --gc 1 --refl 1 --tiny-decoder 1
if [ -f .devbench/ref_dmdr_step.py ]; then
  (cd .devbench && run peer_sdxl_b4_gc python3 ref_dmdr_step.py --batch 4 --refl 0 --gc 1 --steps 2)
  (cd .devbench && run peer_sdxl_b4_gc_refl python3 ref_dmdr_step.py --batch 4 --refl 1 --gc 1 --steps 2)
fi
run sd35l_b2_lora_gc_refl python3 $S --model sd35l --batch 2 --finetune lora --gc 1 --refl 1 --steps 1
run sd3m_b4_lora_gc_refl python3 $S --model sd3m  --batch 4 --finetune lora --gc 1 --refl 1
