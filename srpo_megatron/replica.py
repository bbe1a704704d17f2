"""What a data-parallel replica does as one: its schedule of prompts (`replica_schedule`), its
rollout and reward phases, split over the rollout engines of its model-parallel group and
all-gathered so that every rank of the replica trains on identical samples (`ReplicaRollouts`),
and its report of the step's metrics (`replica_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.distributed as dist

from srpo_megatron import platform
from srpo_megatron.config import TrainConfig
from srpo_megatron.data import StageScheduler, draw_informative, draw_once
from srpo_megatron.data.stages import history_sampler_factory
from srpo_megatron.engine_share import EngineShare, Item, prompt_texts, score_rollouts
from srpo_megatron.metrics import ReplicaRecord, is_reflective, reduce_step
from srpo_megatron.rewards.combine import RewardScorer
from srpo_megatron.rollout import Rollout
from srpo_megatron.rollout.batch import RolloutBatch, Sample


def replica_schedule(config: TrainConfig, rows: dict[str, list[dict]],
                     ctx: platform.DistributedContext) -> tuple[StageScheduler, Callable]:
    """This replica's stage schedule over the training `rows`, and how a step's rollouts are drawn
    from it: once, or DAPO's refill over draws (`training.sampler`)."""
    training = config.training
    factory = history_sampler_factory({d: len(r) for d, r in rows.items()}, ctx.dp_rank, ctx.data_parallel,
                                      training.seed, enabled=training.sampler == "history_resampling")
    scheduler = StageScheduler(config.stages, config.data.prompts_per_step, factory, ctx.data_parallel)
    if training.sampler != "dynamic_sampling":
        return scheduler, draw_once
    return scheduler, partial(draw_informative, group_size=config.rollout.n_samples_per_prompt,
                              extra_draws=training.dynamic_sampling_rounds)


class ReplicaRollouts:
    """The `rollout` and `reward` phases of this rank's replica over the training rows."""

    def __init__(self, rows: dict[str, list[dict]], engine, scorer: RewardScorer, config: TrainConfig,
                 dp_rank: int):
        from megatron.core import parallel_state as ps

        self.rows, self.engine, self.scorer, self.dp_rank = rows, engine, scorer, dp_rank
        self.data, self.seed = config.data, config.training.seed
        self.group = ps.get_model_parallel_group()
        self.share = EngineShare.of(self.group, config.rollout.tensor_parallel_size)

    def items(self, prompts: dict[str, list[int]]) -> list[Item]:
        """This engine's share of the replica's prompts."""
        return self.share.pick([(d, i) for d, ids in prompts.items() for i in ids])

    def generate(self, items: list[Item], step: int) -> list[Rollout]:
        """This engine's prompts, G samples each. Reseeded per (step, replica, engine): a resumed
        run samples exactly what it would have."""
        seed_key = f"{self.seed}/{step}/{self.dp_rank}/{self.share.index}"
        return self.share.generate(self.engine, prompt_texts(self.rows, items, self.data), None, seed_key)

    def score(self, items: list[Item], rollouts: list[Rollout], revisited: Callable[[str, int], bool]) -> list[Sample]:
        """Score this engine's rollouts, then all-gather them inside the model-parallel group so
        every rank of the replica holds the replica's samples, in prompt order. `revisited(domain,
        index)`: whether the prompt was served in an earlier epoch of the stage."""
        _, scores = score_rollouts(self.scorer, self.rows, items, rollouts)
        samples = [to_sample(item, r, s, revisited(*item))
                   for r, s in zip(rollouts, scores) for item in [items[r.prompt_index]]]
        return self.share.gather(rollouts, samples, self.group)


def to_sample(item: Item, rollout: Rollout, score, revisited: bool) -> Sample:
    return Sample(domain=item[0], row_index=item[1], prompt_ids=rollout.prompt_token_ids,
                  response_ids=rollout.response_token_ids, rollout_logprobs=rollout.logprobs.tolist(),
                  truncated=rollout.finish_reason == "length", reward=score.reward, accuracy=score.accuracy,
                  reflective=is_reflective(rollout.response_text), revisited=revisited, scored=score.scored)


def replica_metrics(ctx: platform.DistributedContext, samples: list[Sample], batch: RolloutBatch,
                    loss_metrics: dict, generated: int, micro_batch_size: int, step_seconds: float) -> dict:
    """Everything about this step, over all data-parallel replicas (the step's one metrics
    collective): one rank per replica (TP rank 0 of the last pipeline stage, which has the
    log-probs and loss metrics) reports."""
    local = None
    if ctx.is_last_pp_stage and ctx.tp_rank == 0:
        local = ReplicaRecord(tuple(s.metrics_record() for s in samples), batch.zero_groups(), generated,
                              batch.update_record(loss_metrics, micro_batch_size))
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    return reduce_step([r for r in everyone if r is not None], step_seconds)
