#!/usr/bin/env bash
# SRPO on SmolLM2-135M-Instruct on CPU: GGUF -> HF (cached) -> arithmetic problems -> supervised
# warm-up (cached) -> torchrun -> held-out accuracy, format rate, response length -> plot.
# Extra arguments are config overrides.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/smollm2_cpu}
NPROC=${NPROC:-2}
CONFIG=examples/smollm2_cpu/config.yaml
export PYTHONWARNINGS=ignore VLLM_LOGGING_LEVEL=WARNING
start=$(date +%s)
mkdir -p "$OUT"
field() { .venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }
.venv/bin/python tools/smollm2_to_hf.py | tee "$OUT/model.json"
.venv/bin/python examples/smollm2_cpu/make_data.py --out "$OUT/data"
# The warm-up sees the prompts exactly as the rollouts will: the config's instruction appended.
instruction=$(.venv/bin/python -c "import sys; from srpo_megatron.config import load_config; \
print(load_config(sys.argv[1]).data.math_instruction, end='')" "$CONFIG")
.venv/bin/python tools/sft_warmup.py --data "$OUT/data" --out .cache/smollm2-sft \
  --base-model "$(field "$OUT/model.json" model)" --steps 40 --batch-size 8 --lr 5e-5 --eval-rows 64 \
  --instruction-suffix "$instruction" | tee "$OUT/sft.json"
export SRPO_SMOLLM2_MODEL=$(field "$OUT/sft.json" model)
export SRPO_SMOLLM2_DATA="$OUT/data"
rm -rf "$OUT/run"
# --standalone: a free rendezvous port, so this run never joins another job's torchrun on the host.
.venv/bin/torchrun --standalone --nproc-per-node "$NPROC" -m srpo_megatron.train --config "$CONFIG" \
  training.run_dir="$OUT/run" "$@"
.venv/bin/python tools/plot_metrics.py "$OUT/run/metrics.jsonl" --out "$OUT/run/metrics.png"
.venv/bin/python examples/smollm2_cpu/summary.py "$OUT/run/metrics.jsonl" --config "$CONFIG" "$@"
echo "total $(( $(date +%s) - start )) s; plot: $OUT/run/metrics.png"
