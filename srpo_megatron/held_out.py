"""Held-out evaluation during training: avg@k accuracy per domain on `data.eval_math` and
`data.eval_code`, logged as `eval/accuracy/<domain>`. Every rollout engine of the job samples and
scores a share of the held-out problems; the per-domain totals are summed over all ranks.
(`srpo_megatron.eval` is the standalone evaluation of a model directory.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from srpo_megatron import platform
from srpo_megatron.config import DataConfig, TrainConfig
from srpo_megatron.data.dataset import load_rows
from srpo_megatron.engine_share import EngineShare, prompt_texts, score_rollouts
from srpo_megatron.loop_control import due


def load_held_out_rows(data: DataConfig) -> dict[str, list[dict]]:
    """The held-out rows per domain that has files."""
    return {d: load_rows(files, d) for d, files in (("math", data.eval_math), ("code", data.eval_code)) if files}


class HeldOutEval:
    """avg@k accuracy on the held-out sets; every rollout engine scores a share of them."""

    def __init__(self, rows: dict[str, list[dict]], engine, scorer, config: TrainConfig):
        """`rows`: `load_held_out_rows`'s (none: evaluation is never due)."""
        self.rows, self.engine, self.scorer = rows, engine, scorer
        self.data, self.training = config.data, config.training
        self.share = EngineShare.of(None, config.rollout.tensor_parallel_size)  # all ranks

    def due(self, step: int, stage_changed: bool) -> bool:
        """Whether to evaluate after `step`: at a stage change, every `training.eval_every` steps
        and after the last step."""
        last = step == self.training.steps
        return bool(self.rows) and (stage_changed or last or due(self.training.eval_every, step))

    def __call__(self, step: int) -> dict:
        """`eval/accuracy/<domain>` of the policy after `step` steps (collective). Reseeded per
        (step, engine): a resumed run samples exactly what it would have."""
        share = self.share
        items = share.pick([(d, i) for d, rows in self.rows.items() for i in range(len(rows))])
        seed_key = f"eval/{self.training.seed}/{step}/{share.index}"
        texts = prompt_texts(self.rows, items, self.data)
        rollouts = share.generate(self.engine, texts, self.training.eval_samples, seed_key)
        return held_out_accuracy(*score_rollouts(self.scorer, self.rows, items, rollouts), sorted(self.rows))


def held_out_accuracy(rows: list[dict], scores: list, domains: list[str]) -> dict:
    """Mean accuracy per domain over every rank's scored held-out rollouts (collective)."""
    totals = torch.zeros(2 * len(domains), dtype=torch.float64, device=platform.device())  # NCCL needs CUDA
    for row, score in zip(rows, scores):
        index = domains.index(row["domain"])
        totals[2 * index] += score.accuracy
        totals[2 * index + 1] += 1
    dist.all_reduce(totals)
    return {f"eval/accuracy/{d}": (totals[2 * i] / totals[2 * i + 1].clamp(min=1)).item()
            for i, d in enumerate(domains)}
