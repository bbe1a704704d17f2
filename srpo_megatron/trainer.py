"""The SRPO trainer: the loop of DESIGN.md section 2, one named, timed phase after another.

    draw: rollout -> reward -> record_history   (DAPO dynamic sampling may draw again)
    advantages [-> old_logprobs] [-> ref_logprobs] -> update -> sync -> metrics -> checkpoint

(`old_logprobs` only when the update is not exactly on-policy: see `Trainer.on_policy`.)

Each phase is one call timed under its metric's name: `t_rollout`, `t_reward`, `t_record_history`,
`t_advantages`, `t_old_logprobs`, `t_ref_logprobs`, `t_update`, `t_sync`; `t_train` is the
log-prob and update phases together and `t_step` the whole step. From `advantages` on, the phases
pass one typed `RolloutBatch`, which lives on the host (its docstring states the device rule).

Parallel layout: Megatron TP x PP x DP. Every rank also runs a rollout engine; a data-parallel
replica's prompts are split over its TP x PP ranks for generation and scoring, then all-gathered
inside the model-parallel group so every rank of the replica trains on identical rollouts
(`replica.py`). Held-out accuracy (`held_out.py`) is measured before the first step, at stage
changes, every `training.eval_every` steps and after the last; checkpoints are `checkpoint.py`'s.
"""

from __future__ import annotations

import dataclasses
import socket
from functools import partial
from pathlib import Path

import torch

from srpo_megatron import platform
from srpo_megatron.algorithms import compute_advantages
from srpo_megatron.checkpoint import (ResumeRequest, checkpoint_info, restore_trainer_state, resume_checkpoint,
                                      save_checkpoint, trainer_state)
from srpo_megatron.config import TrainConfig
from srpo_megatron.data.dataset import load_rows
from srpo_megatron.held_out import HeldOutEval, load_held_out_rows
from srpo_megatron.loop_control import PhaseTimer, StopSignal, due
from srpo_megatron.metrics import MetricsLogger
from srpo_megatron.models import model_shape, padded_vocab_size
from srpo_megatron.models.forward import compute_logprobs
from srpo_megatron.policy import UpdateSettings, build_policy, build_reference, update_policy
from srpo_megatron.replica import ReplicaRollouts, replica_metrics, replica_schedule
from srpo_megatron.rewards.combine import RewardScorer
from srpo_megatron.rollout import RolloutEngine
from srpo_megatron.rollout.batch import RolloutBatch, Sample
from srpo_megatron.rollout.tp_gather import tensor_parallel_gather
from srpo_megatron.rollout.weight_sync import sync_weights


