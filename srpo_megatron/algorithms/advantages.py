"""Group-relative advantages (GRPO / SRPO step 4) and their registry.

Rewards arrive flat, shaped [B*G]: B prompts, each with G consecutive rollouts. Every estimator
shares the `AdvantageEstimator` signature and is chosen by `AdvantageConfig.estimator`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Protocol

import torch

from srpo_megatron.algorithms.registry import Registry


@dataclass(frozen=True)
class AdvantageConfig:
    """How rewards become per-response advantages."""

    estimator: str = "grpo"
    """Registered estimator name: "grpo" ((r - mean) / (std + eps), SRPO's choice) or "dr_grpo"
    (r - mean, no std division; Dr. GRPO)."""

    eps: float = 1e-6
    """Added to the group std before dividing; keeps near-constant groups finite."""

    zero_truncated: bool = True
    """Give responses cut at the length limit zero advantage (needs the `truncated` mask). They
    still count in their group's mean and std: the cut is the rollout's real outcome."""

    def __post_init__(self) -> None:
        if self.estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"AdvantageConfig.estimator={self.estimator!r} is not registered; "
                f"use one of {ADVANTAGE_ESTIMATORS.names()}"
            )
        if not self.eps >= 0.0:
            raise ValueError(f"AdvantageConfig.eps={self.eps} must be >= 0; use e.g. 1e-6")


@dataclass(frozen=True)
class AdvantageOutput:
    """Advantages plus the per-group statistics they were computed from."""

    advantages: torch.Tensor  # [B*G] float32
    group_mean: torch.Tensor  # [B]
    group_std: torch.Tensor  # [B] unbiased (see `grpo_advantages`)
    zero_groups: torch.Tensor  # [B] bool: every reward in the group is equal -> no signal
    excluded_groups: Optional[torch.Tensor] = None  # [B] bool: holds an unscored rollout -> zero advantage


class AdvantageEstimator(Protocol):
    def __call__(
        self,
        rewards: torch.Tensor,
        group_size: int,
        config: AdvantageConfig,
    ) -> AdvantageOutput: ...


ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


def group_rewards(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """View flat rewards [B*G] as [B, G], checking the shape."""
    if group_size < 2:
        raise ValueError(
            f"group_size={group_size}: group-relative advantages need >= 2 rollouts per prompt"
        )
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be flat [B*G] with B*G divisible by group_size={group_size}; "
            f"got shape {tuple(rewards.shape)}"
        )
    return rewards.float().view(-1, group_size)  # [B, G]


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] bool: groups whose G rewards are all exactly equal (all correct, or all wrong).

    Exact equality on purpose: rule-based rewards are discrete, and a tolerance would hide a
    genuinely (if slightly) informative group.
    """
    return _all_equal(group_rewards(rewards, group_size))


def _all_equal(grouped: torch.Tensor) -> torch.Tensor:
    return grouped.amax(dim=-1) == grouped.amin(dim=-1)  # [B]


def _group_stats(rewards: torch.Tensor, group_size: int):
    grouped = group_rewards(rewards, group_size)  # [B, G]
    mean = grouped.mean(dim=-1)  # [B]
    std = grouped.std(dim=-1, correction=1)  # [B]
    return grouped, mean, std, _all_equal(grouped)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(
    rewards: torch.Tensor, group_size: int, config: AdvantageConfig
) -> AdvantageOutput:
    """A_ij = (r_ij - mean_j r_i) / (std_j r_i + eps), std UNBIASED (divides by G - 1).

    Unbiased because GRPO, verl and DAPO use `torch.std`'s default: published clip ranges and
    learning rates were tuned with that scale. (Population std gives larger advantages by
    sqrt(G / (G - 1)), 1.6% at G = 32.) Zero-variance groups get exactly 0, not 0 / eps noise.
    """
    grouped, mean, std, zero = _group_stats(rewards, group_size)
    adv = (grouped - mean[:, None]) / (std[:, None] + config.eps)  # [B, G]
    adv = torch.where(zero[:, None], torch.zeros_like(adv), adv)
    return AdvantageOutput(adv.reshape(-1), mean, std, zero)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantages(
    rewards: torch.Tensor, group_size: int, config: AdvantageConfig
) -> AdvantageOutput:
    """A_ij = r_ij - mean_j r_i (Dr. GRPO): no std division, so easy and hard prompts are not
    up-weighted relative to each other. `config.eps` is unused."""
    grouped, mean, std, zero = _group_stats(rewards, group_size)
    adv = grouped - mean[:, None]  # [B, G]
    adv = torch.where(zero[:, None], torch.zeros_like(adv), adv)
    return AdvantageOutput(adv.reshape(-1), mean, std, zero)


def compute_advantages(
    rewards: torch.Tensor,
    group_size: int,
    config: AdvantageConfig,
    truncated: Optional[torch.Tensor] = None,
    unscored: Optional[torch.Tensor] = None,
) -> AdvantageOutput:
    """Advantages for flat rewards [B*G] with the configured estimator.

    Args:
        rewards: [B*G] scalar reward per response; G consecutive entries share a prompt.
        group_size: G.
        config: estimator, eps, and whether truncated responses get zero advantage.
        truncated: optional [B*G] bool, True where the response hit the length limit.
        unscored: optional [B*G] bool, True where the reward could not be judged (sandbox failure).
            Its whole group gets zero advantage: its baseline would be built on a made-up reward.
            `excluded_groups` ([B]) marks those groups for the caller to count.
    """
    out = ADVANTAGE_ESTIMATORS.get(config.estimator)(rewards, group_size, config)
    adv = out.advantages  # [B*G]
    if truncated is not None and config.zero_truncated:
        adv = adv.masked_fill(_flat_mask(truncated, rewards, "truncated"), 0.0)
    excluded = torch.zeros_like(out.zero_groups)  # [B]
    if unscored is not None:
        excluded = _flat_mask(unscored, rewards, "unscored").view(-1, group_size).any(dim=1)  # [B]
        adv = adv.view(-1, group_size).masked_fill(excluded[:, None], 0.0).reshape(-1)
    return replace(out, advantages=adv, excluded_groups=excluded)


def _flat_mask(mask: torch.Tensor, rewards: torch.Tensor, name: str) -> torch.Tensor:
    if mask.shape != rewards.shape:
        raise ValueError(
            f"{name} mask shape {tuple(mask.shape)} must match rewards {tuple(rewards.shape)} ([B*G])"
        )
    return mask.to(torch.bool)
