"""Core attention for megatron's local layer spec: PyTorch's fused `scaled_dot_product_attention`.

megatron's local `DotProductAttention` (the spec's default where Transformer Engine is absent)
materialises the [b, heads, s, s] scores, masks them with `masked_fill` and runs a separate
softmax; on the 2-core CPU machines that was about 10% of an update of the tiny model (profiled
with `benchmarks/update_profile.py --ops`). PyTorch's SDPA computes the same function in one fused kernel
(flash attention on CPU), as Transformer Engine's fused attention does on GPU.

It also takes megatron's packed (THD) batches, `PackedSeqParams(qkv_format="thd")`, which the local
`DotProductAttention` rejects: each sequence of the pack attends causally to itself only. And it
takes `SharedPromptParams`: one sequence holding each distinct prompt once and every response
after it, where a response attends to its prompt and causally to itself
(`models.forward._SharedPrompts` builds them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


@dataclass(frozen=True)
class SharedPromptLayout:
    """Where a shared-prompt sequence's pieces are: prompts [p, P] and responses [r, R] as sequence
    positions, right-padded (`*_valid`), and the prompt of each response [r]."""

    prompt_index: torch.Tensor
    prompt_valid: torch.Tensor
    response_index: torch.Tensor
    response_valid: torch.Tensor
    response_prompt: torch.Tensor

    @classmethod
    def of(cls, prompt_spans: list[torch.Tensor], response_spans: list[torch.Tensor],
           response_prompt: torch.Tensor, device) -> SharedPromptLayout:
        def padded(spans):
            index = torch.nn.utils.rnn.pad_sequence(spans, batch_first=True)
            valid = torch.arange(index.shape[1]) < torch.tensor([len(s) for s in spans])[:, None]
            return index.to(device), valid.to(device)

        return cls(*padded(prompt_spans), *padded(response_spans), response_prompt.to(device))


@dataclass
class SharedPromptParams(PackedSeqParams):
    """megatron's packed-sequence parameters in sbhd format (RoPE and the layers see one ordinary
    sequence) carrying the shared-prompt layout to `SdpaAttention`."""

    layout: SharedPromptLayout | None = None


class SdpaAttention(DotProductAttention):
    """`DotProductAttention` (same construction, scale and TP split) computed by torch SDPA."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, **kwargs):
        super().__init__(config, layer_number, attn_mask_type, attention_type, **kwargs)
        if self.softmax_offset is not None or self.scale_mask_softmax.window_size is not None:
            raise ValueError("SdpaAttention: softmax offsets and sliding windows are not supported; "
                             "use megatron's DotProductAttention spec for such models")

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        """query [sq, b, np, hn], key/value [sk, b, ng, hn] -> [sq, b, np * hn]; under THD packing
        query [t, np, hn], key/value [t, ng, hn] -> [t, np, hn] (megatron reshapes it after)."""
        if attention_bias is not None:
            raise ValueError("SdpaAttention: attention_bias is not supported")
        causal = (attn_mask_type or self.attn_mask_type) == AttnMaskType.causal
        if isinstance(packed_seq_params, SharedPromptParams):
            if not causal or attention_mask is not None or query.shape[1] != 1:
                raise ValueError("SdpaAttention: shared prompts must be one causal sequence without an attention mask")
            return self._shared_prompts(query[:, 0], key[:, 0], value[:, 0], packed_seq_params.layout)
        if packed_seq_params is not None:
            if packed_seq_params.qkv_format != "thd" or not causal or attention_mask is not None:
                raise ValueError("SdpaAttention: packed sequences must be causal THD without an attention mask")
            return self._packed(query, key, value, packed_seq_params)
        # [s, b, n, hn] -> [b, n, s, hn]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        mask = None
        if attention_mask is not None:  # megatron's masks are True where attention is NOT allowed
            mask, causal = ~attention_mask, False
        out = self._sdpa(q, k, v, mask, causal=causal and q.shape[2] > 1)
        return out.permute(2, 0, 1, 3).reshape(out.shape[2], out.shape[0], -1)

    def _packed(self, query, key, value, params):
        """THD [t, heads, hn] -> [t, np, hn]: the pack's sequences right-padded into one batch
        for a single fused call. Attention is causal and the padding comes after each sequence's
        tokens, so no real query sees it; only this call, not the layers around it, computes on it
        (a call per sequence made the tiny task's update 1.50 s instead of 1.45 s)."""
        if params.cu_seqlens_q is not params.cu_seqlens_kv and not torch.equal(params.cu_seqlens_q,
                                                                               params.cu_seqlens_kv):
            raise ValueError("SdpaAttention: packed self-attention needs cu_seqlens_q == cu_seqlens_kv")
        cu_seqlens = params.cu_seqlens_q.long()
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]  # [b]
        longest = params.max_seqlen_q or int(lengths.max())
        valid = torch.arange(longest, device=query.device) < lengths[:, None]  # [b, L]

        def padded(t):  # [t, n, hn] -> [b, n, L, hn]
            out = t.new_zeros(*valid.shape, *t.shape[1:])
            out[valid] = t
            return out.transpose(1, 2)

        out = self._sdpa(padded(query), padded(key), padded(value), None, causal=True)  # [b, np, L, hn]
        return out.transpose(1, 2)[valid]

    def _shared_prompts(self, q, k, v, layout: SharedPromptLayout):
        """[s, heads, hn] -> [s, 1, np * hn]: each prompt attends causally to itself (one batch of
        right-padded prompts), each response to its prompt's valid tokens and causally to itself
        (one batch of right-padded responses, keys = its prompt then itself). Padding queries
        see at least themselves, so no row is empty; their outputs are dropped."""
        out = q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
        prompt_index, response_index = layout.prompt_index, layout.response_index
        if prompt_index.shape[1]:
            heads_first = [t[prompt_index].transpose(1, 2) for t in (q, k, v)]  # [p, n, P, hn]
            attended = self._sdpa(*heads_first, None, causal=True).transpose(1, 2)
            out[prompt_index[layout.prompt_valid]] = attended[layout.prompt_valid]
        keys = torch.cat([prompt_index[layout.response_prompt], response_index], dim=1)  # [r, P + R]
        length = response_index.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        allowed = torch.cat([layout.prompt_valid[layout.response_prompt][:, None, :].expand(-1, length, -1),
                             causal.expand(len(keys), -1, -1)], dim=2)  # [r, R, P + R]
        attended = self._sdpa(q[response_index].transpose(1, 2), k[keys].transpose(1, 2), v[keys].transpose(1, 2),
                              allowed[:, None], causal=False).transpose(1, 2)
        out[response_index[layout.response_valid]] = attended[layout.response_valid]
        return out.reshape(out.shape[0], 1, -1)

    def _sdpa(self, q, k, v, mask, causal: bool):
        dropout = self.attention_dropout.p if self.training else 0.0
        # with query-key layer scaling megatron divides the scores by the layer number, then its
        # softmax multiplies them back: the net scale is the unscaled one
        scale = self.softmax_scale * (self.scale_mask_softmax.scale or 1.0)
        # grouped-query heads without copying keys and values (each serves heads / groups queries)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                              scale=scale, enable_gqa=q.shape[1] != k.shape[1])
