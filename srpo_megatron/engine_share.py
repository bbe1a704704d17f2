"""Rollout work split over rollout engines: which prompts a rank's engine samples (`EngineShare`),
seeded how, how its rollouts are scored, and the gather that puts every engine's results back in
prompt order. Training (`replica.py`) splits a data-parallel replica's prompts over its
model-parallel group; held-out evaluation (`held_out.py`) splits the held-out sets over every
rank of the job.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from srpo_megatron.config import DataConfig
from srpo_megatron.rewards.combine import RewardScorer
from srpo_megatron.rollout import Rollout
from srpo_megatron.rollout.batch import Sample

Item = tuple[str, int]  # (domain, row index)


@dataclass(frozen=True)
class EngineShare:
    """This rank's slice of a group's prompts: the group's ranks form `count` rollout engines of
    `engine_size` consecutive ranks; the ranks of one engine see the same prompts and seed, and
    its first rank (the leader) keeps and scores the results."""

    index: int
    count: int
    leader: bool

    @classmethod
    def of(cls, group: dist.ProcessGroup | None, engine_size: int) -> EngineShare:
        """This rank's share of `group`'s prompts (None: every rank of the job)."""
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        return cls(rank // engine_size, size // engine_size, rank % engine_size == 0)

    def pick(self, items: list[Item]) -> list[Item]:
        return items[self.index::self.count]

    def generate(self, engine, texts: list[str], n: int | None, seed_key: str) -> list[Rollout]:
        """Sample `texts` on this rank's engine, seeded by `seed_key`; the ranks of a vLLM TP group
        other than its leader return nothing (the leader scores and shares them)."""
        torch.manual_seed(zlib.crc32(seed_key.encode()))
        engine.wake_up()
        rollouts = engine.generate(texts, n=n) if texts else []
        engine.sleep()
        return rollouts if self.leader else []

    def gather(self, rollouts: list[Rollout], samples: list[Sample], group: dist.ProcessGroup) -> list[Sample]:
        """Every engine's samples of `group` (collective), in the group's prompt order: this
        engine's prompt p is the group's prompt `index + count * p`."""
        local = [(self.index + self.count * r.prompt_index, r.sample_index, s) for r, s in zip(rollouts, samples)]
        gathered = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, local, group=group)
        return [sample for *_, sample in sorted((x for part in gathered for x in part), key=lambda x: x[:2])]


def prompt_texts(rows_by_domain: dict[str, list[dict]], items: list[Item], data: DataConfig) -> list[str]:
    """Each item's prompt with its domain's instruction (`data.<domain>_instruction`)."""
    instructions = {"math": data.math_instruction, "code": data.code_instruction}
    return [rows_by_domain[d][i]["prompt"] + instructions[d] for d, i in items]


def score_rollouts(scorer: RewardScorer, rows_by_domain: dict[str, list[dict]], items: list[Item],
                   rollouts: list[Rollout]) -> tuple[list[dict], list]:
    """(each rollout's row, its score)."""
    rows = [rows_by_domain[d][i] for d, i in (items[r.prompt_index] for r in rollouts)]
    return rows, (scorer.score(rows, [r.response_text for r in rollouts]) if rollouts else [])

