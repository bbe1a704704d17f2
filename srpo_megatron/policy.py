"""The trainable policy: megatron model + DDP + optimizer, its frozen reference, and the update.

`update_policy` is step 6-7 of DESIGN.md section 2: one optimizer update per mini-batch of the
step's rollouts, each a forward/backward over micro-batches through megatron's pipeline schedule
with the clipped policy loss (`algorithms.policy_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from srpo_megatron import platform
from srpo_megatron.algorithms import PolicyLossConfig, local_loss_counts, policy_loss
from srpo_megatron.config import ModelConfig, OptimizerConfig, TrainConfig
from srpo_megatron.convert.hf_to_mcore import load_hf_weights
from srpo_megatron.metrics import LOSS_SHARE_KEYS
from srpo_megatron.models import build_model
from srpo_megatron.models.forward import response_logits, response_logprobs, run_pipeline
from srpo_megatron.models.hf_config import ModelShape
from srpo_megatron.rollout.batch import RolloutBatch

UPDATE_FIELDS = ("tokens", "mask", "advantages", "old_logprobs", "ref_logprobs", "rollout_logprobs")
"""The `RolloutBatch` fields the loss reads (the log-probs only on the last pipeline stage)."""


def build_policy(shape: ModelShape, model_cfg: ModelConfig, optim_cfg: OptimizerConfig, vocab_padded: int):
    """(DDP-wrapped policy loaded from model_cfg.hf_path, megatron AdamW optimizer)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer

    module = build_model(shape, model_cfg.tensor_parallel, model_cfg.pipeline_parallel, model_cfg.dtype,
                         vocab_size_padded=vocab_padded, initialize=False)
    load_hf_weights(module, model_cfg.hf_path, shape, vocab_padded)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=False)
    model = DistributedDataParallel(config=module.config, ddp_config=ddp_config, module=module)
    optimizer = get_megatron_optimizer(McoreOptimizerConfig(
        optimizer="adam", lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay,
        adam_beta1=optim_cfg.adam_beta1, adam_beta2=optim_cfg.adam_beta2, clip_grad=optim_cfg.clip_grad,
        bf16=model_cfg.dtype == "bfloat16", params_dtype=module.config.params_dtype,
        use_distributed_optimizer=False), [model])
    # What megatron's own training loop wires up: DP grad all-reduce (and tied-embedding grads
    # across PP) after the last micro-batch, no grad sync before it.
    module.config.finalize_model_grads_func = finalize_model_grads
    module.config.no_sync_func = model.no_sync
    module.config.grad_scale_func = optimizer.scale_loss
    _allow_micro_batch_shapes(module)
    return model, optimizer


def build_reference(shape: ModelShape, model_cfg: ModelConfig, vocab_padded: int):
    """The frozen reference policy: the same builder and initial weights, no gradients."""
    reference = build_model(shape, model_cfg.tensor_parallel, model_cfg.pipeline_parallel, model_cfg.dtype,
                            trainable=False, vocab_size_padded=vocab_padded, initialize=False)
    load_hf_weights(reference, model_cfg.hf_path, shape, vocab_padded)
    _allow_micro_batch_shapes(reference)
    return reference


def _allow_micro_batch_shapes(module) -> None:
    """Micro-batches are cut to their own longest row (`RolloutBatch.plan`), so their shapes
    differ: megatron's pipeline p2p then sends each activation's shape before it (3 ints per
    send) instead of assuming the one `seq_length` of the call."""
    module.config.variable_seq_lengths = True


@dataclass(frozen=True)
class UpdateSettings:
    """How one step's rollouts become optimizer updates."""

    updates_per_step: int
    micro_batch_size: int
    lr: float
    vocab_size: int
    temperature: float
    loss: PolicyLossConfig
    max_tokens_per_micro_batch: int = 0
    """Token budget per micro-batch (`RolloutBatch.plan`); 0: micro_batch_size rows each."""
    pack_sequences: bool = False
    """Micro-batches as THD packs (`RolloutBatch.gather`)."""
    share_prompts: bool = False
    """Packed rows with the same prompt compute it once (`RolloutBatch.gather`)."""

    @classmethod
    def for_step(cls, config: TrainConfig, step: int, vocab_size: int) -> UpdateSettings:
        """The settings of update step `step` (0-based): the lr warms up linearly, then holds."""
        warmup = config.optimizer.warmup_steps
        lr = config.optimizer.lr * (min(1.0, (step + 1) / warmup) if warmup else 1.0)
        training = config.training
        return cls(training.updates_per_step, training.micro_batch_size, lr, vocab_size,
                   config.rollout.temperature or 1.0, config.loss, training.max_tokens_per_micro_batch,
                   training.pack_sequences, training.share_prompts)


