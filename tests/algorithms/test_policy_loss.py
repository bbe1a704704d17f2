"""Clipped policy loss, KL k3 and aggregation against hand-computed values."""

import math

import pytest
import torch

from srpo_megatron.algorithms.advantages import AdvantageConfig, compute_advantages
from srpo_megatron.algorithms.policy_loss import (
    PolicyLossConfig,
    kl_k3,
    local_loss_counts,
    policy_loss,
)

LN2 = math.log(2.0)


def _ratios(*r):
    return torch.log(torch.tensor(r, dtype=torch.float32))


def test_clipping_active_on_both_sides():
    # seq 0 has A=+1 with ratios (1.5, 0.5); seq 1 has A=-1 with ratios (0.5, 1.5).
    logp = _ratios(1.5, 0.5, 0.5, 1.5).view(2, 2).requires_grad_()
    logp_old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, m = policy_loss(logp, logp_old, adv, mask, PolicyLossConfig(), global_num_tokens=4)
    # per token: -min(1.5, 1.2) = -1.2 (clipped); -min(.5, .8) = -.5;
    #            -min(-.5, -.8) = .8 (clipped); -min(-1.5, -1.2) = 1.5
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 + 1.5) / 4)
    assert m["clip_frac"].item() == pytest.approx(0.5)
    assert m["clip_frac_high"].item() == pytest.approx(0.25)
    assert m["clip_frac_low"].item() == pytest.approx(0.25)
    assert m["ratio_mean"].item() == pytest.approx(1.0)
    k3 = lambda r: 1 / r + math.log(r) - 1  # noqa: E731  k3 of old vs current
    assert m["approx_kl"].item() == pytest.approx((k3(1.5) + k3(0.5)) / 2)
    loss.backward()
    # clipped tokens carry no gradient; others: d(-A r)/dlogp / N = -A r / 4
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.125], [0.0, 0.375]]))


def test_clip_higher_and_dual_clip():
    logp = _ratios(1.25, 5.0).view(2, 1)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 1)
    dapo = PolicyLossConfig(eps_high=0.28)  # DAPO's clip-higher
    loss, m = policy_loss(logp, torch.zeros(2, 1), adv, mask, dapo, global_num_tokens=2)
    # 1.25 < 1.28 is not clipped under clip-higher; A=-1, r=5 -> loss 5
    assert loss.item() == pytest.approx((-1.25 + 5.0) / 2)
    assert m["clip_frac"].item() == 0.0
    dual = PolicyLossConfig(loss_mode="dual_clip", dual_clip_c=3.0)
    loss, m = policy_loss(logp, torch.zeros(2, 1), adv, mask, dual, global_num_tokens=2)
    assert loss.item() == pytest.approx((-1.2 + 3.0) / 2)  # 5 capped at -c*A = 3
    assert m["clip_frac"].item() == 1.0


def test_kl_k3_values_and_penalty():
    logp = torch.zeros(1, 2, requires_grad=True)
    ref = torch.tensor([[LN2, -LN2]])
    torch.testing.assert_close(kl_k3(logp.detach(), ref), torch.tensor([[1 - LN2, LN2 - 0.5]]))
    cfg = PolicyLossConfig(kl_coef=0.1)
    loss, m = policy_loss(
        logp,
        torch.zeros(1, 2),
        torch.zeros(1),
        torch.ones(1, 2),
        cfg,
        logp_ref=ref,
        global_num_tokens=2,
    )
    kl_mean = (1 - LN2 + LN2 - 0.5) / 2
    assert loss.item() == pytest.approx(0.1 * kl_mean)
    assert m["kl_loss"].item() == pytest.approx(kl_mean)
    assert m["ref_kl"].item() == pytest.approx(kl_mean)
    with pytest.raises(ValueError, match="needs logp_ref"):
        policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), cfg, global_num_tokens=2)


def _two_micro_batches():
    """Ratio 1 everywhere, so each valid token's loss is -A of its sequence.

    mb1: seq a (A=1, 3 tokens), seq b (A=-2, 1 token, then 2 padding tokens with junk log-probs)
    mb2: seq c (A=0.5, 2 tokens, then 1 padding token)
    """
    mb1 = (
        torch.tensor([[0.0, 0.0, 0.0], [0.0, 80.0, -80.0]]),
        torch.tensor([1.0, -2.0]),
        torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool),
    )
    mb2 = (torch.tensor([[0.0, 0.0, 95.0]]), torch.tensor([0.5]), torch.tensor([[1, 1, 0]]))
    return [mb1, mb2]


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        ("token_mean", (-3.0 + 2.0 - 1.0) / 6),  # 6 valid tokens
        ("sequence_mean", (-1.0 + 2.0 - 0.5) / 3),  # per-sequence means, 3 sequences
    ],
)
def test_micro_batch_losses_sum_to_global_mean(aggregation, expected):
    batches = _two_micro_batches()
    counts = sum(local_loss_counts(mask) for _, _, mask in batches)
    assert counts.tolist() == [6.0, 3.0]
    cfg = PolicyLossConfig(aggregation=aggregation)
    total = 0.0
    for logp, adv, mask in batches:
        old = torch.where(mask.bool(), logp, torch.zeros_like(logp))  # junk only on padding
        loss, m = policy_loss(
            logp, old, adv, mask, cfg, global_num_tokens=counts[0], global_num_sequences=counts[1]
        )
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in m.values())
        assert m["ratio_mean"].item() == 1.0
        total = total + loss
    assert total.item() == pytest.approx(expected)