class Trainer:
    """One rank's SRPO run: its policy shard, reference, rollout engine, scorer and stage schedule."""

    def __init__(self, config: TrainConfig, resume: str | ResumeRequest | None = None, engine=None):
        """`engine`: the rollout engine, by default vLLM's (`RolloutEngine`); the GPU tests pass
        recorded rollouts where vLLM's CUDA build is not installed."""
        from transformers import AutoConfig

        self.config = config
        model_cfg, train_cfg = config.model, config.training
        self.ctx = ctx = platform.init_distributed(model_cfg.tensor_parallel, model_cfg.pipeline_parallel,
                                                   seed=train_cfg.seed)
        _announce(ctx)
        self.shape = model_shape(AutoConfig.from_pretrained(model_cfg.hf_path))
        self.vocab_padded = padded_vocab_size(self.shape.vocab_size, model_cfg.tensor_parallel)
        rows = {d: load_rows(getattr(config.data, d), d) for d in ("math", "code") if getattr(config.data, d)}
        held_out_rows = load_held_out_rows(config.data)  # all data checked before the model is built
        self.model, self.optimizer = build_policy(self.shape, model_cfg, config.optimizer, self.vocab_padded)
        wants_reference = config.loss.kl_coef > 0 or train_cfg.reference_model
        self.reference = build_reference(self.shape, model_cfg, self.vocab_padded) if wants_reference else None
        # One update per step from the rollout weights: the update's own forward gives the old
        # log-probs, so the separate `old_logprobs` pass is skipped (kept beside a reference model).
        self.on_policy = train_cfg.updates_per_step == 1 and self.reference is None
        self.engine = engine or RolloutEngine(model_cfg.hf_path, config.rollout)
        self.gather = tensor_parallel_gather()  # kept for every sync (on CPU it joins shared memory)
        self.scorer = RewardScorer(config.reward)
        self.scheduler, self.sampling = replica_schedule(config, rows, ctx)
        self.rollouts = ReplicaRollouts(rows, self.engine, self.scorer, config, ctx.dp_rank)
        self.held_out = HeldOutEval(held_out_rows, self.engine, self.scorer, config)
        self.step, self.rollouts_total = 0, 0  # rollouts_total: generated since the run began, all replicas
        self.run_dir = Path(train_cfg.run_dir)
        self._resume(resume)
        self.logger = MetricsLogger(self.run_dir) if ctx.rank == 0 else None

    def _resume(self, resume: str | ResumeRequest | None) -> None:
        state = resume_checkpoint(self.run_dir, resume, self.model.module, self.optimizer)
        if state is not None:  # None: a fresh run, or --resume auto before the first save
            self.step, self.rollouts_total = restore_trainer_state(state, self.scheduler)
            self.sync()

    def train(self) -> None:
        from tqdm import tqdm

        stop = StopSignal()
        total, started, stop_after = self.config.training.steps, self.step, self.config.training.stop_after
        if self.step == 0 and self.held_out.rows:  # where the policy starts
            baseline = {"step": 0, "stage": self.scheduler.stage.name, **self.held_out(self.step)}
            if self.logger:
                self.logger.log(baseline)
        with tqdm(total=total, initial=self.step, desc="srpo", disable=self.ctx.rank != 0) as bar:
            while self.step < total:
                metrics = self.train_step()
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", acc=f"{metrics['accuracy']:.3f}")
                if due(self.config.training.save_every, self.step) or stop.agreed() or self.step == total:
                    self.save()
                if stop.requested or (stop_after and self.step - started >= stop_after):
                    break
        if self.logger:
            self.logger.close()

    def train_step(self) -> dict:
        """One step of the algorithm, one phase per line (see the module docstring)."""
        timer, stage = PhaseTimer(), self.scheduler.stage.name
        with timer("t_step"):
            samples, generated = self.sampling(partial(self.draw, timer))  # rollout, reward, record_history
            batch = timer.run("t_advantages", self.advantages, samples)
            if not self.on_policy:
                batch = timer.run("t_old_logprobs", self.old_logprobs, batch)
            if self.reference is not None:
                batch = timer.run("t_ref_logprobs", self.ref_logprobs, batch)
            settings = UpdateSettings.for_step(self.config, self.step, self.shape.vocab_size)
            loss_metrics, own = timer.run("t_update", update_policy, self.model, self.optimizer, batch, settings)
            if self.on_policy:  # the update's forward log-probs are the old ones: for logprob_diff
                batch = dataclasses.replace(batch, old_logprobs=own)
            timer.run("t_sync", self.sync)
        self.step += 1
        metrics = {"step": self.step, "stage": stage, **replica_metrics(
            self.ctx, samples, batch, loss_metrics, generated, self.config.training.micro_batch_size,
            timer.seconds["t_step"]), "pool_size": self.scheduler.pool_size()}
        self.rollouts_total += metrics["rollouts"]
        metrics |= {"rollouts_total": self.rollouts_total, **timer.metrics(),
                    "stage_changed": self.scheduler.update(self.step)}
        if self.held_out.due(self.step, metrics["stage_changed"]):
            metrics |= self.held_out(self.step)
        if self.logger:
            self.logger.log(metrics)
        return metrics

    def draw(self, timer: PhaseTimer) -> list[Sample]:
        """One draw of this replica's prompts through the first three phases."""
        prompts = self.scheduler.next_batch()
        items = self.rollouts.items(prompts)
        rollouts = timer.run("t_rollout", self.rollouts.generate, items, self.step)
        samples = timer.run("t_reward", self.rollouts.score, items, rollouts, self.scheduler.recorded_in_earlier_epoch)
        timer.run("t_record_history", self.record_history, prompts, samples)
        return samples

    def record_history(self, prompts: dict[str, list[int]], samples: list[Sample]) -> None:
        """Per-prompt rollout correctness into the history-resampling sampler (collective)."""
        outcomes = [(s.domain, s.row_index, s.accuracy >= 1.0) for s in samples]
        self.scheduler.record_rollouts(prompts, outcomes, self.config.rollout.n_samples_per_prompt)

    def advantages(self, samples: list[Sample]) -> RolloutBatch:
        """The step's batch, with group-relative advantages."""
        cfg = self.config
        batch = RolloutBatch.pack(samples, cfg.rollout.n_samples_per_prompt,
                                  cfg.training.micro_batch_size * cfg.training.updates_per_step)
        adv = compute_advantages(batch.rewards, batch.group_size, cfg.advantage, truncated=batch.truncated,
                                 unscored=batch.unscored)
        return batch.with_advantages(adv.advantages)

    def old_logprobs(self, batch: RolloutBatch) -> RolloutBatch:
        """Log-probs of the rollout policy, which the current weights are."""
        return dataclasses.replace(batch, old_logprobs=self._logprobs(self.model.module, batch))

    def ref_logprobs(self, batch: RolloutBatch) -> RolloutBatch:
        return dataclasses.replace(batch, ref_logprobs=self._logprobs(self.reference, batch))

    def _logprobs(self, model, batch: RolloutBatch) -> torch.Tensor | None:
        """[N, T] on the host, on the last pipeline stage; None on the others."""
        training = self.config.training
        plan = batch.plan(range(batch.num_rows), training.micro_batch_size, training.max_tokens_per_micro_batch)
        micro = batch.gather(plan, ("tokens",), training.pack_sequences, training.share_prompts)
        parts = compute_logprobs(model, micro, self.shape.vocab_size, self.config.rollout.temperature or 1.0)
        return batch.scatter(plan, parts) if parts else None

    def sync(self) -> None:
        """The new policy -> the rollout engine. Only the weights wake up for it: the KV cache
        comes back with the next generate, so it never shares memory with the swap."""
        self.engine.wake_up(["weights"])
        sync_weights(self.model.module, self.engine, self.shape, self.vocab_padded, gather=self.gather)

    def save(self) -> Path:
        state = trainer_state(self.step, self.rollouts_total, self.scheduler)
        return save_checkpoint(self.run_dir, self.step, self.model.module, self.optimizer, state,
                               checkpoint_info(self.config.model, self.vocab_padded), self.config.model.hf_path)

    def close(self) -> None:
        self.scorer.close()
        self.engine.shutdown()


def _announce(ctx: platform.DistributedContext) -> None:
    """One line per rank: on multi-node jobs it shows where every rank landed."""
    print(f"srpo rank {ctx.rank}/{ctx.world_size} host={socket.gethostname()} local_rank={ctx.local_rank} "
          f"tp={ctx.tp_rank} pp={ctx.pp_rank} dp={ctx.dp_rank} device={platform.device()}", flush=True)

