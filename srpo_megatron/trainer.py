"""The SRPO trainer: the loop of DESIGN.md section 2, one named phase after another.

    stage -> prompts -> rollout -> score -> advantages -> history record -> old/ref log-probs
          -> update (megatron pipeline schedule, DDP, optimizer) -> sync weights -> metrics
          -> checkpoint

Each phase is timed under the name of its metric (`t_rollout`, `t_reward`, `t_train`, `t_sync`).
Parallel layout: Megatron TP x PP x DP. Every rank also runs a rollout engine; a data-parallel
replica's prompts are split over its TP x PP ranks for generation and scoring, then all-gathered
inside the model-parallel group so every rank of the replica trains on identical rollouts.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from srpo_megatron import platform
from srpo_megatron.algorithms import compute_advantages
from srpo_megatron.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from srpo_megatron.config import TrainConfig
from srpo_megatron.convert.mcore_io import CheckpointInfo
from srpo_megatron.data import DynamicSamplingFilter, StageScheduler
from srpo_megatron.data.dataset import load_rows
from srpo_megatron.data.stages import history_sampler_factory
from srpo_megatron.metrics import (MetricsLogger, ReplicaRecord, SampleRecord, UpdateRecord, is_reflective,
                                   reduce_step)
from srpo_megatron.models import model_shape, padded_vocab_size
from srpo_megatron.models.forward import compute_logprobs
from srpo_megatron.policy import UpdateSettings, build_policy, build_reference, micro_batches, update_policy
from srpo_megatron.rewards.combine import RewardScorer
from srpo_megatron.rollout import RolloutEngine
from srpo_megatron.rollout.weight_sync import sync_weights


@dataclass
class Sample:
    """One rollout with its score: what every later phase reads."""

    domain: str
    row_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    truncated: bool
    reward: float
    accuracy: float
    reflective: bool
    revisited: bool  # the stage's sampler recorded this prompt in an earlier epoch

    def metrics_record(self) -> SampleRecord:
        return SampleRecord(self.domain, self.reward, self.accuracy, len(self.response_ids), self.truncated,
                            self.reflective, self.revisited)


class PhaseTimer:
    """Wall-clock seconds per named phase of one step."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class Trainer:
    def __init__(self, config: TrainConfig, resume: str | None = None):
        from transformers import AutoConfig

        self.config = config
        model_cfg, train_cfg = config.model, config.training
        self.ctx = platform.init_distributed(model_cfg.tensor_parallel, model_cfg.pipeline_parallel,
                                             seed=train_cfg.seed)
        ctx = self.ctx
        # One line per rank: on multi-node jobs it shows where every rank landed.
        print(f"srpo rank {ctx.rank}/{ctx.world_size} host={socket.gethostname()} local_rank={ctx.local_rank} "
              f"tp={ctx.tp_rank} pp={ctx.pp_rank} dp={ctx.dp_rank} device={platform.device()}", flush=True)
        self.shape = model_shape(AutoConfig.from_pretrained(model_cfg.hf_path))
        self.vocab_padded = padded_vocab_size(self.shape.vocab_size, model_cfg.tensor_parallel)
        self.rows = {d: load_rows(getattr(config.data, d), d) for d in ("math", "code") if getattr(config.data, d)}
        self.eval_rows = {d: load_rows(files, d) for d, files in
                          (("math", config.data.eval_math), ("code", config.data.eval_code)) if files}
        self.model, self.optimizer = build_policy(self.shape, model_cfg, config.optimizer, self.vocab_padded)
        wants_reference = config.loss.kl_coef > 0 or train_cfg.reference_model
        self.reference = build_reference(self.shape, model_cfg, self.vocab_padded) if wants_reference else None
        self.engine = RolloutEngine(model_cfg.hf_path, config.rollout)
        self.scorer = RewardScorer(config.reward)
        factory = history_sampler_factory({d: len(r) for d, r in self.rows.items()}, self.ctx.dp_rank,
                                          self.ctx.data_parallel, train_cfg.seed, train_cfg.history_resampling)
        self.scheduler = StageScheduler(config.stages, config.data.prompts_per_step, factory,
                                        self.ctx.data_parallel)
        self.step = 0
        self.rollouts_total = 0  # rollouts generated since the run began, all replicas
        self.run_dir = Path(train_cfg.run_dir)
        self._stop_requested = False
        self._resume(resume)
        self.logger = MetricsLogger(self.run_dir) if self.ctx.rank == 0 else None

    # ---- construction ---------------------------------------------------------------------

    def _resume(self, resume: str | None) -> None:
        if not resume:
            return
        path = latest_checkpoint(self.run_dir) if resume == "auto" else Path(resume)
        if path is None:
            return  # a fresh run: nothing saved yet
        state = load_checkpoint(path, self.model.module, self.optimizer)
        self.step = state["step"]
        self.rollouts_total = state.get("rollouts_total", 0)  # older checkpoints: count from here
        self.scheduler.load_state_dict(state["scheduler"])
        self.sync()

    # ---- the loop -------------------------------------------------------------------------

    def train(self) -> None:
        from tqdm import tqdm

        signal.signal(signal.SIGTERM, self._request_stop)  # Slurm preemption: save, then exit
        total, started = self.config.training.steps, self.step
        stop_after = self.config.training.stop_after
        if self.step == 0 and self.eval_rows:  # where the policy starts
            baseline = {"step": 0, "stage": self.scheduler.stage.name, **self.evaluate()}
            if self.logger:
                self.logger.log(baseline)
        with tqdm(total=total, initial=self.step, desc="srpo", disable=self.ctx.rank != 0) as bar:
            while self.step < total:
                metrics = self.train_step()
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", acc=f"{metrics['accuracy']:.3f}")
                if self._should_save() or self._agree_to_stop() or self.step == total:
                    self.save()
                if self._stop_requested or (stop_after and self.step - started >= stop_after):
                    break
        if self.logger:
            self.logger.close()

    def train_step(self) -> dict:
        timer, step_start = PhaseTimer(), time.perf_counter()
        stage = self.scheduler.stage.name
        with timer("t_rollout"):
            samples, reward_seconds, generated = self.collect_rollouts()
        timer.seconds["t_reward"] = reward_seconds
        batch = self.make_batch(samples)
        with timer("t_train"):
            self.add_old_logprobs(batch)
            loss_metrics = update_policy(self.model, self.optimizer, batch, self._update_settings())
        with timer("t_sync"):
            self.sync()
        self.step += 1
        timer.seconds["t_step"] = time.perf_counter() - step_start
        metrics = self.step_metrics(stage, samples, batch, loss_metrics, generated, timer.seconds)
        self.rollouts_total += metrics["rollouts"]
        metrics["rollouts_total"] = self.rollouts_total
        metrics["stage_changed"] = self.scheduler.update(self.step)
        if self._should_evaluate(metrics["stage_changed"]):
            metrics |= self.evaluate()
        if self.logger:
            self.logger.log(metrics)
        return metrics

    # ---- phases ---------------------------------------------------------------------------

    def sync(self) -> None:
        """The new policy -> the rollout engine. Only the weights wake up for it: the KV cache
        comes back with the next generate, so it never shares memory with the swap."""
        self.engine.wake_up(["weights"])
        sync_weights(self.model.module, self.engine, self.shape, self.vocab_padded)

    def collect_rollouts(self) -> tuple[list[Sample], float, int]:
        """Draw prompts, roll out, score and record history; with DAPO dynamic sampling, keep
        only mixed-reward groups and draw more prompts to refill (a few rounds at most).

        Returns the samples to train on, seconds spent scoring, and rollouts generated."""
        prompts = self.scheduler.next_batch()
        samples, reward_seconds = self.rollout_and_score(prompts)
        self.record_history(prompts, samples)
        generated = len(samples)
        if not self.config.training.dynamic_sampling:
            return samples, reward_seconds, generated
        G = self.config.rollout.n_samples_per_prompt
        dapo = DynamicSamplingFilter(len(samples) // G, G, self.config.training.dynamic_sampling_rounds)
        decision = dapo.update(torch.tensor([s.reward for s in samples]))
        kept = _keep_groups(samples, decision.keep, G)
        # Every replica takes part in every round (the history record is a DP collective).
        while self._sum_over_replicas(int(not decision.done)):
            prompts = self.scheduler.next_batch()
            more, seconds = self.rollout_and_score(prompts)
            self.record_history(prompts, more)
            generated, reward_seconds = generated + len(more), reward_seconds + seconds
            if not decision.done:
                decision = dapo.update(torch.tensor([s.reward for s in more]))
                kept += _keep_groups(more, decision.keep, G)
        return (kept or samples), reward_seconds, generated  # nothing informative: train on zeros

    def _sum_over_replicas(self, value: int) -> int:
        from megatron.core import parallel_state as ps

        total = torch.tensor([value], dtype=torch.long, device=platform.device())  # NCCL needs CUDA
        dist.all_reduce(total, group=ps.get_data_parallel_group())
        return int(total.item())

    def rollout_and_score(self, prompts: dict[str, list[int]]) -> tuple[list[Sample], float]:
        """This replica's prompts, split over its rollout engines, generated, scored, gathered.

        The replica's TP x PP ranks form `shares` engines of `rollout.tensor_parallel_size` ranks
        each; the ranks of one engine see the same prompts and the same seed.
        """
        from megatron.core import parallel_state as ps

        mp_group = ps.get_model_parallel_group()
        mp_rank, mp_size = dist.get_rank(mp_group), dist.get_world_size(mp_group)
        engine_size = self.config.rollout.tensor_parallel_size
        share, shares = mp_rank // engine_size, mp_size // engine_size
        ordered = [(d, i) for d, ids in prompts.items() for i in ids]
        mine = ordered[share::shares]
        # Reseed the sampler per (step, engine): a resumed run samples exactly what it would have.
        seed_key = f"{self.config.training.seed}/{self.step}/{self.ctx.dp_rank}/{share}"
        rollouts, rows, scores, reward_seconds = self._generate_and_score(
            self.rows, mine, None, seed_key, leader=mp_rank % engine_size == 0)
        local = [
            (share + shares * r.prompt_index, r.sample_index, Sample(
                domain=row["domain"], row_index=mine[r.prompt_index][1], prompt_ids=r.prompt_token_ids,
                response_ids=r.response_token_ids, rollout_logprobs=r.logprobs.tolist(),
                truncated=r.finish_reason == "length", reward=s.reward, accuracy=s.accuracy,
                reflective=is_reflective(r.response_text),
                # Asked at draw time: a DAPO refill draw that starts a new epoch would make this
                # step's own earlier prompts look like revisits.
                revisited=self.scheduler.recorded_in_earlier_epoch(*mine[r.prompt_index])))
            for r, row, s in zip(rollouts, rows, scores)
        ]
        gathered = [None] * mp_size
        dist.all_gather_object(gathered, local, group=mp_group)
        merged = sorted((item for part in gathered for item in part), key=lambda item: item[:2])
        return [sample for _, _, sample in merged], reward_seconds

    def _generate_and_score(self, rows_by_domain: dict[str, list[dict]], items: list[tuple[str, int]],
                            n: int | None, seed_key: str, leader: bool):
        """Sample this engine's `items` ((domain, row index) pairs) and score them on the engine's
        leader rank (the other ranks of a vLLM TP group return nothing).

        Returns (rollouts, their rows, their scores, seconds spent scoring)."""
        instructions = {"math": self.config.data.math_instruction, "code": self.config.data.code_instruction}
        texts = [rows_by_domain[d][i]["prompt"] + instructions[d] for d, i in items]
        torch.manual_seed(zlib.crc32(seed_key.encode()))
        self.engine.wake_up()
        rollouts = self.engine.generate(texts, n=n) if texts else []
        self.engine.sleep()
        start = time.perf_counter()
        rollouts = rollouts if leader else []
        rows = [rows_by_domain[items[r.prompt_index][0]][items[r.prompt_index][1]] for r in rollouts]
        scores = self.scorer.score(rows, [r.response_text for r in rollouts]) if rollouts else []
        return rollouts, rows, scores, time.perf_counter() - start

    def record_history(self, prompts: dict[str, list[int]], samples: list[Sample]) -> None:
        """Per-prompt rollout correctness into the history-resampling sampler (collective)."""
        G = self.config.rollout.n_samples_per_prompt
        for domain, ids in prompts.items():
            correct = {i: [] for i in ids}
            for sample in samples:
                if sample.domain == domain:
                    correct[sample.row_index].append(sample.accuracy >= 1.0)
            assert all(len(c) == G for c in correct.values()), "rollouts missing for a prompt"
            self.scheduler.record(domain, ids, [correct[i] for i in ids])

    def make_batch(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Right-padded tensors [N, T]; N padded to whole micro-batches with empty rows."""
        G = self.config.rollout.n_samples_per_prompt
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        truncated = torch.tensor([s.truncated for s in samples])
        adv = compute_advantages(rewards, G, self.config.advantage, truncated=truncated)
        multiple = self.config.training.micro_batch_size * self.config.training.updates_per_step
        n = -(-len(samples) // multiple) * multiple
        length = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
        tokens = torch.zeros(n, length, dtype=torch.long)
        mask = torch.zeros(n, length, dtype=torch.bool)
        rollout_lp = torch.zeros(n, length)
        for row, s in enumerate(samples):
            p, r = len(s.prompt_ids), len(s.response_ids)
            tokens[row, : p + r] = torch.tensor(s.prompt_ids + s.response_ids)
            mask[row, p: p + r] = True
            rollout_lp[row, p: p + r] = torch.tensor(s.rollout_logprobs)
        advantages = torch.zeros(n)
        advantages[: len(samples)] = adv.advantages
        # Zero-reward-variance groups, and groups whose only outliers were truncated (zeroed).
        zero_groups = (adv.advantages.view(-1, G) == 0).all(dim=1)  # [B]
        device = platform.device()
        return {"tokens": tokens.to(device), "mask": mask.to(device), "advantages": advantages.to(device),
                "rollout_logprobs": rollout_lp.to(device), "zero_groups": zero_groups,
                "num_samples": torch.tensor(len(samples))}

    def add_old_logprobs(self, batch: dict) -> None:
        """Log-probs of the rollout policy (= current weights) and, if configured, the reference."""
        rows = range(0, batch["tokens"].shape[0])
        micro = micro_batches(batch, rows, self.config.training.micro_batch_size, ("tokens",))
        temperature = self.config.rollout.temperature or 1.0
        old = compute_logprobs(self.model.module, micro, self.shape.vocab_size, temperature)
        if old:  # last pipeline stage
            batch["old_logprobs"] = torch.cat(old)
        if self.reference is not None:
            ref = compute_logprobs(self.reference, micro, self.shape.vocab_size, temperature)
            if ref:
                batch["ref_logprobs"] = torch.cat(ref)

    def _update_settings(self) -> UpdateSettings:
        cfg = self.config
        warmup = cfg.optimizer.warmup_steps
        lr = cfg.optimizer.lr * (min(1.0, (self.step + 1) / warmup) if warmup else 1.0)
        return UpdateSettings(cfg.training.updates_per_step, cfg.training.micro_batch_size, lr,
                              self.shape.vocab_size, cfg.rollout.temperature or 1.0, cfg.loss)

    def evaluate(self) -> dict:
        """avg@k accuracy on the held-out sets; every rollout engine scores a share of them."""
        engine_size = self.config.rollout.tensor_parallel_size
        share, shares = self.ctx.rank // engine_size, self.ctx.world_size // engine_size
        items = [(d, i) for d, rows in self.eval_rows.items() for i in range(len(rows))][share::shares]
        _, rows, scores, _ = self._generate_and_score(
            self.eval_rows, items, self.config.training.eval_samples,
            f"eval/{self.config.training.seed}/{self.step}/{share}", leader=self.ctx.rank % engine_size == 0)
        domains = sorted(self.eval_rows)
        totals = torch.zeros(2 * len(domains), dtype=torch.float64, device=platform.device())
        for row, score in zip(rows, scores):
            index = domains.index(row["domain"])
            totals[2 * index] += score.accuracy
            totals[2 * index + 1] += 1
        dist.all_reduce(totals)
        return {f"eval/accuracy/{d}": (totals[2 * i] / totals[2 * i + 1].clamp(min=1)).item()
                for i, d in enumerate(domains)}

    def _should_evaluate(self, stage_changed: bool) -> bool:
        if not self.eval_rows:
            return False
        every = self.config.training.eval_every
        return stage_changed or self.step == self.config.training.steps or bool(every and self.step % every == 0)

    # ---- metrics and checkpoints ----------------------------------------------------------

    def step_metrics(self, stage: str, samples: list[Sample], batch: dict, loss_metrics: dict,
                     generated: int, seconds: dict) -> dict:
        """Everything about this step, reduced over all data-parallel replicas (`reduce_step`).

        One collective: every rank of a replica holds the same samples, so one rank per replica
        (TP rank 0 of the last pipeline stage, which also has the log-probs and loss metrics)
        contributes its `ReplicaRecord` and the others contribute None.
        """
        reporter = self.ctx.is_last_pp_stage and self.ctx.tp_rank == 0
        local = None
        if reporter:
            local = ReplicaRecord(tuple(s.metrics_record() for s in samples), tuple(batch["zero_groups"].tolist()),
                                  generated, self._update_record(loss_metrics, batch))
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, local)
        metrics = {"step": self.step, "stage": stage,
                   **reduce_step([r for r in everyone if r is not None], seconds["t_step"])}
        # The sampler state is replicated identically on every DP rank (`record` is a DP
        # collective), so this rank's pool size is already the global one.
        metrics["pool_size"] = sum(len(self.scheduler.sampler(d).pool()) for d in self.scheduler.domain_counts())
        return metrics | {k: round(v, 4) for k, v in seconds.items()}

    def _update_record(self, loss_metrics: dict, batch: dict) -> UpdateRecord:
        """This replica's update statistics (called on its last pipeline stage, which has the
        old and reference log-probs). On the host: the log-probs come back there, the batch may
        live on the GPU, and these numbers are read on the host anyway."""
        mask, old = batch["mask"].cpu(), batch["old_logprobs"].cpu()
        diff = (old - batch["rollout_logprobs"].cpu()).abs()[mask]
        kl_sum = None
        if "ref_logprobs" in batch:
            log_ratio = (batch["ref_logprobs"].cpu() - old)[mask]
            kl_sum = (log_ratio.exp() - log_ratio - 1).sum().item()
        return UpdateRecord(loss_metrics={k: float(v) for k, v in loss_metrics.items()},
                            micro_batches=mask.shape[0] // self.config.training.micro_batch_size,
                            response_tokens=int(mask.sum()),
                            logprob_diff_max=diff.max().item() if diff.numel() else 0.0,
                            logprob_diff_sum=diff.sum().item(), kl_sum=kl_sum)

    def _should_save(self) -> bool:
        every = self.config.training.save_every
        return bool(every) and self.step % every == 0

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True  # only a flag: torchrun may signal twice

    def _agree_to_stop(self) -> bool:
        flag = torch.tensor([float(self._stop_requested)], device=platform.device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self._stop_requested = bool(flag.item())
        return self._stop_requested

    def save(self) -> Path:
        info = CheckpointInfo(self.vocab_padded, self.config.model.dtype, self.config.model.tensor_parallel,
                              self.config.model.pipeline_parallel)
        state = {"step": self.step, "rollouts_total": self.rollouts_total, "scheduler": self.scheduler.state_dict()}
        return save_checkpoint(self.run_dir, self.step, self.model.module, self.optimizer, state, info,
                               self.config.model.hf_path)

    def close(self) -> None:
        self.scorer.close()
        self.engine.shutdown()


def _keep_groups(samples: list[Sample], keep: torch.Tensor, group_size: int) -> list[Sample]:
    return [s for i, s in enumerate(samples) if keep[i // group_size]]
