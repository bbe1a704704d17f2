"""Micro-batch grouping cannot change an update: full-width micro-batches with logits on every
position (the old batching), micro-batches cut to their own longest row, token-budget
micro-batches of mixed shapes, THD-packed micro-batches and packed micro-batches whose rows
compute a shared prompt once, all with logits from the first response on (`logits_from`), give
the same loss and gradients at TP=2 and at PP=2; so does the on-policy update without a separate
old-log-prob pass."""

import contextlib
import dataclasses
from unittest import mock

import pytest
import torch

from srpo_megatron import platform

ROWS, WIDTH = 8, 24
PROMPTS = [4, 3, 5, 4, 3, 5, 4, 3]  # prompt length per row; rows with the same length have the same prompt
# (micro_batch_size, max_tokens_per_micro_batch, pack_sequences, share_prompts): one full-width
# micro-batch is the old batching
VARIANTS = {"full_width": (ROWS, 0, False, False), "cut_rows": (2, 0, False, False),
            "token_budget": (ROWS, 40, False, False), "packed": (3, 0, True, False),
            "packed_budget": (ROWS, 40, True, False), "shared": (3, 0, True, True),
            "shared_budget": (ROWS, 40, True, True), "shared_one_batch": (ROWS, 0, True, True)}


def _batch(vocab_size: int):
    from srpo_megatron.rollout.batch import RolloutBatch

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab_size, (ROWS, WIDTH), generator=gen)
    mask = torch.zeros(ROWS, WIDTH, dtype=torch.bool)
    for row, rank in enumerate([3, 0, 6, 1, 7, 2, 5, 4]):  # responses of 2..19 tokens, unsorted; one fills the width
        prompt = PROMPTS[row]
        tokens[row, :prompt] = tokens[PROMPTS.index(prompt), :prompt]  # the group's prompt
        mask[row, prompt: prompt + 2 + rank * (WIDTH - prompt - 2) // (ROWS - 1)] = True
        tokens[row, prompt:][~mask[row, prompt:]] = 0  # right padding, as RolloutBatch.pack writes it
    no = torch.zeros(ROWS, dtype=torch.bool)
    return RolloutBatch(tokens, mask, torch.zeros(ROWS, WIDTH), torch.zeros(ROWS), no, no, group_size=4,
                        advantages=torch.randn(ROWS, generator=gen))


def update_rank(hf_dir: str, tp: int, pp: int, out_file: str) -> None:
    from transformers import AutoConfig

    from srpo_megatron.algorithms import PolicyLossConfig
    from srpo_megatron.config import ModelConfig, OptimizerConfig
    from srpo_megatron.models import model_shape, padded_vocab_size
    from srpo_megatron.models.forward import compute_logprobs
    from srpo_megatron.policy import UpdateSettings, build_policy, update_policy
    from srpo_megatron.rollout.batch import RolloutBatch
    from srpo_megatron.rollout.weight_sync import iter_full_hf_weights

    ctx = platform.init_distributed(tp, pp, seed=0)
    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    vocab = padded_vocab_size(shape.vocab_size, tp)
    batch = _batch(shape.vocab_size)

    def fresh():
        return build_policy(shape, ModelConfig(hf_path=hf_dir, tensor_parallel=tp, pipeline_parallel=pp),
                            OptimizerConfig(lr=1e-3, clip_grad=0.0), vocab)

    gather = RolloutBatch.gather

    def every_logit(self, plan, fields, *packing):  # the old batching: the output layer on every position
        return [micro | {"logits_from": 0} for micro in gather(self, plan, fields, *packing)]

    def update(size: int, max_tokens: int, old: torch.Tensor | None, packed: bool = False, share: bool = False,
               all_logits: bool = False):
        model, optimizer = fresh()
        settings = UpdateSettings(1, size, 1e-3, shape.vocab_size, 1.0, PolicyLossConfig(), max_tokens, packed, share)
        with mock.patch.object(RolloutBatch, "gather", every_logit) if all_logits else contextlib.nullcontext():
            metrics, own = update_policy(model, optimizer, dataclasses.replace(batch, old_logprobs=old), settings)
        with torch.no_grad():  # the gradients in HF names, gathered over TP and PP
            for param in model.module.parameters():
                param.copy_(param.main_grad)
            grads = {name: t.clone() for name, t in iter_full_hf_weights(model.module, shape, vocab)}
        return {"loss": metrics.get("loss"), "pad_frac": metrics["pad_frac"], "grads": grads, "own": own}

    plan = batch.plan(range(ROWS), ROWS)
    micro = batch.gather(plan, ("tokens",))
    assert micro[0]["logits_from"] == min(PROMPTS) - 1
    exact = compute_logprobs(fresh()[0].module, micro, shape.vocab_size)
    exact = batch.scatter(plan, exact) if exact else None  # the old-log-prob pass (last stage only)
    every = compute_logprobs(fresh()[0].module, [m | {"logits_from": 0} for m in micro], shape.vocab_size)
    every = batch.scatter(plan, every) if every else None
    packed_plan = batch.plan(range(ROWS), 3)
    packed = compute_logprobs(fresh()[0].module, batch.gather(packed_plan, ("tokens",), packed=True), shape.vocab_size)
    packed = batch.scatter(packed_plan, packed) if packed else None
    shared = compute_logprobs(fresh()[0].module, batch.gather(plan, ("tokens",), True, True), shape.vocab_size)
    shared = batch.scatter(plan, shared) if shared else None
    # on-policy: no old log-probs, the update's own forward gives them
    results = {"on_policy": update(ROWS, 0, None), "two_pass": update(ROWS, 0, exact)}
    shifted = exact - 0.05 * batch.mask if exact is not None else None  # ratios != 1: clipping paths run
    results |= {name: update(size, budget, shifted, packed, share, all_logits=name == "full_width")
                for name, (size, budget, packed, share) in VARIANTS.items()}
    if ctx.is_last_pp_stage and ctx.tp_rank == 0:
        results["exact"], results["every_logit"], results["packed_logprobs"] = exact, every, packed
        results["shared_logprobs"] = shared
        torch.save(results, out_file)


def _assert_same_update(a: dict, b: dict, tol: float) -> None:
    assert abs(a["loss"] - b["loss"]) < tol and a["loss"] != 0.0
    assert a["grads"].keys() == b["grads"].keys()
    for name, grad in a["grads"].items():
        assert (grad - b["grads"][name]).abs().max() < tol, name
    assert any(g.abs().max() > 0 for g in a["grads"].values())


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_micro_batching_keeps_loss_and_gradients(tiny_qwen, tmp_path, tp, pp):
    out = tmp_path / "out.pt"
    platform.spawn(update_rank, 2, str(tiny_qwen), tp, pp, str(out))
    results = torch.load(out)
    full = results["full_width"]
    for name in ("cut_rows", "token_budget", "packed", "packed_budget", "shared", "shared_budget", "shared_one_batch"):
        _assert_same_update(full, results[name], 1e-5)
    # the budget (40 tokens) groups rows of similar length: less padding than full width; packs have none
    assert results["token_budget"]["pad_frac"] < results["cut_rows"]["pad_frac"] < full["pad_frac"]
    assert results["packed"]["pad_frac"] == results["packed_budget"]["pad_frac"] == 0.0
    # the on-policy update equals the two-pass update, and its own log-probs are the old ones
    _assert_same_update(results["on_policy"], results["two_pass"], 1e-6)
    mask = _batch(1001).mask
    assert torch.allclose(results["on_policy"]["own"][mask], results["exact"][mask], atol=1e-6)
    # log-probs from logits on every position equal those with the prompt's logits skipped
    assert torch.allclose(results["every_logit"][mask], results["exact"][mask], atol=1e-6)
    assert torch.allclose(results["packed_logprobs"][mask], results["exact"][mask], atol=1e-5)
    assert torch.allclose(results["shared_logprobs"][mask], results["exact"][mask], atol=1e-5)
