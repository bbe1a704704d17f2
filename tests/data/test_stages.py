"""Stage scheduler: validation, mixture counts, transitions, per-stage pools, resume."""

import json

import pytest

from srpo_megatron.data import StageConfig, StageScheduler
from srpo_megatron.data.stages import history_sampler_factory, mixture_counts

SIZES = {"math": 20, "code": 10}


def scheduler(stages, prompts_per_step=4, dp=1, rank=0):
    factory = history_sampler_factory(SIZES, data_parallel_rank=rank, data_parallel_size=dp, seed=5)
    return StageScheduler(stages, prompts_per_step, factory, data_parallel_size=dp)


def two_stages(first_end=None):
    first_end = first_end or {"steps": 2}
    return [
        StageConfig("stage1_math", {"math": 1.0}, **first_end),
        StageConfig("stage2_mixed", {"math": 0.5, "code": 0.5}, steps=3),
    ]


def test_stage_config_validation_names_stage_and_field():
    with pytest.raises(ValueError, match=r"stage 's2': StageConfig.mixture\['code'\]=0"):
        StageConfig("s2", {"math": 1.0, "code": 0}, steps=1)
    with pytest.raises(ValueError, match="stage 's': StageConfig.mixture is empty"):
        StageConfig("s", {}, steps=1)
    with pytest.raises(ValueError, match=r"stage 's': set exactly one .*steps=1, epochs=1"):
        StageConfig("s", {"math": 1.0}, steps=1, epochs=1)
    with pytest.raises(ValueError, match="steps=None, epochs=None"):
        StageConfig("s", {"math": 1.0})
    with pytest.raises(ValueError, match="StageConfig.epochs=0 must be an int > 0"):
        StageConfig("s", {"math": 1.0}, epochs=0)


def test_scheduler_validation():
    with pytest.raises(ValueError, match="stages is empty"):
        scheduler([])
    with pytest.raises(ValueError, match=r"duplicate stage names \['a'\]"):
        scheduler([StageConfig("a", {"math": 1}, steps=1)] * 2)
    with pytest.raises(
        ValueError, match="prompts_per_step=6 must be a positive multiple of data_parallel_size=4"
    ):
        scheduler(two_stages(), prompts_per_step=6, dp=4)
    with pytest.raises(ValueError, match=r"domain 'physics', which has no dataset"):
        scheduler([StageConfig("a", {"physics": 1}, steps=1)]).next_batch()


def test_mixture_counts_largest_remainder():
    assert mixture_counts({"math": 0.5, "code": 0.5}, 8) == {"math": 4, "code": 4}
    # quotas 6.67 / 3.33 -> floors 6 / 3, the leftover goes to the larger remainder
    assert mixture_counts({"math": 2, "code": 1}, 10) == {"math": 7, "code": 3}
    # equal remainders: the domain listed first wins
    assert mixture_counts({"a": 1, "b": 1, "c": 1}, 4) == {"a": 2, "b": 1, "c": 1}
    # in units of the DP size (2): 5 units, quotas 3.33 / 1.67 -> 3 / 2 units
    assert mixture_counts({"math": 2, "code": 1}, 10, multiple_of=2) == {"math": 6, "code": 4}
    assert mixture_counts({"math": 0.99, "code": 0.01}, 4) == {"math": 4, "code": 0}


def test_transition_by_steps_with_fresh_pools():
    sched = scheduler(two_stages())
    batch = sched.next_batch()
    assert list(batch) == ["math"] and len(batch["math"]) == 4
    sched.record("math", batch["math"], [[True, True]] * 4)
    assert not sched.update(1)
    sched.next_batch()
    assert sched.update(2) and sched.stage.name == "stage2_mixed"
    batch = sched.next_batch()
    assert {d: len(ids) for d, ids in batch.items()} == {"math": 2, "code": 2}
    assert sched.sampler("math").epoch == 0 and sched.sampler("math").consumed_samples == 2
    assert not sched.update(4)
    assert not sched.update(5)  # the last stage never transitions...
    assert sched.stage_done(5)  # ...but reports when its steps have run out


