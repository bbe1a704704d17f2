"""SRPO on SmolLM2-135M-Instruct on CPU (examples/smollm2_cpu/run.sh), as one JSON line: held-out
accuracy before -> after RL, format rate and response length of the rollouts at the start and the
end, seconds per step, the supervised warm-up (its time, its accuracy on train rows, whether it was
cached) and the total wall time (model set-up, data, warm-up, training, evaluations).

    python benchmarks/smollm2.py [--out runs/bench_smollm2] [--nproc 2] [config overrides ...]

The run's own output goes to <out>/run.log.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples/smollm2_cpu"


def _summary_module():
    """examples/ is not a package: load the example's summary script as a module."""
    spec = importlib.util.spec_from_file_location("smollm2_summary", EXAMPLE / "summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "runs/bench_smollm2"), help="run directory")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun ranks (each with its own vLLM engine)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. training.steps=10")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "run.log", "w") as log:
        proc = subprocess.run(["bash", str(EXAMPLE / "run.sh"), *args.overrides], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "OUT": str(out), "NPROC": str(args.nproc)})
    total = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"run.sh failed (exit {proc.returncode}); see {out / 'run.log'}", file=sys.stderr)
        return 1
    summary_module = _summary_module()
    config = summary_module.load_config(EXAMPLE / "config.yaml", args.overrides)
    summary = summary_module.summarize(summary_module.read_metrics(out / "run/metrics.jsonl"), config)
    warmup = json.loads((out / "sft.json").read_text())
    warmup = {k: warmup[k] for k in ("steps", "train_time_s", "accuracy", "cached")}
    print(json.dumps({"nproc": args.nproc, "overrides": args.overrides, **summary, "warmup": warmup,
                      "total_seconds": round(total, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
