"""The typed rollout batch: packing, its device rule, micro-batches, and the statistics it reports."""

import dataclasses

import pytest
import torch

from srpo_megatron.rollout.batch import RolloutBatch, Sample


def _sample(prompt, response, reward, truncated=False, scored=True):
    return Sample("math", 0, prompt, response, [-0.5] * len(response), truncated, reward, reward, False, False,
                  scored)


def _batch():
    samples = [_sample([1, 2], [3, 4, 5], 1.0), _sample([1, 2], [6], 0.0, truncated=True),
               _sample([7], [8, 9], 1.0), _sample([7], [9], 1.0, scored=False)]
    return RolloutBatch.pack(samples, group_size=2, rows_multiple=3)


def test_pack_right_pads_and_rounds_rows_up():
    batch = _batch()
    assert batch.num_samples == 4 and batch.num_rows == 6 and batch.tokens.shape == (6, 5)
    assert batch.tokens[0].tolist() == [1, 2, 3, 4, 5] and batch.tokens[1].tolist() == [1, 2, 6, 0, 0]
    assert batch.mask[0].tolist() == [False, False, True, True, True]
    assert not batch.mask[4:].any()  # padding rows train on nothing
    assert batch.rollout_logprobs[2].tolist() == [0.0, -0.5, -0.5, 0.0, 0.0]
    assert batch.truncated.tolist() == [False, True, False, False]
    assert batch.unscored.tolist() == [False, False, False, True]


def test_the_batch_refuses_tensors_off_the_host():
    batch = _batch()
    with pytest.raises(ValueError, match=r"RolloutBatch.old_logprobs is on meta; the batch lives on the host"):
        dataclasses.replace(batch, old_logprobs=torch.zeros(6, 5, device="meta"))


def test_micro_batches_hold_the_set_fields_only():
    batch = _batch().with_advantages(torch.tensor([1.0, -1.0, 0.0, 0.0]))
    micro = batch.micro_batches(range(0, 6), 3, ("tokens", "advantages", "old_logprobs"))
    # old_logprobs not computed yet; logits_from is every micro-batch's (see test_batch_plan)
    assert [sorted(m) for m in micro] == [["advantages", "logits_from", "tokens"]] * 2
    assert micro[1]["advantages"].tolist() == [0.0, 0.0, 0.0]
    assert batch.zero_groups() == (False, True)


def test_update_record_compares_log_probs_on_response_tokens():
    batch = _batch()
    old = batch.rollout_logprobs.clone()
    old[0, 2] += 0.25  # one response token differs from vLLM's log-prob
    batch = dataclasses.replace(batch, old_logprobs=old, ref_logprobs=old.clone())
    record = batch.update_record({"loss": torch.tensor(0.5)}, micro_batch_size=3)
    assert record.loss_metrics == {"loss": 0.5} and record.micro_batches == 2
    assert record.response_tokens == 7
    assert record.logprob_diff_max == pytest.approx(0.25) and record.logprob_diff_sum == pytest.approx(0.25)
    assert record.kl_sum == 0.0


def test_samples_report_whether_they_were_scored():
    assert _sample([1], [2], 0.0, scored=False).metrics_record().scored is False
