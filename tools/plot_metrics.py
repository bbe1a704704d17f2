"""Turn a run's metrics.jsonl into PNG curves.

    python tools/plot_metrics.py runs/tiny_cpu/run/metrics.jsonl --out runs/tiny_cpu/run/metrics.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_KEYS = ["accuracy", "accuracy/math", "accuracy/code", "eval/accuracy/math", "eval/accuracy/code",
                "accuracy/revisited", "reward_mean", "response_len_mean", "zero_adv_frac",
                "informative_groups", "pool_size", "rollouts_total", "entropy", "reflection_rate",
                "logprob_diff", "tokens_per_s", "t_step"]
# Metrics present only on some steps (held-out evaluation; revisits once an epoch has passed):
# big markers show where they were measured.
SPARSE_PREFIXES = ("eval/", "accuracy/revisited")


def plot(metrics_file: str | Path, out: str | Path, keys: list[str] = DEFAULT_KEYS) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{metrics_file} has no metrics")
    keys = [k for k in keys if any(isinstance(m.get(k), (int, float)) for m in lines)]
    cols = 3
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    switches = [m["step"] for m in lines if m.get("stage_changed")]
    for ax, key in zip(axes.flat, keys):
        points = [(m["step"], m[key]) for m in lines if isinstance(m.get(key), (int, float))]
        marker = "o" if key.startswith(SPARSE_PREFIXES) else "."
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker)
        for step in switches:
            ax.axvline(step, color="gray", linestyle="--", linewidth=0.8)
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="metrics.jsonl written by the trainer")
    parser.add_argument("--out", default=None, help="PNG path (default: next to metrics.jsonl)")
    parser.add_argument("--keys", nargs="*", default=DEFAULT_KEYS)
    args = parser.parse_args()
    out = args.out or str(Path(args.metrics).with_suffix(".png"))
    print(plot(args.metrics, out, args.keys))


if __name__ == "__main__":
    main()
