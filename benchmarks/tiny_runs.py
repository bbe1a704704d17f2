"""Shared by the benchmarks: prepare the tiny CPU task and run the trainer on it under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples/tiny_cpu/config.yaml"


def prepare(out: Path, math_pool: int | None = None) -> dict[str, str]:
    """Synthetic data and the SFT-warmed tiny model (cached); returns the env the config reads.

    `math_pool` keeps only the first N math training rows. The file is cut after it is written,
    so the warm-up corpus, the warm-up model and the held-out set stay those of the full task."""
    data = out / "data"
    subprocess.run([sys.executable, str(REPO / "examples/tiny_cpu/make_data.py"), "--out", str(data)],
                   check=True, capture_output=True)
    sft = subprocess.run([sys.executable, str(REPO / "tools/sft_warmup.py"), "--data", str(data),
                          "--out", str(REPO / ".cache/tiny-sft")], check=True, capture_output=True, text=True)
    model = json.loads(sft.stdout.strip().splitlines()[-1])["model"]
    if math_pool is not None:
        path = data / "train_math.jsonl"
        rows = path.read_text().splitlines(keepends=True)
        if not 0 < math_pool <= len(rows):
            raise ValueError(f"math_pool={math_pool} must be in [1, {len(rows)}] (rows in {path})")
        path.write_text("".join(rows[:math_pool]))
    return {"SRPO_TINY_MODEL": model, "SRPO_TINY_DATA": str(data)}


def train(env: dict[str, str], run_dir: Path, overrides: list[str], nproc: int = 2) -> list[dict]:
    """Run the tiny SRPO config with overrides; returns its metrics, one dict per step."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "-m", "srpo_megatron.train", "--config", str(CONFIG), f"training.run_dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
