"""Micro-batch plans of the rollout batch: fixed row counts or a token budget, each micro-batch
cut to its own longest row, results scattered back, padding counted."""

import torch

from srpo_megatron.rollout.batch import RolloutBatch, Sample


def _batch(response_lengths, rows_multiple=1, prompt_lengths=None):
    prompt_lengths = prompt_lengths or [2] * len(response_lengths)
    samples = [Sample("math", 0, [1] * p, [3] * n, [-0.5] * n, False, 0.0, 0.0, False, False)
               for p, n in zip(prompt_lengths, response_lengths)]
    return RolloutBatch.pack(samples, group_size=1, rows_multiple=rows_multiple)


def test_fixed_size_plan_cuts_each_micro_batch_to_its_longest_row():
    batch = _batch([1, 6, 2, 2])  # row lengths 3, 8, 4, 4
    plan = batch.plan(range(4), 2)
    assert [p.tolist() for p in plan] == [[0, 1], [2, 3]]
    micro = batch.gather(plan, ("tokens", "mask"))
    assert [m["tokens"].shape for m in micro] == [(2, 8), (2, 4)]
    assert batch.padding(plan) == (5 + 0, 16 + 8)


def test_token_budget_groups_longest_first_and_a_long_row_goes_alone():
    batch = _batch([1, 6, 2, 2, 9])  # row lengths 3, 8, 4, 4, 11
    plan = batch.plan(range(5), 2, max_tokens=10)
    assert [p.tolist() for p in plan] == [[4], [1], [2, 3], [0]]  # 11 > 10 alone; 2 x 4 fit, a third not
    assert sum(len(rows) * int(batch.row_lengths()[rows].max()) for rows in plan) == 11 + 8 + 8 + 3
    assert batch.padding(plan) == (0, 30)


def test_scatter_puts_results_back_in_row_order_and_empty_rows_cost_one_column():
    batch = _batch([1, 6, 2], rows_multiple=4)  # a padding row at the end
    assert batch.row_lengths().tolist() == [3, 8, 4, 1]
    plan = batch.plan(range(4), 2, max_tokens=8)
    parts = [m["tokens"].float() for m in batch.gather(plan, ("tokens",))]
    assert torch.equal(batch.scatter(plan, parts), batch.tokens.float())
    padding, positions = batch.padding(plan)
    assert positions == sum(len(rows) * int(batch.row_lengths()[rows].max()) for rows in plan)
    assert padding == positions - (3 + 8 + 4)  # the empty row's one column is padding


def test_logits_from_is_the_last_prompt_position_before_the_micro_batch_s_first_response():
    batch = _batch([1, 6, 2, 2], rows_multiple=6, prompt_lengths=[5, 3, 4, 2])  # two empty rows at the end
    plan = [torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([4, 5])]
    micro = batch.gather(plan, ("tokens",))
    # responses start at 5, 4 (rows 0, 2) and 3, 2 (rows 1, 3): logits from one before the first;
    # a micro-batch without responses keeps every position
    assert [m["logits_from"] for m in micro] == [3, 1, 0]
