"""What a preprocessing run writes besides the datasets: report.json, the rejects file, the
difficulty histogram.

report.json, per domain: `read` (rows read), `kept`, `dropped` (count per reason, every reason of
the domain listed, zeros included), `output` (the parquet file), and when graded `difficulty`
(bucket counts of the kept rows). Top level: `inputs`, `settings`, `histogram`, `rejects`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from srpo_megatron.preprocess.difficulty import BUCKETS
from srpo_megatron.preprocess.schemas import REASONS, Problem, Reject

HISTOGRAM_FILE = "difficulty.png"
REJECTS_FILE = "rejects.jsonl"
REPORT_FILE = "report.json"


def domain_report(
    domain: str, read: int, kept: Sequence[Problem], rejects: Iterable[Reject], output: str, graded: bool
) -> dict[str, Any]:
    counts = Counter(r.reason for r in rejects if r.domain == domain)
    report: dict[str, Any] = {
        "read": read,
        "kept": len(kept),
        "dropped": {reason: counts.get(reason, 0) for reason in REASONS[domain]},
        "output": output,
    }
    if graded:
        buckets = Counter(p.difficulty for p in kept)
        report["difficulty"] = {bucket: buckets.get(bucket, 0) for bucket in BUCKETS}
    return report


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_rejects(path: Path, rejects: Iterable[Reject]) -> None:
    """One JSON line per dropped row: domain, reason, detail, origin (`file:row`), id, and the row."""
    with path.open("w") as f:
        for r in rejects:
            entry = {"domain": r.domain, "reason": r.reason, "detail": r.detail, "origin": r.origin,
                     "id": r.id, "row": r.row}
            f.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")


def plot_difficulty(path: Path, graded: Mapping[str, Sequence[Problem]], samples: int, too_easy: set[int]) -> None:
    """Histogram of pass rates (K + 1 possible values) per domain; dropped `too_easy` rows stacked on top.

    `too_easy` holds `id()`s of the graded problems that were dropped.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    domains = [d for d, problems in graded.items() if problems]
    fig, axes = plt.subplots(1, max(1, len(domains)), figsize=(5 * max(1, len(domains)), 3.5), squeeze=False)
    levels = [i / samples for i in range(samples + 1)]
    for ax, domain in zip(axes[0], domains):
        kept = Counter(round(p.pass_rate * samples) for p in graded[domain] if id(p) not in too_easy)
        dropped = Counter(round(p.pass_rate * samples) for p in graded[domain] if id(p) in too_easy)
        width = 0.8 / samples
        kept_heights = [kept.get(i, 0) for i in range(samples + 1)]
        ax.bar(levels, kept_heights, width=width, label="kept")
        ax.bar(levels, [dropped.get(i, 0) for i in range(samples + 1)], width=width, bottom=kept_heights,
               label="dropped (too easy)")
        ax.set_title(f"{domain}: {len(graded[domain])} problems graded")
        ax.set_xlabel(f"pass rate ({samples} samples)")
        ax.set_ylabel("problems")
        ax.legend()
    if not domains:
        axes[0][0].set_title("no problems graded")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