def test_transition_by_epochs_uses_every_domains_sampler():
    sched = scheduler(
        [
            StageConfig("math_only", {"math": 1.0}, epochs=1),
            StageConfig("mixed", {"math": 1.0, "code": 1.0}, epochs=1),
        ]
    )
    for step in range(1, 6):  # 20 math prompts, 4 per step -> one epoch in 5 steps
        sched.next_batch()
        assert sched.update(step) == (step == 5)
    assert sched.stage.name == "mixed" and sched.stage_epochs() == 0
    # 2 prompts per domain per step: code (10) finishes its epoch after 5 steps, math (20)
    # after 10; the stage ends when every domain has finished one.
    for step in range(6, 16):
        sched.next_batch()
        if step == 10:
            assert sched.sampler("code").completed_epochs == 1
            assert sched.sampler("math").completed_epochs == 0
        assert sched.stage_done(step) == (step == 15)


def test_state_round_trip_resumes_mid_stage():
    sched = scheduler(two_stages(), prompts_per_step=4, dp=2, rank=1)
    for step in (1, 2, 3):
        batch = sched.next_batch()
        sched.record("math", batch["math"], [[False, True]] * len(batch["math"]))
        sched.update(step)
    state = json.loads(json.dumps(sched.state_dict()))
    expected = [sched.next_batch() for _ in range(4)]

    resumed = scheduler(two_stages(), prompts_per_step=4, dp=2, rank=1)
    resumed.load_state_dict(state)
    assert resumed.stage.name == "stage2_mixed"
    assert [resumed.next_batch() for _ in range(4)] == expected
    assert resumed.stage_done(5) and not resumed.stage_done(4)  # stage 2 began at step 2

    renamed = [StageConfig("other", {"math": 1.0}, steps=2)] + two_stages()[1:]
    with pytest.raises(ValueError, match=r"checkpoint stages \['stage1_math', 'stage2_mixed'\]"):
        scheduler(renamed, prompts_per_step=4, dp=2, rank=1).load_state_dict(state)


def test_revisits_are_per_stage():
    sched = scheduler(
        [StageConfig("s1", {"code": 1.0}, steps=4), StageConfig("s2", {"code": 1.0}, steps=1)],
        prompts_per_step=5,
    )
    first = sched.next_batch()["code"]  # 10 code prompts, 5 per step: epoch 0 is steps 1-2
    sched.record("code", first, [[False, True]] * 5)
    sched.next_batch()
    assert not any(sched.recorded_in_earlier_epoch("code", i) for i in first)
    sched.next_batch()  # epoch 1 begins: epoch 0's records count as earlier
    assert all(sched.recorded_in_earlier_epoch("code", i) for i in first)
    assert sched.update(4) and sched.stage.name == "s2"
    assert not any(sched.recorded_in_earlier_epoch("code", i) for i in first)  # a fresh sampler


def test_record_rollouts_groups_outcomes_per_prompt():
    sched = scheduler([StageConfig("math_only", {"math": 1.0}, steps=10)], prompts_per_step=2)
    prompts = sched.next_batch()
    (a, b) = prompts["math"]
    # all-correct for a (dropped at the epoch's end), mixed for b; the rollouts come in any order
    sched.record_rollouts(prompts, [("math", b, True), ("math", a, True), ("math", b, False), ("math", a, True)], 2)
    state = sched.sampler("math").state_dict()
    assert state["history"] == sorted([[a, 2, 2], [b, 1, 2]])
    assert sched.pool_size() == SIZES["math"]  # the pool shrinks only at the epoch's end
    with pytest.raises(ValueError, match=rf"math prompts need 2 rollouts each; got {{{a}: 1}}"):
        sched.record_rollouts(prompts, [("math", a, True), ("math", b, True), ("math", b, False)], 2)
