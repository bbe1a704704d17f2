"""What a training run learned, from its metrics.jsonl: held-out curves, pool sizes, rollouts spent.

    python tools/run_summary.py runs/tiny_cpu/run/metrics.jsonl [--json]

Prints the held-out avg@k accuracy at every evaluation (start, every `eval_every` steps, stage
ends), its change from start to end per domain, the history-resampling pool at every epoch
boundary where it changed, and how many groups carried a learning signal. `--json` prints the
same as one JSON object (the benchmarks read `summarize`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EVAL_PREFIX = "eval/accuracy/"


def read_metrics(path: str | Path) -> list[dict]:
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} has no metrics")
    return lines


def heldout_curves(metrics: list[dict]) -> dict[str, dict[int, float]]:
    """{domain: {step: held-out accuracy}}; step 0 is the policy before training."""
    curves: dict[str, dict[int, float]] = {}
    for m in metrics:
        for key, value in m.items():
            if key.startswith(EVAL_PREFIX):
                curves.setdefault(key[len(EVAL_PREFIX):], {})[m["step"]] = value
    return curves


def pool_changes(metrics: list[dict]) -> list[dict]:
    """Every step where a stage's pool size differs from the step before (same stage)."""
    changes, previous = [], None
    for m in metrics:
        if "pool_size" not in m:
            continue
        key = (m["stage"], m["pool_size"])
        if previous is not None and previous[0] == m["stage"] and previous[1] != m["pool_size"]:
            changes.append({"step": m["step"], "stage": m["stage"], "from": previous[1], "to": m["pool_size"]})
        previous = key
    return changes


def summarize(metrics: list[dict]) -> dict:
    steps = [m for m in metrics if "groups" in m]
    curves = heldout_curves(metrics)
    groups = sum(m["groups"] for m in steps)
    return {
        "steps": len(steps),
        "heldout": {d: {str(s): round(v, 4) for s, v in sorted(c.items())} for d, c in curves.items()},
        "heldout_gain": {d: round(c[max(c)] - c[min(c)], 4) for d, c in curves.items() if len(c) > 1},
        "pool_changes": pool_changes(metrics),
        "rollouts_total": steps[-1]["rollouts_total"] if steps else 0,
        "zero_adv_frac": round(sum(m["zero_adv_frac"] * m["groups"] for m in steps) / groups, 4) if groups else None,
        "informative_groups_per_step": round(sum(m["informative_groups"] for m in steps) / len(steps), 2)
        if steps else None,
        "seconds": round(sum(m["t_step"] for m in steps), 1),
    }


def print_summary(metrics: list[dict]) -> None:
    summary = summarize(metrics)
    stage_at = {m["step"]: m["stage"] for m in metrics}
    print("held-out accuracy (avg@k at the rollout temperature):")
    domains = sorted(summary["heldout"])
    print(f"  {'':<36}" + "".join(f"{d:>8}" for d in domains))
    for step in sorted({int(s) for c in summary["heldout"].values() for s in c}):
        where = "start" if step == 0 else f"after step {step} ({stage_at[step]})"
        print(f"  {where:<36}" + "".join(f"{summary['heldout'][d].get(str(step), float('nan')):>8.3f}"
                                          for d in domains))
    print("  change, start -> end:             " + "".join(f"{summary['heldout_gain'].get(d, 0):>+8.3f}"
                                                         for d in domains))
    print("history-resampling pool (prompts), where an epoch boundary changed it:")
    for change in summary["pool_changes"] or [{"step": "-", "stage": "none", "from": "-", "to": "-"}]:
        print(f"  step {change['step']:>3} {change['stage']:<20} {change['from']} -> {change['to']}")
    print(f"rollouts {summary['rollouts_total']}, zero-advantage groups {summary['zero_adv_frac']:.1%}, "
          f"informative groups per step {summary['informative_groups_per_step']}, "
          f"training time {summary['seconds']:.0f} s over {summary['steps']} steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="metrics.jsonl written by the trainer")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()
    metrics = read_metrics(args.metrics)
    if args.json:
        print(json.dumps(summarize(metrics)))
    else:
        print_summary(metrics)


if __name__ == "__main__":
    main()
