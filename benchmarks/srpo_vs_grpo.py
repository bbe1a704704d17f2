"""SRPO (history resampling) vs plain GRPO vs DAPO-style dynamic sampling on the tiny CPU task.

Each method trains from the same SFT-warmed model with the same seeds; its checkpoints are
evaluated on held-out problems (avg@k through vLLM and the real rewards), because training-batch
accuracy is biased under resampling. Prints JSON per method: steps and rollouts to reach the
target held-out accuracy, the accuracy curve, and the zero-advantage group fraction over training;
writes a PNG next to `--out`.

    .venv/bin/python benchmarks/srpo_vs_grpo.py [--steps 16 --eval-every 4 --target 0.5 --out runs/srpo_vs_grpo.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_runs import REPO, prepare, train  # noqa: E402

METHODS = {
    "srpo": ["training.history_resampling=true"],
    "grpo": ["training.history_resampling=false"],
    "dapo": ["training.history_resampling=false", "training.dynamic_sampling=true"],
}


def held_out_accuracy(model: str, eval_file: str, k: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "srpo_megatron.eval", "--model", model, "--math", eval_file, "--k", str(k),
           "--temperature", "1.0", "--top-p", "1.0", "--max-tokens", "48", "--max-model-len", "512",
           "--dtype", "float32", "--enforce-eager", "--cpu-kvcache-gib", "0.5", "--suffix", "", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return json.loads(out.read_text())["pass@1"]


def run_method(name: str, env: dict, root: Path, args) -> dict:
    run_dir = root / name
    metrics = train(env, run_dir, METHODS[name] + [f"training.steps={args.steps}",
                                                    f"training.save_every={args.eval_every}"])
    eval_file = str(Path(env["SRPO_TINY_DATA"]) / "eval_math.jsonl")
    curve = {0: held_out_accuracy(env["SRPO_TINY_MODEL"], eval_file, args.k, root / f"{name}-0.json")}
    for ckpt in sorted((run_dir / "checkpoints").glob("step_*")):
        step = int(ckpt.name.split("_")[1])
        curve[step] = held_out_accuracy(str(ckpt), eval_file, args.k, root / f"{name}-{step}.json")
    rollouts, cumulative = {0: 0}, 0
    for m in metrics:
        cumulative += m["rollouts"]
        rollouts[m["step"]] = cumulative
    reached = next((s for s in sorted(curve) if curve[s] >= args.target), None)
    return {"heldout_accuracy": curve, "steps_to_target": reached,
            "rollouts_to_target": rollouts.get(reached) if reached is not None else None,
            "zero_adv_frac": [m["zero_adv_frac"] for m in metrics],
            "train_accuracy": [m["accuracy"] for m in metrics], "pool_size": [m["pool_size"] for m in metrics]}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, result in results.items():
        curve = result["heldout_accuracy"]
        left.plot(list(curve), list(curve.values()), marker="o", label=name)
        right.plot(range(1, len(result["zero_adv_frac"]) + 1), result["zero_adv_frac"], label=name)
    left.set(title="held-out math accuracy (avg@k)", xlabel="step")
    right.set(title="zero-advantage group fraction", xlabel="step")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--out", default="runs/srpo_vs_grpo.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = prepare(Path(tmp))
        results = {name: run_method(name, env, Path(tmp), args) for name in args.methods}
    summary = {"target": args.target, "steps": args.steps, "methods": results}
    out.write_text(json.dumps(summary, indent=2))
    plot(results, out.with_suffix(".png"))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
