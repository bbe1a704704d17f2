"""What the SmolLM2 run changed, from its metrics.jsonl and config: held-out accuracy before ->
after, the format-following rate and response length of the rollouts at the start and the end,
and the time per step.

    python examples/smollm2_cpu/summary.py runs/smollm2_cpu/run/metrics.jsonl --config examples/smollm2_cpu/config.yaml [--json]

The trainer logs the total reward and its accuracy term but not the format term, so the format
rate (share of responses with a boxed number, the config's `reward.format.pattern`) is recovered
as (reward - accuracy_weight * accuracy) / format_weight; that needs format_weight > 0 and no
language penalty. "start" and "end" average the first and the last `window` steps, because one
step's rollouts (prompts_per_step x G) are a small, noisy sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from srpo_megatron.config import TrainConfig, load_config  # noqa: E402
from tools.run_summary import heldout_curves, read_metrics  # noqa: E402


def format_rate(step: dict, config: TrainConfig) -> float:
    """Share of the step's rollouts that earned the format term."""
    reward = config.reward
    if reward.format_weight <= 0 or reward.language_penalty_weight > 0:
        raise ValueError("the format rate is read off the reward: it needs reward.format_weight > 0 and "
                         f"reward.language_penalty_weight = 0 (got {reward.format_weight} and "
                         f"{reward.language_penalty_weight})")
    return (step["reward_mean"] - reward.accuracy_weight * step["accuracy"]) / reward.format_weight


def summarize(metrics: list[dict], config: TrainConfig, window: int = 3) -> dict:
    steps = [m for m in metrics if "t_step" in m]
    if not steps:
        raise ValueError("the metrics hold no training step")
    window = max(1, min(window, len(steps) // 2 or 1))

    def mean(rows: list[dict], value) -> float:
        return round(sum(value(m) for m in rows) / len(rows), 4)

    def start_end(value) -> dict:
        return {"start": mean(steps[:window], value), "end": mean(steps[-window:], value)}

    heldout = heldout_curves(metrics).get("math", {})
    if len(heldout) < 2:
        raise ValueError("the metrics need held-out math evaluations before and after training")
    return {
        "heldout_accuracy": {"before": round(heldout[min(heldout)], 4), "after": round(heldout[max(heldout)], 4),
                             "curve": {str(s): round(v, 4) for s, v in sorted(heldout.items())},
                             "eval_samples": config.training.eval_samples},
        "train_accuracy": start_end(lambda m: m["accuracy"]),
        "format_rate": start_end(lambda m: format_rate(m, config)),
        "response_tokens": start_end(lambda m: m["response_len_mean"]),
        "truncated_frac": start_end(lambda m: m["truncated_frac"]),
        "steps": len(steps),
        "seconds_per_step": mean(steps, lambda m: m["t_step"]),
        "rollout_seconds_per_step": mean(steps, lambda m: m["t_rollout"] + m["t_reward"]),
        "train_seconds_per_step": mean(steps, lambda m: m["t_train"]),
        "train_seconds": round(sum(m["t_step"] for m in steps), 1),
        "window_steps": window,
    }


def print_summary(summary: dict) -> None:
    acc = summary["heldout_accuracy"]
    print(f"held-out accuracy (avg@{acc['eval_samples']}): {acc['before']:.3f} -> {acc['after']:.3f}   "
          f"curve {acc['curve']}")
    print(f"rollouts, mean of the first -> last {summary['window_steps']} steps:")
    for key, label in (("train_accuracy", "accuracy"), ("format_rate", "format rate (boxed number)"),
                       ("response_tokens", "response length (tokens)"), ("truncated_frac", "truncated")):
        print(f"  {label:<28} {summary[key]['start']:>8.3f} -> {summary[key]['end']:.3f}")
    print(f"{summary['steps']} steps, {summary['seconds_per_step']:.1f} s per step (rollout "
          f"{summary['rollout_seconds_per_step']:.1f} s, update {summary['train_seconds_per_step']:.1f} s), "
          f"{summary['train_seconds']:.0f} s in steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="metrics.jsonl written by the trainer")
    parser.add_argument("--config", required=True, help="the run's config YAML")
    parser.add_argument("overrides", nargs="*", help="the config overrides the run was started with")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_intermixed_args()
    summary = summarize(read_metrics(args.metrics), load_config(args.config, args.overrides))
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)


if __name__ == "__main__":
    main()
