"""Where a training step's time goes on the tiny CPU task, and the framework's own share.

Prints JSON: mean seconds per phase of `train_step` (rollout = generation, reward = scoring,
record_history, advantages, train = old log-probs + update, sync) over the steady-state steps, and
`overhead_frac`: the share of the step spent outside every phase (metrics, logging). Goal: under 0.10.

    .venv/bin/python benchmarks/step_breakdown.py [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_runs import prepare, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = prepare(Path(tmp))
        # stays inside stage 1 (30 steps in the config): one engine warm-up, no stage switch
        metrics = train(env, Path(tmp) / "run", [f"training.steps={min(args.steps, 8)}", "training.save_every=0"])
    steady = metrics[1:] or metrics  # the first step pays one-off warm-up costs
    phases = ("t_rollout", "t_reward", "t_record_history", "t_advantages", "t_train", "t_sync")
    mean = {k: sum(m[k] for m in steady) / len(steady) for k in (*phases, "t_step")}
    overhead = mean["t_step"] - sum(mean[k] for k in phases)
    print(json.dumps({**{k: round(v, 4) for k, v in mean.items()}, "overhead_s": round(overhead, 4),
                      "overhead_frac": round(overhead / mean["t_step"], 4), "steps_measured": len(steady),
                      "tokens_per_s": sum(m["tokens_per_s"] for m in steady) / len(steady)}))


if __name__ == "__main__":
    main()
