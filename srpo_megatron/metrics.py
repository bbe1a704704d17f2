"""Metric sinks: one JSON line per step, TensorBoard, optionally W&B; plus shared formulas."""

from __future__ import annotations

import json
import re
from pathlib import Path

REFLECTION = re.compile(r"\b(wait|let me check|let me verify|verify|double[- ]check|re-?check|"
                        r"hmm|on second thought)\b", re.IGNORECASE)


def is_reflective(text: str) -> bool:
    """Whether a response shows self-verification ("wait", "let me check", ...), SRPO's signal."""
    return bool(REFLECTION.search(text))


def tokens_per_s(num_tokens: int, seconds: float) -> float:
    return num_tokens / seconds if seconds > 0 else 0.0


class MetricsLogger:
    """Writes step metrics to `<run_dir>/metrics.jsonl` and TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: str | Path, use_wandb: bool = False, project: str = "srpo"):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.dir / "metrics.jsonl", "a")
        self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        self._wandb = None
        if use_wandb:
            import wandb

            self._wandb = wandb.init(project=project, dir=str(self.dir))

    def log(self, metrics: dict) -> None:
        step = metrics["step"]
        self._jsonl.write(json.dumps(metrics) + "\n")
        self._jsonl.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "step":
                self._tb.add_scalar(key, value, step)
        self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()
