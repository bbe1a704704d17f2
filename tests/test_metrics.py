"""Step metrics reduced over every data-parallel replica (`srpo_megatron.metrics.reduce_step`)."""

import pytest

from srpo_megatron.metrics import ReplicaRecord, SampleRecord, UpdateRecord, reduce_step

def sample(accuracy, domain="math", revisited=False, length=10, truncated=False, reflective=False):
    return SampleRecord(domain=domain, reward=accuracy + 0.5, accuracy=accuracy, response_len=length,
                        truncated=truncated, reflective=reflective, revisited=revisited)


def update(pg_loss, clip_frac, micro_batches, tokens, diff_max, diff_sum, kl_sum=None):
    return UpdateRecord(loss_metrics={"pg_loss": pg_loss, "loss": pg_loss, "clip_frac": clip_frac,
                                      "grad_norm": 1.5},
                        micro_batches=micro_batches, response_tokens=tokens, logprob_diff_max=diff_max,
                        logprob_diff_sum=diff_sum, kl_sum=kl_sum)


@pytest.fixture
def replicas():
    # replica 0: 2 groups, both all-zero advantage (one solved, one failed), its second prompt revisited
    first = ReplicaRecord(
        samples=(sample(1.0), sample(1.0), sample(0.0, revisited=True, length=30),
                 sample(0.0, revisited=True, length=30, truncated=True)),
        zero_groups=(True, True), generated=4,
        update=update(pg_loss=0.25, clip_frac=0.1, micro_batches=1, tokens=80, diff_max=1e-4, diff_sum=4e-3,
                      kl_sum=0.8))
    # replica 1: 3 groups, two informative; one code group, revisited; DAPO made it generate more
    second = ReplicaRecord(
        samples=(sample(1.0, revisited=True), sample(0.0, revisited=True), sample(1.0), sample(0.0),
                 sample(1.0, domain="code", reflective=True), sample(1.0, domain="code")),
        zero_groups=(False, False, True), generated=12,
        update=update(pg_loss=-0.05, clip_frac=0.4, micro_batches=3, tokens=60, diff_max=3e-4, diff_sum=3e-3,
                      kl_sum=0.6))
    return [first, second]


def test_group_counts_cover_every_replica(replicas):
    metrics = reduce_step(replicas, step_seconds=2.0)
    # 3 of 5 groups carry no signal: replica 0 alone would say 1.0, replica 1 alone 1/3
    assert metrics["groups"] == 5
    assert metrics["informative_groups"] == 2
    assert metrics["zero_adv_frac"] == pytest.approx(3 / 5)
    assert metrics["rollouts"] == 16


def test_sample_means_cover_every_replica(replicas):
    metrics = reduce_step(replicas, step_seconds=2.0)
    assert metrics["accuracy"] == pytest.approx(6 / 10)
    assert metrics["accuracy/math"] == pytest.approx(4 / 8)
    assert metrics["accuracy/code"] == pytest.approx(1.0)
    assert metrics["reward_mean"] == pytest.approx(6 / 10 + 0.5)
    assert metrics["response_len_mean"] == pytest.approx(140 / 10)
    assert metrics["truncated_frac"] == pytest.approx(0.1)
    assert metrics["reflection_rate"] == pytest.approx(0.1)
    assert metrics["tokens_per_s"] == pytest.approx(140 / 2.0)


def test_revisit_accuracy_is_over_revisited_rollouts_only(replicas):
    metrics = reduce_step(replicas, step_seconds=1.0)
    # revisited: replica 0's failed pair (0, 0) and replica 1's mixed pair (1, 0)
    assert metrics["revisited_frac"] == pytest.approx(4 / 10)
    assert metrics["accuracy/revisited"] == pytest.approx(1 / 4)


def test_update_metrics_add_shares_and_weight_means(replicas):
    metrics = reduce_step(replicas, step_seconds=1.0)
    assert metrics["pg_loss"] == pytest.approx(0.25 - 0.05)  # shares of the global mean add up
    assert metrics["loss"] == pytest.approx(0.2)
    assert metrics["clip_frac"] == pytest.approx((0.1 * 1 + 0.4 * 3) / 4)  # per micro-batch
    assert metrics["grad_norm"] == pytest.approx(1.5)
    assert metrics["logprob_diff"] == pytest.approx(3e-4)  # the worst token of any replica
    assert metrics["logprob_diff_mean"] == pytest.approx(7e-3 / 140)
    assert metrics["kl"] == pytest.approx(1.4 / 140)


def test_absent_subsets_are_none_not_zero():
    record = ReplicaRecord(samples=(sample(1.0), sample(0.0)), zero_groups=(False,), generated=2,
                           update=update(0.1, 0.0, micro_batches=1, tokens=20, diff_max=0.0, diff_sum=0.0))
    metrics = reduce_step([record], step_seconds=1.0)
    assert metrics["accuracy/revisited"] is None and metrics["revisited_frac"] == 0.0
    assert metrics["accuracy/code"] is None and metrics["accuracy/math"] == 0.5
    assert metrics["kl"] == 0.0  # no reference model
    assert (metrics["groups"], metrics["informative_groups"], metrics["zero_adv_frac"]) == (1, 1, 0.0)


def test_no_groups_gives_zero_fraction():
    record = ReplicaRecord(samples=(), zero_groups=(), generated=0,
                           update=update(0.0, 0.0, micro_batches=1, tokens=0, diff_max=0.0, diff_sum=0.0))
    metrics = reduce_step([record], step_seconds=0.0)
    assert (metrics["groups"], metrics["zero_adv_frac"], metrics["tokens_per_s"]) == (0, 0.0, 0.0)
    assert metrics["accuracy/math"] is None and metrics["accuracy/revisited"] is None
