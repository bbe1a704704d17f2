"""Clipped policy-gradient loss (SRPO / GRPO / DAPO step 6) as pure functions.

Tensors in, `(loss, metrics)` out; nothing here syncs with the host. Per-token objectives are
registered in `POLICY_LOSSES` under one signature; SRPO, GRPO and DAPO are hyper-parameter
settings of the same "ppo_clip" objective (the example configs carry SRPO's).

Normalisation contract: the loss of one micro-batch is already divided by the GLOBAL count
(tokens or sequences of the whole step on all DP ranks), so summing it over micro-batches and DP
ranks gives the global mean. Megatron-core 0.16's `forward_backward_func` scales a 2-tuple loss by
cp_size / num_microbatches and its DDP averages gradients over DP, so a caller on that path
undoes both (at CP=1: multiply the returned loss by num_microbatches * dp_size), or returns a
3-tuple with `calculate_per_token_loss`. `local_loss_counts` gives the counts to all-reduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol, Union

import torch

from srpo_megatron.algorithms.registry import Registry

AGGREGATIONS = ("token_mean", "sequence_mean")

# exp() of a log-ratio beyond +-20 overflows float32 gradients long before it means anything;
# verl clamps at the same bound.
_LOG_RATIO_CLAMP = 20.0

Count = Union[int, float, torch.Tensor]


@dataclass(frozen=True)
class PolicyLossConfig:
    """Which per-token objective, its clip range, the KL penalty and the aggregation."""

    loss_mode: str = "ppo_clip"
    """Registered per-token objective: "ppo_clip" (SRPO/GRPO/DAPO) or "dual_clip"."""

    eps_low: float = 0.2
    """Lower clip: the ratio is clipped at 1 - eps_low (matters for negative advantages)."""

    eps_high: float = 0.2
    """Upper clip: the ratio is clipped at 1 + eps_high. DAPO's clip-higher uses 0.28."""

    dual_clip_c: float = 3.0
    """"dual_clip" only: for negative advantages the loss is capped at -c * A (c > 1)."""

    kl_coef: float = 0.0
    """beta of the k3 KL penalty to the reference policy; 0 (SRPO) needs no reference model."""

    aggregation: str = "token_mean"
    """"token_mean": sum over valid tokens / global token count (SRPO, DAPO).
    "sequence_mean": per-sequence token mean, then sum / global sequence count (GRPO paper)."""

    rollout_correction: str = "none"
    """Correction for the rollout engine's policy differing from the trainer's (bf16 kernels):
    "none"; "tis": each token's PG loss times min(pi_old / pi_rollout, cap) (truncated importance
    sampling); "mis": sequences whose ratio prod_t pi_old / pi_rollout leaves [1/cap, cap] are
    masked out of the PG loss (they still count in the normaliser)."""

    rollout_correction_cap: float = 2.0
    """C of `rollout_correction` (> 1): the tis truncation, the mis band [1/C, C]."""

    def __post_init__(self) -> None:
        self._check_loss_mode()
        self._check_clip()
        self._check_kl_and_aggregation()
        self._check_rollout_correction()

    def _check_loss_mode(self) -> None:
        if self.loss_mode not in POLICY_LOSSES:
            raise ValueError(
                f"PolicyLossConfig.loss_mode={self.loss_mode!r} is not registered; "
                f"use one of {POLICY_LOSSES.names()}"
            )

    def _check_clip(self) -> None:
        if not 0.0 < self.eps_low < 1.0:
            raise ValueError(
                f"PolicyLossConfig.eps_low={self.eps_low} must lie in (0, 1) so the lower "
                "bound 1 - eps_low stays positive; SRPO uses 0.2"
            )
        if not self.eps_high > 0.0:
            raise ValueError(
                f"PolicyLossConfig.eps_high={self.eps_high} must be > 0; SRPO uses 0.2, DAPO 0.28"
            )
        if not self.dual_clip_c > 1.0:
            raise ValueError(
                f"PolicyLossConfig.dual_clip_c={self.dual_clip_c} must be > 1 (verl uses 3.0)"
            )

    def _check_kl_and_aggregation(self) -> None:
        if not (self.kl_coef >= 0.0 and math.isfinite(self.kl_coef)):
            raise ValueError(
                f"PolicyLossConfig.kl_coef={self.kl_coef} must be finite and >= 0; "
                "0 disables the KL term"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"PolicyLossConfig.aggregation={self.aggregation!r} is not supported; "
                f"use one of {list(AGGREGATIONS)}"
            )


    def _check_rollout_correction(self) -> None:
        if self.rollout_correction not in ROLLOUT_CORRECTIONS:
            raise ValueError(
                f"PolicyLossConfig.rollout_correction={self.rollout_correction!r} is not registered; "
                f"use one of {ROLLOUT_CORRECTIONS.names()}"
            )
        if not (self.rollout_correction_cap > 1.0 and math.isfinite(self.rollout_correction_cap)):
            raise ValueError(
                f"PolicyLossConfig.rollout_correction_cap={self.rollout_correction_cap} must be "
                "finite and > 1 (verl and slime use 2.0)"
            )


