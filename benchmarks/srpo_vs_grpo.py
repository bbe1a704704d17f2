"""SRPO (history resampling) vs plain GRPO vs DAPO-style dynamic sampling on the tiny task, over seeds.

Every run starts from the same SFT-warmed model and the same data; only the prompt sampler and
the seed (prompt order, rollout sampling) change. Held-out math accuracy (avg@k through vLLM and
the real rewards) is scored during training, because training-batch accuracy is biased under
resampling (the pool drops solved prompts). One stage of math, as SRPO's stage 1.

    .venv/bin/python benchmarks/srpo_vs_grpo.py [--seeds 0 1 2 --steps 30 --target 0.7 --math-pool 192]

Prints JSON and writes it to `--out`, with a PNG beside it: per method, mean and spread (sample
std over seeds) of the held-out curve, steps and rollouts to reach `--target`, the zero-advantage
group share and the informative groups per step, plus every seed's raw numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_runs import prepare, train  # noqa: E402
from tools.run_summary import heldout_curves  # noqa: E402

METHODS = {
    "srpo": ["training.sampler=history_resampling"],
    "grpo": ["training.sampler=uniform"],
    "dapo": ["training.sampler=dynamic_sampling"],
}


def run_one(method: str, seed: int, env: dict, root: Path, args) -> dict:
    """One training run; the trainer scores the held-out set every `eval_every` steps."""
    stages = f"stages=[{{name: stage1_math, mixture: {{math: 1.0}}, steps: {args.steps}}}]"
    metrics = train(env, root / f"{method}-{seed}", METHODS[method] + [
        stages, f"training.steps={args.steps}", f"training.eval_every={args.eval_every}",
        f"training.seed={seed}", "training.save_every=0", "data.eval_code=[]", *args.overrides])
    curve = heldout_curves(metrics)["math"]
    steps = [m for m in metrics if "groups" in m]
    rollouts = {0: 0, **{m["step"]: m["rollouts_total"] for m in steps}}
    reached = next((s for s in sorted(curve) if curve[s] >= args.target), None)
    return {
        "heldout_accuracy": curve,
        "steps_to_target": reached,
        "rollouts_to_target": rollouts[reached] if reached is not None else None,
        "zero_adv_frac": [m["zero_adv_frac"] for m in steps],
        "informative_groups": [m["informative_groups"] for m in steps],
        "rollouts_total": steps[-1]["rollouts_total"],
        "pool_size": [m["pool_size"] for m in steps],
        "train_accuracy": [m["accuracy"] for m in steps],
    }


def _spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4), "n": len(values)}


def aggregate(runs: list[dict]) -> dict:
    """Mean and spread over seeds; `n` says how many seeds reached the target."""
    eval_steps = sorted(set.intersection(*(set(r["heldout_accuracy"]) for r in runs)))
    return {
        "heldout_accuracy": {s: _spread([r["heldout_accuracy"][s] for r in runs]) for s in eval_steps},
        "heldout_gain": _spread([r["heldout_accuracy"][eval_steps[-1]] - r["heldout_accuracy"][0] for r in runs]),
        "steps_to_target": _spread([r["steps_to_target"] for r in runs]),
        "rollouts_to_target": _spread([r["rollouts_to_target"] for r in runs]),
        "zero_adv_frac": _spread([statistics.fmean(r["zero_adv_frac"]) for r in runs]),
        "informative_groups_per_step": _spread([statistics.fmean(r["informative_groups"]) for r in runs]),
        "rollouts_total": _spread([r["rollouts_total"] for r in runs]),
    }


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve_ax, zero_ax, info_ax) = plt.subplots(1, 3, figsize=(14, 3.8))
    for name, result in summary["methods"].items():
        curve = result["aggregate"]["heldout_accuracy"]
        steps = [int(s) for s in curve]
        mean = [curve[s]["mean"] for s in curve]
        std = [curve[s]["std"] for s in curve]
        line, = curve_ax.plot(steps, mean, marker="o", label=name)
        curve_ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                              color=line.get_color(), alpha=0.15)
        for key, ax in (("zero_adv_frac", zero_ax), ("informative_groups", info_ax)):
            per_step = list(zip(*(run[key] for run in result["seeds"].values())))
            ax.plot(range(1, len(per_step) + 1), [statistics.fmean(v) for v in per_step], label=name)
    curve_ax.axhline(summary["target"], color="gray", linestyle=":", linewidth=0.8)
    curve_ax.set(title="held-out math accuracy (avg@k), mean +- std", xlabel="step")
    zero_ax.set(title="zero-advantage group share", xlabel="step")
    info_ax.set(title="informative groups per step", xlabel="step")
    curve_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="training steps (one math stage)")
    parser.add_argument("--eval-every", dest="eval_every", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.7, help="held-out math accuracy to reach")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--math-pool", dest="math_pool", type=int, default=None,
                        help="train on the first N math prompts only (a pool that becomes easy sooner)")
    parser.add_argument("--out", default="runs/srpo_vs_grpo.json")
    parser.add_argument("overrides", nargs="*", help="extra trainer config overrides, key=value")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    methods = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = prepare(Path(tmp), args.math_pool)
        for name in args.methods:
            seeds = {}
            for seed in args.seeds:
                seeds[seed] = run_one(name, seed, env, Path(tmp), args)
                print(json.dumps({"method": name, "seed": seed, "heldout_accuracy": seeds[seed]["heldout_accuracy"]}),
                      file=sys.stderr, flush=True)
            methods[name] = {"aggregate": aggregate(list(seeds.values())), "seeds": seeds}
    summary = {"target": args.target, "steps": args.steps, "math_pool": args.math_pool, "seeds": args.seeds,
               "overrides": args.overrides, "methods": methods}
    out.write_text(json.dumps(summary, indent=2))
    plot(json.loads(out.read_text()), out.with_suffix(".png"))  # the JSON round trip makes keys strings
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