def test_truncated_responses_contribute_nothing():
    rewards = torch.tensor([1.0, 0.0])
    truncated = torch.tensor([False, True])
    adv = compute_advantages(rewards, 2, AdvantageConfig(), truncated=truncated).advantages
    logp = _ratios(1.1, 1.1, 0.9, 0.9).view(2, 2).requires_grad_()
    loss, _ = policy_loss(
        logp, torch.zeros(2, 2), adv, torch.ones(2, 2), PolicyLossConfig(), global_num_tokens=4
    )
    loss.backward()
    assert logp.grad[1].eq(0).all() and logp.grad[0].ne(0).all()


def test_missing_normaliser_and_config_errors():
    args = (torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1))
    with pytest.raises(ValueError, match="needs global_num_tokens"):
        policy_loss(*args, PolicyLossConfig())
    with pytest.raises(ValueError, match="needs global_num_sequences"):
        policy_loss(*args, PolicyLossConfig(aggregation="sequence_mean"), global_num_tokens=1)
    with pytest.raises(ValueError, match=r"PolicyLossConfig.eps_low=1.0 must lie in \(0, 1\)"):
        PolicyLossConfig(eps_low=1.0)
    with pytest.raises(ValueError, match="PolicyLossConfig.eps_high=0"):
        PolicyLossConfig(eps_high=0)
    with pytest.raises(ValueError, match="PolicyLossConfig.kl_coef=-0.1"):
        PolicyLossConfig(kl_coef=-0.1)
    with pytest.raises(ValueError, match=r"aggregation='mean'.*token_mean"):
        PolicyLossConfig(aggregation="mean")
    with pytest.raises(ValueError, match=r"loss_mode='gspo'.*\['dual_clip', 'ppo_clip'\]"):
        PolicyLossConfig(loss_mode="gspo")


def _planted_mismatch():
    """Two sequences of 3 tokens (the last of seq 1 padding); pi_old / pi_rollout per token is
    planted: seq 0 ratios (3, 0.5, 1.5), product 2.25; seq 1 ratios (1.2, 1.1), product 1.32."""
    valid = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    ratios = torch.tensor([[3.0, 0.5, 1.5], [1.2, 1.1, 1.0]])
    logp_old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 50.0]])  # junk on padding
    return logp_old, logp_old - torch.log(ratios), valid, ratios


@pytest.mark.parametrize(
    "mode, weights, masked_frac",
    [
        ("none", [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], 0.0),
        ("tis", [[2.0, 0.5, 1.5], [1.2, 1.1, 0.0]], 0.0),  # min(ratio, C=2)
        ("mis", [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]], 0.5),  # 2.25 leaves [1/2, 2]; 1.32 stays
    ],
)
def test_rollout_correction_weights_the_pg_loss_as_the_formula_says(mode, weights, masked_frac):
    logp_old, logp_rollout, valid, ratios = _planted_mismatch()
    logp = logp_old.clone().requires_grad_()  # on-policy: ratio 1, d loss / d logp = -A * w / N
    adv = torch.tensor([1.0, -2.0])
    cfg = PolicyLossConfig(rollout_correction=mode)
    loss, metrics = policy_loss(logp, logp_old, adv, valid, cfg, logp_rollout=logp_rollout, global_num_tokens=5)
    loss.backward()
    expected = torch.tensor(weights)
    assert torch.allclose(logp.grad, -adv[:, None] * expected / 5, atol=1e-6)
    assert loss.item() == pytest.approx((-adv[:, None] * expected).sum().item() / 5, abs=1e-6)
    if mode != "none":
        assert metrics["rollout_ratio_mean"].item() == pytest.approx(ratios[valid].mean().item(), rel=1e-5)
        assert metrics["rollout_ratio_max"].item() == pytest.approx(3.0, rel=1e-5)
        assert metrics["rollout_masked_frac"].item() == masked_frac
    else:
        assert "rollout_ratio_mean" not in metrics


def test_rollout_correction_config_and_input_errors():
    with pytest.raises(ValueError, match=r"rollout_correction='is'.*\['mis', 'none', 'tis'\]"):
        PolicyLossConfig(rollout_correction="is")
    with pytest.raises(ValueError, match="PolicyLossConfig.rollout_correction_cap=1.0 must be finite and > 1"):
        PolicyLossConfig(rollout_correction_cap=1.0)
    with pytest.raises(ValueError, match="needs logp_rollout"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1),
                    PolicyLossConfig(rollout_correction="tis"), global_num_tokens=1)
