"""Vocab-parallel log-probs and entropy: TP=2 over gloo vs a full-vocabulary log_softmax."""

import os
import socket

import torch
import torch.multiprocessing as mp

from srpo_megatron.algorithms.logprobs import vocab_parallel_entropy, vocab_parallel_logprobs

B, T, V = 2, 5, 16
TEMPERATURE = 0.7


def _reference(logits, targets):
    """Full-vocabulary log-probs and entropy at TEMPERATURE, with autograd."""
    logp_all = torch.log_softmax(logits / TEMPERATURE, dim=-1)  # [B, T, V]
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # [B, T]
    return logp, entropy


def _inputs():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V, generator=generator) * 3
    targets = torch.randint(0, V, (B, T), generator=generator)
    return logits, targets


def _check(logits_shard, full_logits, targets, shard_slice, group=None):
    """Values and gradients (w.r.t. this rank's shard) must match the full computation."""
    full = full_logits.clone().requires_grad_()
    ref_logp, ref_entropy = _reference(full, targets)
    (ref_logp.sum() + ref_entropy.sum()).backward()

    shard = logits_shard.clone().requires_grad_()
    before = shard.detach().clone()
    logp = vocab_parallel_logprobs(shard, targets, temperature=TEMPERATURE)
    entropy = vocab_parallel_entropy(shard, temperature=TEMPERATURE, group=group)
    assert torch.equal(shard.detach(), before), "caller's logits were modified in place"
    torch.testing.assert_close(logp, ref_logp.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy.detach(), atol=1e-5, rtol=0)
    (logp.sum() + entropy.sum()).backward()
    torch.testing.assert_close(shard.grad, full.grad[..., shard_slice], atol=1e-5, rtol=0)


def _tp2_worker(rank, port):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )
    from srpo_megatron.platform import destroy_distributed, init_distributed

    ctx = init_distributed(tensor_parallel=2)
    try:
        assert ctx.tp_rank == rank
        logits, targets = _inputs()
        shard_slice = slice(rank * V // 2, (rank + 1) * V // 2)
        _check(logits[..., shard_slice], logits, targets, shard_slice)
    finally:
        destroy_distributed()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tp2_matches_full_log_softmax():
    mp.spawn(_tp2_worker, args=(_free_port(),), nprocs=2, join=True)


def test_tp1_without_parallel_state():
    logits, targets = _inputs()
    _check(logits, logits, targets, slice(None))