class PerTokenPolicyLoss(Protocol):
    def __call__(
        self, log_ratio: torch.Tensor, advantages: torch.Tensor, config: PolicyLossConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log_ratio [B, T], advantages [B, T] -> (loss [B, T], clipped [B, T] bool)."""
        ...


POLICY_LOSSES: Registry[PerTokenPolicyLoss] = Registry("policy loss mode")


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip_loss(
    log_ratio: torch.Tensor, advantages: torch.Tensor, config: PolicyLossConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """-min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A) per token; `clipped` marks tokens
    whose gradient the clip removed (r > 1 + eps_high with A > 0, r < 1 - eps_low with A < 0)."""
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -advantages * ratio  # [B, T]
    clipped = -advantages * ratio.clamp(1.0 - config.eps_low, 1.0 + config.eps_high)  # [B, T]
    return torch.maximum(unclipped, clipped), clipped > unclipped


@POLICY_LOSSES.register("dual_clip")
def dual_clip_loss(
    log_ratio: torch.Tensor, advantages: torch.Tensor, config: PolicyLossConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """ppo_clip, plus for A < 0 the loss is capped at -c * A (Ye et al. 2020) so one stale
    token with a huge ratio cannot dominate the step."""
    loss, clipped = ppo_clip_loss(log_ratio, advantages, config)  # [B, T]
    cap = -advantages * config.dual_clip_c  # [B, T]
    capped = (advantages < 0) & (loss > cap)  # [B, T]
    return torch.where(capped, cap, loss), clipped | capped


class RolloutCorrection(Protocol):
    def __call__(self, log_ratio: torch.Tensor, valid: torch.Tensor, cap: float) -> torch.Tensor:
        """log(pi_old / pi_rollout) [B, T] (0 off `valid`), valid [B, T] bool -> PG weights [B, T]."""
        ...


ROLLOUT_CORRECTIONS: Registry[RolloutCorrection] = Registry("rollout correction")


@ROLLOUT_CORRECTIONS.register("none")
def no_correction(log_ratio: torch.Tensor, valid: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.ones_like(log_ratio)


@ROLLOUT_CORRECTIONS.register("tis")
def truncated_importance_weights(log_ratio: torch.Tensor, valid: torch.Tensor, cap: float) -> torch.Tensor:
    """min(pi_old / pi_rollout, C) per token (slime / NeMo-RL `use_tis`)."""
    return torch.exp(log_ratio).clamp(max=cap)  # [B, T]


@ROLLOUT_CORRECTIONS.register("mis")
def sequence_mask(log_ratio: torch.Tensor, valid: torch.Tensor, cap: float) -> torch.Tensor:
    """1 on sequences whose ratio prod_t pi_old / pi_rollout lies in [1/C, C], else 0 (verl's
    sequence-level rejection): a sequence the trainer would not have sampled is dropped whole."""
    seq_log_ratio = (log_ratio * valid).sum(dim=-1, keepdim=True)  # [B, 1]
    keep = seq_log_ratio.abs() <= math.log(cap)  # [B, 1]
    return keep.to(log_ratio.dtype).expand_as(log_ratio)  # [B, T]


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || pi_ref) per token: exp(d) - d - 1 with d = logp_ref - logp.
    Non-negative and unbiased (Schulman); [B, T] -> [B, T]."""
    d = (logp_ref - logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # [B, T]
    return torch.exp(d) - d - 1.0


def local_loss_counts(response_mask: torch.Tensor) -> torch.Tensor:
    """[2] float: (valid response tokens, sequences with >= 1 valid token) of one micro-batch.

    Sum this over the step's micro-batches and all-reduce over DP to get the `global_num_tokens`
    / `global_num_sequences` that `policy_loss` divides by.
    """
    mask = response_mask.to(torch.float32)  # [B, T]
    return torch.stack([mask.sum(), (mask.sum(dim=-1) > 0).to(torch.float32).sum()])


def aggregate(
    per_token: torch.Tensor,
    response_mask: torch.Tensor,
    aggregation: str,
    global_num_tokens: Optional[Count] = None,
    global_num_sequences: Optional[Count] = None,
) -> torch.Tensor:
    """Scalar share of the global mean for one micro-batch (see the module docstring).

    per_token [B, T], response_mask [B, T] (bool or 0/1); masked tokens contribute nothing.
    """
    mask = response_mask.to(per_token.dtype)  # [B, T]
    masked = per_token * mask  # [B, T]
    if aggregation == "token_mean":
        if global_num_tokens is None:
            raise ValueError(
                "aggregation='token_mean' needs global_num_tokens (see local_loss_counts)"
            )
        return masked.sum() / global_num_tokens
    if aggregation == "sequence_mean":
        if global_num_sequences is None:
            raise ValueError(
                "aggregation='sequence_mean' needs global_num_sequences (see local_loss_counts)"
            )
        per_seq = masked.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)  # [B]
        return per_seq.sum() / global_num_sequences
    raise ValueError(f"aggregation={aggregation!r}; use one of {list(AGGREGATIONS)}")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    config: PolicyLossConfig,
    *,
    logp_ref: Optional[torch.Tensor] = None,
    logp_rollout: Optional[torch.Tensor] = None,
    global_num_tokens: Optional[Count] = None,
    global_num_sequences: Optional[Count] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Policy loss of one micro-batch and its metrics.

    Args:
        logp: [B, T] log-probs of the response tokens under the current policy (with grad).
        logp_old: [B, T] log-probs under the rollout-time policy (no grad).
        advantages: [B] per sequence, or [B, T] per token.
        response_mask: [B, T] True on response tokens that count (not prompt, not padding).
        config: objective, clip range, KL coefficient, aggregation.
        logp_ref: [B, T] reference-policy log-probs; required when config.kl_coef > 0, and
            otherwise (if given) only reported as the `ref_kl` metric.
        logp_rollout: [B, T] the rollout engine's log-probs; required by a rollout correction.
        global_num_tokens / global_num_sequences: the step's global count for the aggregation.

    Returns:
        loss: scalar, this micro-batch's share of the global mean.
        metrics: 0-dim detached tensors. `pg_loss` and `kl_loss` are shares of the global mean
            like `loss` (sum them over micro-batches); `clip_frac`, `clip_frac_low`,
            `clip_frac_high`, `approx_kl` (k3 of old vs current), `ref_kl` and `ratio_mean` are
            means over this micro-batch's valid tokens.
            With a rollout correction: `rollout_ratio_mean` / `rollout_ratio_max` of pi_old /
            pi_rollout over valid tokens (max 0 without any) and `rollout_masked_frac`, the share of
            this micro-batch's sequences whose PG weights are all 0.
    """
    if config.kl_coef > 0 and logp_ref is None:
        raise ValueError(f"PolicyLossConfig.kl_coef={config.kl_coef} > 0 needs logp_ref")
    valid = response_mask.to(torch.bool)  # [B, T]
    mask = valid.to(logp.dtype)  # [B, T]
    adv = advantages[:, None] if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]
    adv = adv.to(logp.dtype).expand_as(logp)  # [B, T]
    # Zero the log-ratio on padding so garbage log-probs there cannot produce inf * 0 = NaN.
    log_ratio = torch.where(valid, logp - logp_old, torch.zeros_like(logp))  # [B, T]
    log_ratio = log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    pg_tok, clipped = POLICY_LOSSES.get(config.loss_mode)(log_ratio, adv, config)  # [B, T]
    correction: dict[str, torch.Tensor] = {}
    if config.rollout_correction != "none":
        if logp_rollout is None:
            raise ValueError(
                f"PolicyLossConfig.rollout_correction={config.rollout_correction!r} needs logp_rollout"
            )
        weights, correction = _rollout_weights(logp_old, logp_rollout, valid, config)  # [B, T]
        pg_tok = pg_tok * weights

    def agg(per_token: torch.Tensor) -> torch.Tensor:
        return aggregate(
            per_token, mask, config.aggregation, global_num_tokens, global_num_sequences
        )

    pg_loss = agg(pg_tok)
    loss = pg_loss
    metrics: dict[str, torch.Tensor] = {"pg_loss": pg_loss.detach()}
    if logp_ref is not None:
        kl_tok = kl_k3(logp, logp_ref)  # [B, T]
        metrics["ref_kl"] = _masked_mean(kl_tok.detach(), mask)
        if config.kl_coef > 0:
            kl_loss = agg(kl_tok)
            loss = loss + config.kl_coef * kl_loss
            metrics["kl_loss"] = kl_loss.detach()
    metrics.update(_ratio_metrics(log_ratio.detach(), clipped, valid))
    metrics.update(correction)
    metrics["loss"] = loss.detach()
    return loss, metrics


def _rollout_weights(
    logp_old: torch.Tensor, logp_rollout: torch.Tensor, valid: torch.Tensor, config: PolicyLossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The rollout correction's PG weights [B, T] (no grad) and their metrics."""
    log_ratio = torch.where(valid, logp_old - logp_rollout, torch.zeros_like(logp_old))  # [B, T]
    log_ratio = log_ratio.detach().clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    weights = ROLLOUT_CORRECTIONS.get(config.rollout_correction)(
        log_ratio, valid, config.rollout_correction_cap
    )  # [B, T]
    mask = valid.to(log_ratio.dtype)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    sequences = valid.any(dim=-1)  # [B]
    masked = sequences & ((weights * mask).sum(dim=-1) == 0)  # [B]
    return weights, {
        "rollout_ratio_mean": _masked_mean(ratio, mask),
        "rollout_ratio_max": (ratio * mask).amax() if ratio.numel() else ratio.new_zeros(()),
        "rollout_masked_frac": masked.sum() / sequences.sum().clamp(min=1),
    }


def _ratio_metrics(
    log_ratio: torch.Tensor, clipped: torch.Tensor, valid: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Clip fractions, k3(old || current) and ratio statistics over valid tokens."""
    mask = valid.to(log_ratio.dtype)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    clipped = clipped.to(mask.dtype) * mask  # [B, T]
    return {
        "clip_frac": _masked_mean(clipped, mask),
        "clip_frac_high": _masked_mean(clipped * (ratio > 1).to(mask.dtype), mask),
        "clip_frac_low": _masked_mean(clipped * (ratio < 1).to(mask.dtype), mask),
        "approx_kl": _masked_mean(torch.exp(-log_ratio) + log_ratio - 1.0, mask),
        "ratio_mean": _masked_mean(ratio, mask),
    }
