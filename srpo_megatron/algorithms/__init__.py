"""SRPO algorithm core: group-relative advantages, clipped policy loss, vocab-parallel log-probs.

`logprobs` imports megatron-core and is not imported here; import it from its module.
"""

from srpo_megatron.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    AdvantageOutput,
    compute_advantages,
    zero_variance_groups,
)
from srpo_megatron.algorithms.policy_loss import (
    POLICY_LOSSES,
    ROLLOUT_CORRECTIONS,
    PolicyLossConfig,
    local_loss_counts,
    policy_loss,
)
from srpo_megatron.algorithms.registry import Registry

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
    "ROLLOUT_CORRECTIONS",
    "AdvantageConfig",
    "AdvantageOutput",
    "PolicyLossConfig",
    "Registry",
    "compute_advantages",
    "local_loss_counts",
    "policy_loss",
    "zero_variance_groups",
]
