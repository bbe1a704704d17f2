"""History-resampling sampler and DAPO's dynamic-sampling filter."""

import itertools
import json
import os
import socket
import sys
import types
from dataclasses import dataclass

import pytest
import torch
import torch.multiprocessing as mp

from srpo_megatron.data import DynamicSamplingFilter, HistoryResamplingSampler, draw_informative, draw_once
from srpo_megatron.data import sampler as sampler_module


def make(total=10, mbs=2, rank=0, dp=1, **kwargs):
    return HistoryResamplingSampler(total, 0, mbs, rank, dp, **kwargs)


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_epoch_serves_a_permutation_and_reshuffles_deterministically():
    sampler = make(seed=3)
    epoch0 = take(sampler, 5)
    assert all(len(mb) == 2 for mb in epoch0)
    assert sorted(sum(epoch0, [])) == list(range(10))
    assert sampler.epoch == 0 and sampler.completed_epochs == 1
    epoch1 = take(sampler, 5)
    assert sampler.epoch == 1 and sorted(sum(epoch1, [])) == list(range(10))
    assert epoch1 != epoch0
    assert take(make(seed=3), 10) == epoch0 + epoch1
    assert take(make(seed=4), 5) != epoch0
    assert sampler.consumed_samples == 20


def test_epoch_is_truncated_to_whole_global_batches():
    sampler = make(total=11, mbs=2, global_batch_size=4)
    served = sum(take(sampler, 4), [])
    assert sampler.epoch_length == 8 and len(set(served)) == 8
    assert (sampler.epoch, sampler.completed_epochs) == (0, 1)
    sampler.record(served[:4], [[True]] * 4)
    take(sampler, 1)
    # the 3-prompt tail was never served, so never recorded, so it stays
    assert sampler.epoch == 1 and sampler.pool() == sorted(set(range(11)) - set(served[:4]))


def _finish_epoch_with_records(sampler):
    take(sampler, 5)
    sampler.record([0, 1, 2, 3], [[True, True], [True, False], [False, False], [True, True, True]])
    sampler.record([1], [[True]])  # accumulates: 1 stays mixed
    return take(sampler, 1)  # the first draw of epoch 1 rebuilds the pool


def test_all_correct_prompts_are_dropped_at_epoch_end():
    sampler = make()
    first = _finish_epoch_with_records(sampler)
    assert sampler.epoch == 1
    assert sampler.pool() == [1, 2, 4, 5, 6, 7, 8, 9]
    (stats,) = sampler.epoch_stats
    assert stats == {
        "epoch": 0, "pool_size": 10, "served": 10, "recorded": 4, "all_correct": 2, "dropped": 2,
        "kept_all_incorrect": 1, "kept_mixed": 1, "next_pool_size": 8, "reset": False,
    }  # fmt: skip
    assert sorted(sum(first + take(sampler, 3), [])) == sampler.pool()  # epoch 1 = new pool


def test_disabled_keeps_everything():
    sampler = make(enabled=False)
    _finish_epoch_with_records(sampler)
    assert sampler.pool() == list(range(10))
    stats = sampler.epoch_stats[0]
    assert (stats["all_correct"], stats["dropped"], stats["next_pool_size"]) == (2, 0, 10)


def test_empty_pool_resets_to_full_dataset_with_warning():
    sampler = make(total=4)
    take(sampler, 2)
    sampler.record(range(4), [[True]] * 4)
    with pytest.warns(RuntimeWarning, match="resetting the pool to all 4 prompts"):
        take(sampler, 1)
    assert sampler.pool() == [0, 1, 2, 3] and sampler.epoch_stats[0]["reset"]


def test_mid_epoch_resume_matches_uninterrupted_order():
    reference = make(seed=7)
    _finish_epoch_with_records(reference)
    take(reference, 1)  # mid epoch 1
    reference.record([5], [[False, True]])
    state = json.loads(json.dumps(reference.state_dict()))  # plain, serialisable types
    expected = take(reference, 12)  # through epochs 1, 2 and into 3

    resumed = make(seed=7)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1 and resumed.pool() == [1, 2, 4, 5, 6, 7, 8, 9]
    assert take(resumed, 12) == expected
    assert resumed.epoch_stats == reference.epoch_stats


def test_revisits_are_prompts_recorded_in_a_finished_epoch():
    sampler = make()
    take(sampler, 5)
    sampler.record([0, 1, 2, 3], [[True, True], [True, False], [False, False], [True, False]])
    # the epoch is not over until the next draw: nothing is a revisit yet
    assert not any(sampler.recorded_in_earlier_epoch(i) for i in range(10))
    take(sampler, 1)
    assert [i for i in range(10) if sampler.recorded_in_earlier_epoch(i)] == [0, 1, 2, 3]
    sampler.record([4], [[True, False]])  # epoch 1's records wait for epoch 1 to end
    assert not sampler.recorded_in_earlier_epoch(4)
    take(sampler, 3)  # the rest of epoch 1 (9 prompts, 8 served)
    assert sampler.epoch == 1 and not sampler.recorded_in_earlier_epoch(4)
    take(sampler, 1)
    assert sampler.epoch == 2
    # 0 was dropped (all correct) but stays recorded; 4 joined at the end of epoch 1
    assert [i for i in range(10) if sampler.recorded_in_earlier_epoch(i)] == [0, 1, 2, 3, 4]


def test_revisits_survive_a_checkpoint_and_tolerate_old_ones():
    sampler = make()
    _finish_epoch_with_records(sampler)
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state["recorded_earlier"] == [0, 1, 2, 3]
    resumed = make()
    resumed.load_state_dict(state)
    assert [i for i in range(10) if resumed.recorded_in_earlier_epoch(i)] == [0, 1, 2, 3]
    del state["recorded_earlier"]  # written before revisits were tracked
    old = make()
    old.load_state_dict(state)
    assert not any(old.recorded_in_earlier_epoch(i) for i in range(10)) and old.pool() == sampler.pool()


