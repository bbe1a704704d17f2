"""Per-token log-probs and entropy from vocab-parallel logits, without gathering the vocabulary.

Under Megatron tensor parallelism each TP rank holds logits for its vocabulary shard
[B, T, V/tp] (rank r owns ids [r*V/tp, (r+1)*V/tp)). Gathering V (150k for Qwen2.5) per token
would cost tp times the memory; instead both functions reduce per-token scalars over the TP group.
With TP=1, or before megatron's parallel state exists, they compute the same thing locally.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import (
    reduce_from_tensor_model_parallel_region,
    vocab_parallel_cross_entropy,
)


def _scaled_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if not temperature > 0:
        raise ValueError(
            f"temperature={temperature} must be > 0 (use the rollout's sampling temperature)"
        )
    # The division always allocates, so the caller's logits are never modified in place (megatron's
    # cross entropy subtracts the max in place); fp32 because log-prob ratios need it.
    return (logits.float() / temperature).contiguous()  # [B, T, V/tp]


def vocab_parallel_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / temperature)[target] per token, differentiable.

    Args:
        logits: [B, T, V/tp] this rank's vocabulary shard.
        targets: [B, T] global token ids.
        temperature: divide logits by the rollout's sampling temperature so old/new log-probs
            describe the distribution the responses were sampled from.

    Returns: [B, T] float32. Uses megatron's TP group (its cross entropy takes no group argument).
    """
    scaled = _scaled_logits(logits, temperature)  # [B, T, V/tp]
    if not parallel_state.model_parallel_is_initialized():
        return torch.log_softmax(scaled, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -vocab_parallel_cross_entropy(scaled, targets)  # [B, T]


def vocab_parallel_entropy(
    logits: torch.Tensor,
    temperature: float = 1.0,
    group: Optional[dist.ProcessGroup] = None,
) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per token, differentiable.

    H = log S - sum_v(e_v * z_v) / S with z = logit - max, e = exp(z), S = sum_v e_v; the max,
    S and the weighted sum are reduced over the TP group. Wrap in `torch.no_grad()` when it is
    only a metric: it materialises two [B, T, V/tp] fp32 tensors.

    Args:
        logits: [B, T, V/tp] this rank's vocabulary shard.
        temperature: as in `vocab_parallel_logprobs`.
        group: the tensor-parallel group; default megatron's, or none (TP=1) before it exists.

    Returns: [B, T] float32.
    """
    if group is None and parallel_state.model_parallel_is_initialized():
        group = parallel_state.get_tensor_model_parallel_group()
    scaled = _scaled_logits(logits, temperature)  # [B, T, V/tp]
    # The max only stabilises exp(); H does not depend on it, so it carries no gradient.
    shift = scaled.detach().amax(dim=-1)  # [B, T]
    if group is not None:
        dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
    shifted = scaled - shift.unsqueeze(-1)  # [B, T, V/tp]
    exp = torch.exp(shifted)  # [B, T, V/tp]
    # One all-reduce for both sums. Megatron's region op backpropagates identity, which is right
    # because every TP rank computes the same replicated entropy from the reduced sums.
    sums = torch.stack([exp.sum(dim=-1), (exp * shifted).sum(dim=-1)])  # [2, B, T]
    if group is not None:
        sums = reduce_from_tensor_model_parallel_region(sums, group)
    return torch.log(sums[0]) - sums[1] / sums[0]  # [B, T]
