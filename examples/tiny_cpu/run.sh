#!/usr/bin/env bash
# The tiny two-stage SRPO run on CPU: data -> SFT warm-up (cached) -> torchrun 2 ranks -> summary, plot.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/tiny_cpu}
export PYTHONWARNINGS=ignore VLLM_LOGGING_LEVEL=WARNING
.venv/bin/python examples/tiny_cpu/make_data.py --out "$OUT/data"
.venv/bin/python tools/sft_warmup.py --data "$OUT/data" --out .cache/tiny-sft | tee "$OUT/sft.json"
export SRPO_TINY_MODEL=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['model'])" "$OUT/sft.json")
export SRPO_TINY_DATA="$OUT/data"
rm -rf "$OUT/run"
.venv/bin/torchrun --nproc-per-node 2 -m srpo_megatron.train --config examples/tiny_cpu/config.yaml \
  training.run_dir="$OUT/run" "$@"
.venv/bin/python tools/plot_metrics.py "$OUT/run/metrics.jsonl" --out "$OUT/run/metrics.png"
.venv/bin/python tools/run_summary.py "$OUT/run/metrics.jsonl"
echo "plot: $OUT/run/metrics.png"