def test_load_state_dict_rejects_a_different_seed():
    state = make(seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1 but this sampler has 2"):
        make(seed=2).load_state_dict(state)


def test_ranks_get_disjoint_micro_batches():
    ranks = [take(make(total=12, mbs=2, rank=r, dp=2), 3) for r in range(2)]
    assert not set(sum(ranks[0], [])) & set(sum(ranks[1], []))
    assert sorted(sum(ranks[0] + ranks[1], [])) == list(range(12))


def test_constructor_validation():
    with pytest.raises(ValueError, match="data_parallel_rank=2"):
        make(rank=2, dp=2)
    with pytest.raises(ValueError, match="global_batch_size=3 must be a multiple"):
        make(global_batch_size=3)
    with pytest.raises(ValueError, match="total_samples=2 is smaller than one global batch"):
        make(total=2, mbs=4)
    with pytest.raises(ValueError, match="consumed_samples=3"):
        HistoryResamplingSampler(10, 3, 2, 0, 1)
    with pytest.raises(ValueError, match="2 sample_ids but 1 correctness"):
        make().record([0, 1], [[True]])


def test_default_group_is_megatrons_data_parallel_group(monkeypatch):
    fake = types.SimpleNamespace(
        model_parallel_is_initialized=lambda: True, get_data_parallel_group=lambda: "dp"
    )
    monkeypatch.setitem(sys.modules, "megatron.core.parallel_state", fake)
    assert sampler_module._data_parallel_group(None) == "dp"
    assert sampler_module._data_parallel_group("mine") == "mine"
    fake.model_parallel_is_initialized = lambda: False
    assert sampler_module._data_parallel_group(None) is None


def _dp2_worker(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        sampler = make(total=12, mbs=2, rank=rank, dp=2)
        served = sum(take(sampler, 3), [])  # the whole epoch between the two ranks
        # rank 0 reports its prompts all correct, rank 1 its prompts mixed
        sampler.record(served, [[True, True] if rank == 0 else [True, False]] * len(served))
        next_mb = take(sampler, 1)[0]
        views = [None, None]
        torch.distributed.all_gather_object(
            views, (served, sampler.pool(), next_mb, sampler.epoch_stats)
        )
        (served0, pool0, mb0, stats0), (served1, pool1, mb1, stats1) = views
        assert pool0 == pool1 == sorted(served1) and stats0 == stats1
        assert stats0[0]["dropped"] == 6 and stats0[0]["kept_mixed"] == 6
        assert not set(served0) & set(served1) and not set(mb0) & set(mb1)
        assert set(mb0 + mb1) <= set(pool0)
    finally:
        torch.distributed.destroy_process_group()


def test_dp2_ranks_share_history_over_gloo():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dp2_worker, args=(port,), nprocs=2, join=True)


def test_dynamic_sampling_filter_refills_batch():
    flt = DynamicSamplingFilter(batch_size=3, group_size=2, max_retries=2)
    # 4 prompts: all-correct, mixed, all-wrong, mixed -> 2 informative of 4
    first = flt.update(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]))
    assert first.keep.tolist() == [False, True, False, True]
    assert (first.num_kept, first.done) == (2, False)
    second = flt.update(torch.tensor([0.0, 1.0, 1.0, 0.0]))  # 2 informative, only 1 needed
    assert second.keep.tolist() == [True, False]
    assert (second.num_kept, second.done) == (3, True)


def test_dynamic_sampling_filter_gives_up_after_max_retries():
    flt = DynamicSamplingFilter(batch_size=2, group_size=2, max_retries=1)
    first = flt.update(torch.ones(4))  # nothing informative
    assert (first.num_kept, first.done) == (0, False)
    second = flt.update(torch.ones(16))
    assert (second.num_kept, second.done) == (0, True)
    flt.reset()
    assert flt.update(torch.tensor([1.0, 0.0, 0.0, 1.0])).done
    with pytest.raises(ValueError, match="group_size=1"):
        DynamicSamplingFilter(batch_size=2, group_size=1)


@dataclass(frozen=True)
class _Scored:
    reward: float
    draw: int


def _draws(rewards_per_draw):
    """A `draw` callable serving the given reward lists one draw after another, and its log."""
    made = []

    def draw():
        index = len(made)
        made.append(index)
        return [_Scored(r, index) for r in rewards_per_draw[index]]

    return draw, made


def test_draw_informative_refills_from_later_draws_and_counts_every_rollout():
    # 2 groups of 2 per draw; draw 0 has one mixed group, draw 1 none, draw 2 two (one needed)
    draw, made = _draws([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
    kept, generated = draw_informative(draw, group_size=2, extra_draws=3)
    assert made == [0, 1, 2] and generated == 12
    assert [(s.draw, s.reward) for s in kept] == [(0, 0.0), (0, 1.0), (2, 1.0), (2, 0.0)]


def test_draw_informative_trains_on_the_first_draw_when_nothing_is_informative():
    draw, made = _draws([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    kept, generated = draw_informative(draw, group_size=2, extra_draws=2)
    assert made == [0, 1, 2] and generated == 6
    assert [s.draw for s in kept] == [0, 0]


def test_draw_once_is_one_draw():
    draw, made = _draws([[1.0, 0.0], [1.0, 1.0]])
    assert draw_once(draw) == ([_Scored(1.0, 0), _Scored(0.0, 0)], 2) and made == [0]
