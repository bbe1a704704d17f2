"""Group-relative advantages against hand-computed values."""

import math

import pytest
import torch

from srpo_megatron.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    compute_advantages,
    zero_variance_groups,
)
from srpo_megatron.algorithms.registry import Registry

# Three groups of G=4: mixed 2/4, all correct, 1/4 correct.
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
S = 0.5 / math.sqrt(1.0 / 3.0)  # group 0: deviations +-0.5, unbiased std sqrt(1/3)


def test_grpo_unbiased_std_by_hand():
    out = compute_advantages(REWARDS, 4, AdvantageConfig(eps=0.0))
    # group 2: mean 0.25, deviations (-.25, -.25, -.25, .75), unbiased var 0.75 / 3 -> std 0.5
    expected = [S, -S, -S, S, 0, 0, 0, 0, -0.5, -0.5, -0.5, 1.5]
    torch.testing.assert_close(out.advantages, torch.tensor(expected))
    torch.testing.assert_close(out.group_mean, torch.tensor([0.5, 1.0, 0.25]))
    torch.testing.assert_close(out.group_std, torch.tensor([math.sqrt(1 / 3), 0.0, 0.5]))
    assert out.zero_groups.tolist() == [False, True, False]


def test_eps_is_added_to_std():
    out = compute_advantages(REWARDS, 4, AdvantageConfig(eps=0.5))
    torch.testing.assert_close(out.advantages[8:], torch.tensor([-0.25, -0.25, -0.25, 0.75]))


def test_dr_grpo_is_std_free():
    out = compute_advantages(REWARDS, 4, AdvantageConfig(estimator="dr_grpo"))
    expected = [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.25, -0.25, -0.25, 0.75]
    torch.testing.assert_close(out.advantages, torch.tensor(expected))


def test_truncated_responses_get_zero_but_still_count_in_stats():
    truncated = torch.zeros(12, dtype=torch.bool)
    truncated[[3, 11]] = True
    out = compute_advantages(REWARDS, 4, AdvantageConfig(eps=0.0), truncated=truncated)
    expected = [S, -S, -S, 0, 0, 0, 0, 0, -0.5, -0.5, -0.5, 0]
    torch.testing.assert_close(out.advantages, torch.tensor(expected))
    torch.testing.assert_close(out.group_mean, torch.tensor([0.5, 1.0, 0.25]))
    kept = compute_advantages(
        REWARDS, 4, AdvantageConfig(eps=0.0, zero_truncated=False), truncated=truncated
    )
    assert kept.advantages[3] == pytest.approx(S)


def test_all_equal_groups_are_exactly_zero():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.3, 0.1, 0.2])
    out = compute_advantages(rewards, 3, AdvantageConfig())
    assert out.advantages[:6].eq(0).all()
    assert out.zero_groups.tolist() == [True, True, False]
    assert zero_variance_groups(rewards, 3).tolist() == [True, True, False]


def test_shape_and_group_size_errors():
    with pytest.raises(ValueError, match="group_size=1"):
        compute_advantages(torch.ones(4), 1, AdvantageConfig())
    with pytest.raises(ValueError, match="divisible by group_size=3"):
        compute_advantages(torch.ones(4), 3, AdvantageConfig())
    with pytest.raises(ValueError, match="truncated mask shape"):
        compute_advantages(
            torch.ones(4), 2, AdvantageConfig(), truncated=torch.ones(2, dtype=torch.bool)
        )


def test_config_validation_names_field():
    with pytest.raises(
        ValueError, match=r"AdvantageConfig.estimator='nope'.*\['dr_grpo', 'grpo'\]"
    ):
        AdvantageConfig(estimator="nope")
    with pytest.raises(ValueError, match="AdvantageConfig.eps=-1"):
        AdvantageConfig(eps=-1)


def test_registry_rejects_duplicates_and_lists_valid_names():
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGE_ESTIMATORS.register("grpo")(lambda *a: None)
    registry: Registry[int] = Registry("thing")
    registry.register("a")(1)
    assert registry.get("a") == 1
    with pytest.raises(ValueError, match=r"unknown thing 'b'; valid: \['a'\]"):
        registry.get("b")