def update_policy(model, optimizer, batch: RolloutBatch,
                  settings: UpdateSettings) -> tuple[dict, torch.Tensor | None]:
    """One optimizer update per mini-batch of `batch` (its rows divisible by updates_per_step x
    micro_batch_size). Returns (the loss metrics (last pipeline stage), the gradient norm and
    `pad_frac`; the update's own log-probs [N, T] when the batch has no old log-probs, else None).

    Without old log-probs the update is exactly on-policy (one update per step): the old
    log-probs are its own forward's, detached, which saves the separate log-prob pass."""
    from megatron.core import parallel_state as ps

    on_policy = batch.old_logprobs is None
    if on_policy and settings.updates_per_step > 1 and ps.is_pipeline_last_stage():
        raise ValueError(f"update_policy: updates_per_step={settings.updates_per_step} needs the batch's "
                         "old_logprobs (after the first update the policy is no longer the rollout policy)")
    per_update = batch.num_rows // settings.updates_per_step
    collected, grad_norm, plans = [], 0.0, []
    for update_index in range(settings.updates_per_step):
        rows = range(update_index * per_update, (update_index + 1) * per_update)
        plan = batch.plan(rows, settings.micro_batch_size, settings.max_tokens_per_micro_batch)
        plans += plan
        micro = batch.gather(plan, UPDATE_FIELDS, settings.pack_sequences, settings.share_prompts)
        # counted on the host (the batch lives there), reduced on the device (NCCL needs CUDA tensors)
        counts = local_loss_counts(batch.mask[rows.start: rows.stop]).to(platform.device())
        dist.all_reduce(counts, group=ps.get_data_parallel_group())
        # megatron divides each micro-batch loss by the number of micro-batches and DDP averages
        # gradients over DP; the loss is already a share of the global mean, so undo both.
        scale = len(micro) * ps.get_data_parallel_world_size()
        loss_fn = _loss_fn(settings, counts[0].clamp(min=1), counts[1].clamp(min=1), scale)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr
        model.zero_grad_buffer()
        optimizer.zero_grad()
        collected += run_pipeline(model, micro, loss_fn, forward_only=False)
        _, grad_norm, _ = optimizer.step()
    own = [m.pop("logprobs") for m in collected if "logprobs" in m]
    padding, positions = batch.padding(plans, settings.pack_sequences)
    metrics = _mean_metrics(collected) | {"grad_norm": float(grad_norm or 0.0), "pad_frac": padding / positions}
    return metrics, (batch.scatter(plans, own) if own else None)


def _loss_fn(settings: UpdateSettings, global_tokens, global_sequences, scale: float):
    from srpo_megatron.algorithms.logprobs import vocab_parallel_entropy

    def loss_fn(micro: dict, output: torch.Tensor):
        start, mask = micro.get("logits_from", 0), micro["mask"]  # output: positions start.. ([b, T - start, V/tp])
        logits = response_logits(output, mask, settings.vocab_size, start)  # [n, V/tp]: the response tokens'
        logp = response_logprobs(logits, micro["tokens"], mask, settings.temperature, start)  # [b, T], 0 off it
        old = micro.get("old_logprobs")
        loss, metrics = policy_loss(logp, logp.detach() if old is None else old, micro["advantages"],
                                    mask, settings.loss, logp_ref=micro.get("ref_logprobs"),
                                    logp_rollout=micro["rollout_logprobs"], global_num_tokens=global_tokens,
                                    global_num_sequences=global_sequences)
        with torch.no_grad():  # mean over the response tokens, from the same logits
            metrics["entropy"] = vocab_parallel_entropy(logits, settings.temperature).mean() if len(logits) \
                else logits.new_zeros(())
        if old is None:  # the on-policy update's old log-probs, for the step's metrics
            metrics["logprobs"] = logp.detach()  # to the host in scatter, after the pass
        return loss * scale, metrics

    return loss_fn


def _mean_metrics(collected: list[dict]) -> dict:
    """Micro-batch metrics -> step metrics: shares of the global mean add up, the rest average."""
    if not collected:
        return {}
    out = {}
    for key in collected[0]:
        values = [float(m[key]) for m in collected]
        out[key] = sum(values) if key in LOSS_SHARE_KEYS else sum(values) / len(values)
    return out
