"""tools/run_summary.py: held-out curves, pool changes and signal counts from a run's metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tools.run_summary import summarize

ROOT = Path(__file__).resolve().parents[1]


def _metrics() -> list[dict]:
    """Two stages; the stage-1 pool shrinks twice; evaluations at 0, 2 and 4."""
    evals = {0: {"eval/accuracy/math": 0.4, "eval/accuracy/code": 0.3},
             2: {"eval/accuracy/math": 0.5}, 4: {"eval/accuracy/math": 0.6, "eval/accuracy/code": 0.35}}
    pools = {1: ("s1", 10), 2: ("s1", 8), 3: ("s1", 6), 4: ("s2", 20)}
    lines = [{"step": 0, "stage": "s1", **evals[0]}]
    for step, (stage, pool) in pools.items():
        lines.append({"step": step, "stage": stage, "pool_size": pool, "groups": 4, "informative_groups": step % 4,
                      "zero_adv_frac": 1 - (step % 4) / 4, "rollouts_total": 16 * step, "t_step": 2.0,
                      **evals.get(step, {})})
    return lines


def test_summary_reports_curves_gains_and_pool_changes():
    summary = summarize(_metrics())
    assert summary["heldout"] == {"math": {"0": 0.4, "2": 0.5, "4": 0.6}, "code": {"0": 0.3, "4": 0.35}}
    assert summary["heldout_gain"] == {"math": 0.2, "code": 0.05}
    # The stage switch (6 -> 20) is a new pool, not a shrink.
    assert summary["pool_changes"] == [{"step": 2, "stage": "s1", "from": 10, "to": 8},
                                       {"step": 3, "stage": "s1", "from": 8, "to": 6}]
    assert summary["rollouts_total"] == 64 and summary["steps"] == 4
    assert summary["informative_groups_per_step"] == (1 + 2 + 3 + 0) / 4
    assert summary["zero_adv_frac"] == round(1 - 6 / 16, 4)


def test_cli_prints_tables_and_json(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in _metrics()))
    text = subprocess.run([sys.executable, str(ROOT / "tools/run_summary.py"), str(path)], check=True,
                          capture_output=True, text=True).stdout
    assert "after step 4 (s2)" in text and "+0.200" in text and "10 -> 8" in text
    as_json = subprocess.run([sys.executable, str(ROOT / "tools/run_summary.py"), str(path), "--json"],
                             check=True, capture_output=True, text=True).stdout
    assert json.loads(as_json) == summarize(_metrics())
