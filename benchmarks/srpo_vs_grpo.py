"""SRPO (history resampling) vs plain GRPO vs DAPO-style dynamic sampling on the tiny CPU task.

Each method trains from the same SFT-warmed model with the same seeds and is scored on the
held-out problems during training (avg@k through vLLM and the real rewards), because
training-batch accuracy is biased under resampling (the pool drops solved prompts). Prints JSON per method: steps and rollouts to reach the
target held-out accuracy, the accuracy curve, and the zero-advantage group fraction over training;
writes a PNG next to `--out`.

    .venv/bin/python benchmarks/srpo_vs_grpo.py [--stage-steps 36 12 --eval-every 6 --target 0.48 --out runs/srpo_vs_grpo.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_runs import prepare, train  # noqa: E402

METHODS = {
    "srpo": ["training.history_resampling=true"],
    "grpo": ["training.history_resampling=false"],
    "dapo": ["training.history_resampling=false", "training.dynamic_sampling=true"],
}


def run_method(name: str, env: dict, root: Path, args) -> dict:
    """Train one method; the trainer scores the held-out sets every `eval_every` steps."""
    first, second = args.stage_steps
    stages = (f"stages=[{{name: stage1_math, mixture: {{math: 1.0}}, steps: {first}}}, "
              f"{{name: stage2_math_code, mixture: {{math: 0.5, code: 0.5}}, steps: {second}}}]")
    metrics = train(env, root / name, METHODS[name] + [
        stages, f"training.steps={first + second}", f"training.eval_every={args.eval_every}",
        "training.save_every=0"])
    curve = {m["step"]: m[f"eval/accuracy/{args.domain}"] for m in metrics if f"eval/accuracy/{args.domain}" in m}
    steps = [m for m in metrics if "rollouts" in m]
    rollouts, cumulative = {0: 0}, 0
    for m in steps:
        cumulative += m["rollouts"]
        rollouts[m["step"]] = cumulative
    reached = next((s for s in sorted(curve) if curve[s] >= args.target), None)
    return {"heldout_accuracy": curve, "steps_to_target": reached,
            "rollouts_to_target": rollouts.get(reached) if reached is not None else None,
            "zero_adv_frac": [m["zero_adv_frac"] for m in steps],
            "train_accuracy": [m["accuracy"] for m in steps], "pool_size": [m["pool_size"] for m in steps]}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, result in results.items():
        curve = result["heldout_accuracy"]
        left.plot(list(curve), list(curve.values()), marker="o", label=name)
        right.plot(range(1, len(result["zero_adv_frac"]) + 1), result["zero_adv_frac"], label=name)
    left.set(title="held-out accuracy (avg@k)", xlabel="step")
    right.set(title="zero-advantage group fraction", xlabel="step")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage-steps", nargs=2, type=int, default=[36, 12], metavar=("STAGE1", "STAGE2"),
                        help="steps per stage; history resampling needs epochs to end (300 prompts / 16 per step)")
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--domain", choices=["math", "code"], default="math", help="held-out set for the target")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--out", default="runs/srpo_vs_grpo.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = prepare(Path(tmp))
        results = {name: run_method(name, env, Path(tmp), args) for name in args.methods}
    summary = {"target": args.target, "stage_steps": args.stage_steps, "methods": results}
    out.write_text(json.dumps(summary, indent=2))
    plot(results, out.with_suffix(".png"))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
