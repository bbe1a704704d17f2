"""`SdpaAttention` computes megatron's `DotProductAttention`: same outputs and gradients (fp32,
grouped-query heads, causal and explicit masks, query-key layer scaling), and a THD-packed batch
equals its sequences run one by one."""

import pytest
import torch

from srpo_megatron import platform


@pytest.fixture(scope="module")
def attention_pair():
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from srpo_megatron.models.attention import SdpaAttention

    platform.init_distributed(1, 1, seed=0)  # megatron's parallel state; undone after this module

    def build(cls, layer_scaling: bool):
        config = TransformerConfig(num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                                   kv_channels=16, attention_dropout=0.0, apply_query_key_layer_scaling=layer_scaling,
                                   attention_softmax_in_fp32=True, masked_softmax_fusion=False)
        return cls(config, layer_number=3, attn_mask_type=AttnMaskType.causal, attention_type="self")

    yield build, DotProductAttention, SdpaAttention
    platform.destroy_distributed()


def _qkv(seq: int, batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(seq, batch, 4, 16, generator=gen)
    k, v = torch.randn(seq, batch, 2, 16, generator=gen), torch.randn(seq, batch, 2, 16, generator=gen)
    return [t.requires_grad_() for t in (q, k, v)]


def _run(module, qkv, mask=None, **kwargs):
    out = module(*qkv, mask, **kwargs)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in qkv]
    for t in qkv:
        t.grad = None
    return out.detach(), grads


@pytest.mark.parametrize("layer_scaling", [False, True])
def test_sdpa_matches_dot_product_attention(attention_pair, layer_scaling):
    build, reference_cls, sdpa_cls = attention_pair
    qkv = _qkv(seq=12, batch=3)
    expected, expected_grads = _run(build(reference_cls, layer_scaling), qkv)
    got, got_grads = _run(build(sdpa_cls, layer_scaling), qkv)
    assert got.shape == expected.shape == (12, 3, 64)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_sdpa_explicit_mask(attention_pair):
    """megatron's masks are True where attention is forbidden (here: causal plus one padded key)."""
    build, reference_cls, sdpa_cls = attention_pair
    qkv = _qkv(seq=8, batch=2, seed=1)
    mask = torch.ones(8, 8, dtype=torch.bool).triu(1).expand(2, 1, 8, 8).clone()
    mask[1, :, 3:, 2] = True
    expected, expected_grads = _run(build(reference_cls, False), qkv, mask)
    got, got_grads = _run(build(sdpa_cls, False), qkv, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_sdpa_thd_packing_equals_sequences_alone(attention_pair):
    from megatron.core.packed_seq_params import PackedSeqParams

    build, _, sdpa_cls = attention_pair
    attention = build(sdpa_cls, False)
    lengths = [5, 1, 9, 3]
    seqs = [_qkv(seq=n, batch=1, seed=10 + i) for i, n in enumerate(lengths)]
    alone = [attention(*qkv, None).detach() for qkv in seqs]  # [L, 1, 64] each
    packed = [torch.cat([qkv[j].detach()[:, 0] for qkv in seqs]).requires_grad_() for j in range(3)]  # [t, n, hn]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=9, max_seqlen_kv=9)
    out = attention(*packed, None, packed_seq_params=params)  # [t, np, hn]
    assert out.shape == (sum(lengths), 4, 16)
    torch.testing.assert_close(out.detach().reshape(sum(lengths), -1), torch.cat(alone)[:, 0], atol=1e-6, rtol=1e-6)
    out.sum().backward()  # differentiable through the per-sequence writes
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in packed)


def test_local_layer_spec_uses_sdpa():
    from srpo_megatron.models.attention import SdpaAttention
    from srpo_megatron.models.builder import layer_spec

    assert layer_spec(use_te=False).submodules.self_attention.submodules.core_attention is SdpaAttention
